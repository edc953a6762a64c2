-- The web console's Overview counts jobs that finished in the last hour
-- (failures per name, throughput per minute). Finished jobs are most of the
-- table; this partial index lets those counts read only the last hour's
-- rows ("updatedAt" is the moment a job finished: nothing updates a
-- finished job but a retry, which takes it out of the index).
CREATE INDEX "jobs_finished_updatedAt_idx" ON "jobs"("updatedAt")
    WHERE "status" IN ('COMPLETED', 'FAILED');
