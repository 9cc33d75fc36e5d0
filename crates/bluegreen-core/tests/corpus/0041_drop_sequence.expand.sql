-- expect: ban-drop-sequence
DROP SEQUENCE invoice_numbers;
