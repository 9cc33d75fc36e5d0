-- expect: vacuum-full
VACUUM FULL users;
