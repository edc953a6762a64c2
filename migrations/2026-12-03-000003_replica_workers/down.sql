DROP TABLE IF EXISTS "replica_workers";
