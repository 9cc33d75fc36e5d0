-- expect: ok
-- a line comment; with a semicolon
/* a block comment; /* nested; */ still a comment */
ALTER TABLE users ADD COLUMN IF NOT EXISTS bio text; -- trailing

