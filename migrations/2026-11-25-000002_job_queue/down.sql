ALTER TABLE "jobs" RESET (autovacuum_vacuum_scale_factor, autovacuum_analyze_scale_factor,
                          autovacuum_vacuum_cost_delay);
DROP INDEX "jobs_createdAt_id_idx";
DROP INDEX "jobs_leasedBy_idx";
DROP INDEX "jobs_leaseExpiresAt_idx";
DROP INDEX "jobs_dispatch_idx";
DROP INDEX "jobs_idempotencyKey_key";
ALTER TABLE "jobs" DROP COLUMN "hook";
ALTER TABLE "jobs" DROP COLUMN "attemptBudget";
ALTER TABLE "jobs" DROP COLUMN "createdBy";
ALTER TABLE "jobs" DROP COLUMN "idempotencyKey";
ALTER TABLE "jobs" DROP COLUMN "workerId";
ALTER TABLE "jobs" DROP COLUMN "leaseExpiresAt";
ALTER TABLE "jobs" DROP COLUMN "leasedBy";
