DROP INDEX "jobs_rate_open_idx";
DROP INDEX "jobs_dispatch_rate_idx";
DROP INDEX "jobs_waiting_idx";
DROP INDEX "jobs_key_open_idx";
DROP INDEX "jobs_dispatch_key_idx";
DROP INDEX "jobs_dispatch_name_idx";
DROP INDEX "jobs_dispatch_idx";
CREATE INDEX "jobs_dispatch_idx" ON "jobs"("priority" DESC, "scheduledAt", "id")
    WHERE "status" = 'PENDING' AND NOT "held";
DROP TABLE "rate_limits";
DROP TABLE "concurrency_keys";
ALTER TABLE "jobs" DROP COLUMN "rateLimit";
ALTER TABLE "jobs" DROP COLUMN "claimId";
ALTER TABLE "jobs" DROP COLUMN "waiting";
ALTER TABLE "jobs" DROP COLUMN "concurrencyMax";
ALTER TABLE "jobs" DROP COLUMN "concurrencyKey";
