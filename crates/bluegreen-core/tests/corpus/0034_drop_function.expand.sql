-- expect: ban-drop-function
DROP FUNCTION touch_updated_at();
