-- expect: refused
CREATE INDEX CONCURRENTLY IF NOT EXISTS users_bio_idx ON users (bio);
ALTER TABLE users ADD COLUMN motto text;
