-- expect: ban-set-schema
ALTER TABLE users SET SCHEMA archive;
