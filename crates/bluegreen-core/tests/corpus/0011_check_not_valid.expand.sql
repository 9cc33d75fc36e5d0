-- expect: ok
ALTER TABLE users ADD CONSTRAINT age_positive CHECK (age >= 0) NOT VALID;
