-- The web console's Overview counts jobs that finished in the last hour
-- (failures per name, throughput per minute). Finished jobs are most of the
-- table; this partial index lets those counts read only the last hour's
-- rows ("updatedAt" is the moment a job finished: nothing updates a
-- finished job but a retry, which takes it out of the index).
CREATE INDEX "jobs_finished_updatedAt_idx" ON "jobs"("updatedAt")
    WHERE "status" IN ('COMPLETED', 'FAILED');

-- Failed jobs newest first (the Jobs page filtered on FAILED, where an
-- operator looks for what broke): failed rows are few, so this index is
-- small and costs only the failures, and the list reads a page of it
-- instead of walking every job by creation time.
CREATE INDEX "jobs_failed_createdAt_idx" ON "jobs"("createdAt" DESC, "id" DESC)
    WHERE "status" = 'FAILED';
