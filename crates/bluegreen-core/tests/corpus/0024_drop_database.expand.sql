-- expect: ban-drop-database
DROP DATABASE app;
