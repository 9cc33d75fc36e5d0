-- expect: ok
DROP INDEX CONCURRENTLY IF EXISTS users_email_idx;
