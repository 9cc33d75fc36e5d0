-- expect: adding-not-nullable-field
ALTER TABLE users ALTER COLUMN email SET NOT NULL;
