-- expect: ban-drop-table
DROP TABLE sessions;
