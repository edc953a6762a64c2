-- Fails when two callers hold the same key: keys were global before.
DROP INDEX "jobs_createdBy_idempotencyKey_key";
CREATE UNIQUE INDEX "jobs_idempotencyKey_key" ON "jobs"("idempotencyKey")
    WHERE "idempotencyKey" IS NOT NULL;
DROP TABLE "module_job_types";
