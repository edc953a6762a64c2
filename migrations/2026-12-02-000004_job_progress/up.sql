-- What a job's worker last reported about an attempt (`JobProgressReport`):
-- `progress` holds `percent`, `message` and `details` as JSON,
-- `progressAttempt` the attempt it was reported on (the job shows it only
-- while that attempt is its latest, so a new attempt starts clean without
-- the claim having to clear it), `progressAt` when it was stored. Written at
-- most once a second per job, never with `updatedAt`. NULL until a worker
-- reports any.
ALTER TABLE "jobs" ADD COLUMN "progress" JSONB;
ALTER TABLE "jobs" ADD COLUMN "progressAttempt" INTEGER;
ALTER TABLE "jobs" ADD COLUMN "progressAt" TIMESTAMP(3);
