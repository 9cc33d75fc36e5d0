-- expect: adding-serial-primary-key-field, constraint-missing-not-valid
ALTER TABLE users ADD PRIMARY KEY (id);
