-- expect: refused
BEGIN;
ALTER TABLE users ADD COLUMN bio text;
COMMIT;
