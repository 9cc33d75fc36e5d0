-- expect: ban-drop-view
DROP VIEW active_users;
