-- expect: broken
ALTER TABEL users ADD COLUMN x int;
