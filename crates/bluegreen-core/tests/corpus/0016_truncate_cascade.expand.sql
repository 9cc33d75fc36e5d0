-- expect: ban-truncate-cascade
TRUNCATE users CASCADE;
