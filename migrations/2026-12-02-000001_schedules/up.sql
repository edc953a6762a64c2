-- Schedules (ScheduleService): jobs created on a calendar. Only additions
-- to the seed schema: a table of our own, two nullable columns and indexes
-- on jobs, and two permissions added to the default roles.

CREATE TABLE "schedules" (
    "id" UUID NOT NULL,
    "name" VARCHAR(128) NOT NULL,
    "description" TEXT NOT NULL DEFAULT '',
    "cron" VARCHAR(256) NOT NULL,
    "timeZone" VARCHAR(64) NOT NULL DEFAULT 'UTC',
    -- The job template, as CreateJob takes it; "moduleName" is the module
    -- the job belongs to (resolved when the template was written).
    "jobName" VARCHAR(128) NOT NULL,
    "moduleName" VARCHAR(64),
    "payload" JSONB NOT NULL DEFAULT '{}',
    "priority" INTEGER NOT NULL DEFAULT 0,
    "maxAttempts" INTEGER,
    "overlapPolicy" VARCHAR(16) NOT NULL DEFAULT 'ALLOW',
    "missedFirePolicy" VARCHAR(16) NOT NULL DEFAULT 'SKIP',
    "paused" BOOLEAN NOT NULL DEFAULT false,
    -- The next fire time not acted on yet (UTC); NULL while paused.
    "nextFireAt" TIMESTAMP(3),
    "lastFireAt" TIMESTAMP(3),
    -- No foreign key: retention deletes jobs in bulk, and a schedule
    -- showing the id of a pruned job is harmless.
    "lastJobId" UUID,
    "lastError" TEXT,
    "createdBy" UUID,
    "createdAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "updatedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    CONSTRAINT "schedules_pkey" PRIMARY KEY ("id"),
    CONSTRAINT "schedules_overlapPolicy_check"
        CHECK ("overlapPolicy" IN ('ALLOW', 'SKIP', 'CANCEL_PREVIOUS')),
    CONSTRAINT "schedules_missedFirePolicy_check"
        CHECK ("missedFirePolicy" IN ('SKIP', 'RUN_ONCE')),
    CONSTRAINT "schedules_createdBy_fkey" FOREIGN KEY ("createdBy")
        REFERENCES "users"("id") ON DELETE SET NULL ON UPDATE CASCADE,
    -- A module's schedules go with it.
    CONSTRAINT "schedules_moduleName_fkey" FOREIGN KEY ("moduleName")
        REFERENCES "modules"("name") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE UNIQUE INDEX "schedules_name_key" ON "schedules"("name");
CREATE INDEX "schedules_moduleName_idx" ON "schedules"("moduleName");
-- The firing loop's claim: due schedules, earliest first.
CREATE INDEX "schedules_nextFireAt_idx" ON "schedules"("nextFireAt")
    WHERE "nextFireAt" IS NOT NULL;

-- The schedule a job was created by, and the fire time it was created for
-- (NULL for TriggerSchedule's runs). No foreign key: the seed's tables get
-- none of ours, a deleted schedule's jobs keep its id (ListJobs still finds
-- them), and deleting a schedule costs nothing per job.
ALTER TABLE "jobs" ADD COLUMN "scheduleId" UUID;
ALTER TABLE "jobs" ADD COLUMN "scheduleFireAt" TIMESTAMP(3);
-- One job per schedule and fire time, whatever the number of replicas.
CREATE UNIQUE INDEX "jobs_scheduleId_scheduleFireAt_key" ON "jobs"("scheduleId", "scheduleFireAt")
    WHERE "scheduleFireAt" IS NOT NULL;
-- ListJobs by schedule, newest first; only schedules' jobs are indexed.
CREATE INDEX "jobs_scheduleId_createdAt_idx" ON "jobs"("scheduleId", "createdAt", "id")
    WHERE "scheduleId" IS NOT NULL;
-- A schedule's unfinished runs (the overlap policies), without walking its
-- finished ones.
CREATE INDEX "jobs_scheduleId_unfinished_idx" ON "jobs"("scheduleId")
    WHERE "scheduleId" IS NOT NULL AND "status" IN ('PENDING', 'RUNNING');

-- The default roles get the new permissions, additively: operator reads and
-- writes schedules, viewer reads them (admin holds `*:*`). A role that
-- already holds one is left as it is.
UPDATE "roles" SET "permissions" = "permissions" || '["schedules:read"]'::jsonb,
                   "updatedAt" = CURRENT_TIMESTAMP
WHERE "name" IN ('operator', 'viewer')
  AND jsonb_typeof("permissions") = 'array'
  AND NOT "permissions" @> '["schedules:read"]'::jsonb;
UPDATE "roles" SET "permissions" = "permissions" || '["schedules:write"]'::jsonb,
                   "updatedAt" = CURRENT_TIMESTAMP
WHERE "name" = 'operator'
  AND jsonb_typeof("permissions") = 'array'
  AND NOT "permissions" @> '["schedules:write"]'::jsonb;
