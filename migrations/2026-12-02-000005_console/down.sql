DROP INDEX IF EXISTS "jobs_failed_createdAt_idx";
DROP INDEX IF EXISTS "jobs_finished_updatedAt_idx";
