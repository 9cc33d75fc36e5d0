-- expect: require-concurrent-index-deletion
DROP INDEX users_email_idx;
