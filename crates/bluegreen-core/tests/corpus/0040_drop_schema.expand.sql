-- expect: ban-drop-schema
DROP SCHEMA archive;
