-- expect: lock-table
LOCK TABLE users IN ACCESS EXCLUSIVE MODE;
UPDATE users SET plan = 'free' WHERE plan IS NULL;
