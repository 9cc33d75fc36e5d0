-- expect: ok
-- Nothing reads legacy_flag since v7 (two releases ago): waived on purpose.
-- squawk-ignore ban-drop-column
ALTER TABLE users DROP COLUMN legacy_flag;
