-- Each replica's connected Work streams, published by the replica every few
-- seconds: a stream lives in the memory of the replica it connected to, and
-- this is how the console of any replica shows every worker. One row per
-- replica (a process: a new id at every start); a row not refreshed within
-- a few publishing intervals belongs to a replica that is gone, and rows
-- older than an hour are deleted by the replicas still running.
CREATE TABLE "replica_workers" (
    "replica" UUID NOT NULL,
    -- How people tell replicas apart: host name and gRPC address.
    "label" VARCHAR(255) NOT NULL,
    -- The streams, at most a bounded number (see `streamCount`).
    "streams" JSONB NOT NULL,
    -- How many streams the replica had, published or not.
    "streamCount" INTEGER NOT NULL,
    "publishedAt" TIMESTAMP(6) NOT NULL,
    CONSTRAINT "replica_workers_pkey" PRIMARY KEY ("replica")
);
