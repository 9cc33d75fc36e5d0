-- expect: ok
ALTER TABLE users ADD COLUMN plan text DEFAULT 'free' NOT NULL;
