-- expect: ban-drop-constraint
ALTER TABLE users DROP CONSTRAINT users_email_key CASCADE;
