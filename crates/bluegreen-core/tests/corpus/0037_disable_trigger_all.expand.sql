-- expect: ban-disable-trigger
ALTER TABLE users DISABLE TRIGGER ALL;
