-- expect: changing-column-type
ALTER TABLE users ALTER COLUMN age TYPE bigint;
