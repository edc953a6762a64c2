-- What the claim statement enforces beyond "runnable, in dispatch order":
-- concurrency keys, a dispatch index that future-scheduled jobs stay out
-- of, an index for claims filtered by job names, and a tag tying leases to
-- the claim that took them. Only additions to the seed schema.

-- A job's concurrency key: at most `concurrency_keys.max` jobs of one key
-- run at once, across replicas.
ALTER TABLE "jobs" ADD COLUMN "concurrencyKey" VARCHAR(255);
-- The key's maximum this job was created with (the key's row takes the
-- latest; RetryJob recreates the row from it).
ALTER TABLE "jobs" ADD COLUMN "concurrencyMax" INTEGER;
-- A PENDING job whose time has not come (scheduled later, or backing off
-- after a failure): out of the dispatch indexes until the dispatcher
-- promotes it when it falls due, so that no claim walks past it.
ALTER TABLE "jobs" ADD COLUMN "waiting" BOOLEAN NOT NULL DEFAULT false;
-- The rate limit (a token bucket of `rate_limits`) the job takes a token
-- from when it is leased.
ALTER TABLE "jobs" ADD COLUMN "rateLimit" VARCHAR(128);
-- The claim that took the current lease: a claim whose answer was lost is
-- found by it and its leases handed back uncharged.
ALTER TABLE "jobs" ADD COLUMN "claimId" UUID;

UPDATE "jobs" SET "waiting" = true
WHERE "status" = 'PENDING' AND "scheduledAt" > (now() AT TIME ZONE 'UTC');

-- One row per key with open jobs: the lock two claimers take before
-- counting a key's running jobs, the key's maximum, and when the claim last
-- looked at it (keys are examined least recently served first: round
-- robin). The running count itself is never stored (see store/jobs/keys.rs).
CREATE TABLE "concurrency_keys" (
    "key" VARCHAR(255) NOT NULL,
    "max" INTEGER NOT NULL,
    "servedAt" TIMESTAMP(6) NOT NULL DEFAULT (clock_timestamp() AT TIME ZONE 'UTC'),
    CONSTRAINT "concurrency_keys_pkey" PRIMARY KEY ("key")
);
CREATE INDEX "concurrency_keys_servedAt_idx" ON "concurrency_keys"("servedAt", "key");

-- Named token buckets: `units` tokens every `intervalMs`, at most `burst`
-- held. `tokens` is what the bucket held at `refilledAt`; what it holds now
-- is computed from the database's clock. `servedAt`: when a claim last
-- drew from it (buckets are examined in turns).
CREATE TABLE "rate_limits" (
    "name" VARCHAR(128) NOT NULL,
    "units" INTEGER NOT NULL,
    "intervalMs" BIGINT NOT NULL,
    "burst" INTEGER NOT NULL,
    "tokens" DOUBLE PRECISION NOT NULL,
    "refilledAt" TIMESTAMP(6) NOT NULL,
    "servedAt" TIMESTAMP(6) NOT NULL,
    "createdAt" TIMESTAMP(3) NOT NULL,
    "updatedAt" TIMESTAMP(3) NOT NULL,
    CONSTRAINT "rate_limits_pkey" PRIMARY KEY ("name")
);
CREATE INDEX "rate_limits_servedAt_idx" ON "rate_limits"("servedAt", "name");

-- The dispatch index holds only jobs runnable by time and free of any key
-- or rate limit.
DROP INDEX "jobs_dispatch_idx";
CREATE INDEX "jobs_dispatch_idx" ON "jobs"("priority" DESC, "scheduledAt", "id")
    WHERE "status" = 'PENDING' AND NOT "held" AND NOT "waiting" AND "concurrencyKey" IS NULL
      AND "rateLimit" IS NULL;
-- Claims filtered by job names walk their names' jobs only.
CREATE INDEX "jobs_dispatch_name_idx" ON "jobs"("name", "priority" DESC, "scheduledAt", "id")
    WHERE "status" = 'PENDING' AND NOT "held" AND NOT "waiting" AND "concurrencyKey" IS NULL
      AND "rateLimit" IS NULL;
-- A bucket's runnable jobs, in dispatch order.
CREATE INDEX "jobs_dispatch_rate_idx" ON "jobs"("rateLimit", "priority" DESC, "scheduledAt", "id")
    WHERE "status" = 'PENDING' AND NOT "held" AND NOT "waiting" AND "rateLimit" IS NOT NULL;
-- Whether open jobs name a bucket (DeleteRateLimit).
CREATE INDEX "jobs_rate_open_idx" ON "jobs"("rateLimit")
    WHERE "status" IN ('PENDING', 'RUNNING') AND "rateLimit" IS NOT NULL;
-- A key's runnable jobs, in dispatch order.
CREATE INDEX "jobs_dispatch_key_idx" ON "jobs"("concurrencyKey", "priority" DESC, "scheduledAt", "id")
    WHERE "status" = 'PENDING' AND NOT "held" AND NOT "waiting" AND "concurrencyKey" IS NOT NULL;
-- A key's running jobs (its used slots) and whether it has open jobs.
CREATE INDEX "jobs_key_open_idx" ON "jobs"("concurrencyKey", "status")
    WHERE "status" IN ('PENDING', 'RUNNING') AND "concurrencyKey" IS NOT NULL;
-- Waiting jobs by due time: the next one to promote.
CREATE INDEX "jobs_waiting_idx" ON "jobs"("scheduledAt") WHERE "status" = 'PENDING' AND "waiting";
