-- expect: ban-drop-generated-expression
ALTER TABLE users ALTER COLUMN search DROP EXPRESSION;
