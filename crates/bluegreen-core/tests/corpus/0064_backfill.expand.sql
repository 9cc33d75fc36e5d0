-- expect: ok
UPDATE users SET plan = 'free' WHERE plan IS NULL AND id BETWEEN 1 AND 10000;
INSERT INTO plans (name) VALUES ('free') ON CONFLICT DO NOTHING;
