-- expect: ban-drop-domain
DROP DOMAIN positive;
