DROP INDEX IF EXISTS "jobs_finished_updatedAt_idx";
