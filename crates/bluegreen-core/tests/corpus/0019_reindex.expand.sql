-- expect: require-concurrent-reindex
REINDEX TABLE users;
