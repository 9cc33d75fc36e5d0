-- expect: ban-drop-trigger
DROP TRIGGER users_touch ON users;
