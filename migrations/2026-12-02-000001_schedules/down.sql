UPDATE "roles" SET "permissions" = "permissions" - 'schedules:read' - 'schedules:write'
WHERE "name" IN ('operator', 'viewer') AND jsonb_typeof("permissions") = 'array';
DROP INDEX IF EXISTS "jobs_scheduleId_unfinished_idx";
DROP INDEX IF EXISTS "jobs_scheduleId_createdAt_idx";
DROP INDEX IF EXISTS "jobs_scheduleId_scheduleFireAt_key";
ALTER TABLE "jobs" DROP COLUMN IF EXISTS "scheduleFireAt";
ALTER TABLE "jobs" DROP COLUMN IF EXISTS "scheduleId";
DROP TABLE IF EXISTS "schedules";
