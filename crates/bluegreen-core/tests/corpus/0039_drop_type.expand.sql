-- expect: ban-drop-type
DROP TYPE mood;
