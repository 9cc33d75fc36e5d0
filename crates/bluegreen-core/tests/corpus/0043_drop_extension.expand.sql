-- expect: ban-drop-extension
DROP EXTENSION pg_trgm;
