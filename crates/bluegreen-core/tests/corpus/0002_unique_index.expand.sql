-- expect: require-concurrent-index-creation
CREATE UNIQUE INDEX users_email_key ON users (email);
