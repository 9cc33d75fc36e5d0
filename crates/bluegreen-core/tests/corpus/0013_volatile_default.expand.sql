-- expect: adding-field-with-default
ALTER TABLE users ADD COLUMN uid uuid DEFAULT gen_random_uuid();
