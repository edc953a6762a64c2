-- How many times a job was handed back unfinished (released by its worker,
-- handed back by a draining server or a stream cut off) since it was
-- created or last retried. The first few are free; past them a hand-back
-- spends an attempt like a failure, so a worker that releases everything it
-- gets cannot keep a job alive (and the queue spinning) forever. An
-- addition only: existing writers never name it.
ALTER TABLE "jobs" ADD COLUMN "freeReturns" INTEGER NOT NULL DEFAULT 0;
