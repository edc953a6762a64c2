-- Whose a job is follows from what the job is, and idempotency keys belong
-- to their caller. Only additions to the seed schema: a table of our own
-- and indexes of our own.

-- The job types each module's manifest declares, one row each, so that
-- CreateJob finds the module a job name belongs to with an index probe
-- instead of reading every manifest. Written by the service in the
-- transaction that writes the manifest; the primary key is not unique on
-- the name alone because a database written by another backend may hold
-- two modules declaring one type (the service refuses new such clashes).
CREATE TABLE "module_job_types" (
    "name" VARCHAR NOT NULL,
    "moduleId" UUID NOT NULL,
    CONSTRAINT "module_job_types_pkey" PRIMARY KEY ("name", "moduleId"),
    CONSTRAINT "module_job_types_moduleId_fkey" FOREIGN KEY ("moduleId")
        REFERENCES "modules"("id") ON DELETE CASCADE ON UPDATE CASCADE
);
CREATE INDEX "module_job_types_moduleId_idx" ON "module_job_types"("moduleId");
INSERT INTO "module_job_types" ("name", "moduleId")
SELECT DISTINCT declared ->> 'name', m."id"
FROM "modules" m,
     jsonb_array_elements(CASE WHEN jsonb_typeof(m."manifest" -> 'jobs') = 'array'
                               THEN m."manifest" -> 'jobs' ELSE '[]'::jsonb END) AS declared
WHERE jsonb_typeof(declared -> 'name') = 'string';

-- An idempotency key is unique per creator, not across callers: one caller
-- can neither read another's job through a shared key nor block its key.
-- (Jobs whose creator is unknown hold no key for anyone: NULLs are
-- distinct.)
DROP INDEX "jobs_idempotencyKey_key";
CREATE UNIQUE INDEX "jobs_createdBy_idempotencyKey_key" ON "jobs"("createdBy", "idempotencyKey")
    WHERE "idempotencyKey" IS NOT NULL;
