-- expect: ban-detach-inheritance
ALTER TABLE users_2020 NO INHERIT users;
