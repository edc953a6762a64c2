DROP INDEX "jobs_dispatch_idx";
CREATE INDEX "jobs_dispatch_idx" ON "jobs"("priority" DESC, "scheduledAt", "id")
    WHERE "status" = 'PENDING';
ALTER TABLE "jobs" DROP COLUMN "held";
