-- The durable job queue. Only additions: the seed's `jobs` table stays as it
-- is, and every new column is nullable or has a default.

-- The lease of a RUNNING job: which Work stream holds it, until when (in the
-- database's clock), and the worker's own name for display.
ALTER TABLE "jobs" ADD COLUMN "leasedBy" UUID;
ALTER TABLE "jobs" ADD COLUMN "leaseExpiresAt" TIMESTAMP(3);
ALTER TABLE "jobs" ADD COLUMN "workerId" VARCHAR;
-- A client's key for idempotent creation; unique while the job exists.
ALTER TABLE "jobs" ADD COLUMN "idempotencyKey" VARCHAR;
-- Who created the job.
ALTER TABLE "jobs" ADD COLUMN "createdBy" UUID;
-- Attempts granted per run: RetryJob raises maxAttempts by this much, so
-- attempt numbers never repeat and a late report of an earlier run can never
-- pass for the new one.
ALTER TABLE "jobs" ADD COLUMN "attemptBudget" INTEGER;
-- For module lifecycle jobs, the transition they carry out (install,
-- update, remove); they run while their module is not ENABLED.
ALTER TABLE "jobs" ADD COLUMN "hook" VARCHAR;

CREATE UNIQUE INDEX "jobs_idempotencyKey_key" ON "jobs"("idempotencyKey")
    WHERE "idempotencyKey" IS NOT NULL;
-- Claiming reads only runnable rows in dispatch order, so it stays cheap
-- however many finished jobs the table holds.
CREATE INDEX "jobs_dispatch_idx" ON "jobs"("priority" DESC, "scheduledAt", "id")
    WHERE "status" = 'PENDING';
-- The reaper looks for expired leases; a dropped stream's leases are found
-- by holder.
CREATE INDEX "jobs_leaseExpiresAt_idx" ON "jobs"("leaseExpiresAt") WHERE "status" = 'RUNNING';
CREATE INDEX "jobs_leasedBy_idx" ON "jobs"("leasedBy") WHERE "status" = 'RUNNING';
-- ListJobs pages newest first.
CREATE INDEX "jobs_createdAt_id_idx" ON "jobs"("createdAt" DESC, "id" DESC);

-- A queue rewrites its rows constantly: vacuum it after 2 % of its rows
-- changed rather than 20 %, so that dead index entries of finished jobs do
-- not pile up at the head of the dispatch index (every claim walks past
-- them until a vacuum removes them).
ALTER TABLE "jobs" SET (autovacuum_vacuum_scale_factor = 0.02,
                        autovacuum_analyze_scale_factor = 0.02,
                        autovacuum_vacuum_cost_delay = 1);
