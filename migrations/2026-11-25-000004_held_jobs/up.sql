-- Jobs of a module that is not ENABLED wait (held) until it is again. They
-- leave the dispatch index while they wait, so that however many are held,
-- a claim never walks past them. Hook jobs are never held.
ALTER TABLE "jobs" ADD COLUMN "held" BOOLEAN NOT NULL DEFAULT false;
DROP INDEX "jobs_dispatch_idx";
CREATE INDEX "jobs_dispatch_idx" ON "jobs"("priority" DESC, "scheduledAt", "id")
    WHERE "status" = 'PENDING' AND NOT "held";
