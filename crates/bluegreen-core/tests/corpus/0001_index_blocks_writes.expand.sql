-- expect: require-concurrent-index-creation
CREATE INDEX ON users(email);
