-- expect: ban-alter-identity
ALTER TABLE users ALTER COLUMN id DROP IDENTITY IF EXISTS;
