-- expect: ok
INSERT INTO notes (body) VALUES ('a;b'), (E'c\';d'), ($q$e;f$q$);
ALTER TABLE users ADD COLUMN IF NOT EXISTS "odd;name" text;
COMMENT ON COLUMN users.bio IS 'shown; on the profile';
