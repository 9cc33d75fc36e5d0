-- expect: ok
-- The CHECK (full_name IS NOT NULL) NOT VALID came in an expand file:
-- validating it takes no lock that stops writes, and SET NOT NULL then
-- uses it instead of scanning the table under ACCESS EXCLUSIVE.
ALTER TABLE users VALIDATE CONSTRAINT full_name_not_null;
ALTER TABLE users ALTER COLUMN full_name SET NOT NULL;
ALTER TABLE users DROP CONSTRAINT full_name_not_null;
