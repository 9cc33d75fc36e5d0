-- expect: ban-drop-default
ALTER TABLE users ALTER COLUMN plan DROP DEFAULT;
