-- expect: ban-revoke
REVOKE SELECT ON users FROM app;
