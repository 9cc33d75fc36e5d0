-- expect: cluster
CLUSTER users USING users_pkey;
