-- expect: require-concurrent-index-creation
CREATE INDEX users_name_idx ON users (full_name);
