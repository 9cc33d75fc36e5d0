-- expect: ban-drop-policy
DROP POLICY own_rows ON users;
