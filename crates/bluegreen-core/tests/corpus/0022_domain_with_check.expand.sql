-- expect: ban-create-domain-with-constraint
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
