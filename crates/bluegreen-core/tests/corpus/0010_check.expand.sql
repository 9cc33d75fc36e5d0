-- expect: constraint-missing-not-valid
ALTER TABLE users ADD CONSTRAINT age_positive CHECK (age >= 0);
