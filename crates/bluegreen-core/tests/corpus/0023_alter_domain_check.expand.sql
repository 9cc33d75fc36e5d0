-- expect: ban-alter-domain-with-add-constraint
ALTER DOMAIN positive ADD CONSTRAINT positive_check CHECK (VALUE > 0);
