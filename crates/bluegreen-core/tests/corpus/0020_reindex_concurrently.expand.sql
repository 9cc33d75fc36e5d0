-- expect: ok
REINDEX INDEX CONCURRENTLY users_email_idx;
