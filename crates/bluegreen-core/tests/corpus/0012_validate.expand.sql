-- expect: ok
ALTER TABLE users VALIDATE CONSTRAINT age_positive;
