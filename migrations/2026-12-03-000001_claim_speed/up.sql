-- The claim's speed with concurrency keys: each key's row counts its
-- RUNNING jobs, so that finding the keys with room is one walk over the
-- keys' rows instead of a count of running jobs per key. Only additions to
-- the seed schema (a column on a table of ours, a function, triggers).
--
-- The count is kept by row triggers on `jobs`, in the transaction of the
-- statement that changes a keyed job's status, whichever writer that is
-- (a claim, a settle, the reaper, a cancel, the platform's own backend):
-- it commits or rolls back with the change it counts, so it cannot drift.
-- The triggers' WHEN clauses only let keyed rows entering or leaving
-- RUNNING through: a job without a key costs nothing.
--
-- Writes to `jobs` wait from here to the end of this migration (reads go
-- on): a status change committed between the first count below and the
-- triggers' creation (an older replica's settle during a rolling deploy,
-- the platform's backend) would otherwise be counted by neither, and a key
-- of maximum 1 left with a count of 1 would never run again. Maintenance
-- also recounts every key's row (`store::jobs::keys`), so a count made
-- wrong by anything else (a TRUNCATE, a hand edit) heals.
LOCK TABLE "jobs" IN SHARE ROW EXCLUSIVE MODE;

ALTER TABLE "concurrency_keys" ADD COLUMN "running" INTEGER NOT NULL DEFAULT 0;

UPDATE "concurrency_keys" k SET "running" = (
    SELECT count(*) FROM "jobs" j
    WHERE j."concurrencyKey" = k."key" AND j."status" = 'RUNNING');

CREATE FUNCTION "concurrency_keys_count_running"() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP <> 'INSERT' AND OLD."status" = 'RUNNING' AND OLD."concurrencyKey" IS NOT NULL THEN
        UPDATE "concurrency_keys" SET "running" = "running" - 1
        WHERE "key" = OLD."concurrencyKey";
    END IF;
    IF TG_OP <> 'DELETE' AND NEW."status" = 'RUNNING' AND NEW."concurrencyKey" IS NOT NULL THEN
        UPDATE "concurrency_keys" SET "running" = "running" + 1
        WHERE "key" = NEW."concurrencyKey";
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER "jobs_key_running_update" AFTER UPDATE OF "status", "concurrencyKey" ON "jobs"
    FOR EACH ROW
    WHEN ((OLD."status" = 'RUNNING' OR NEW."status" = 'RUNNING')
          AND (OLD."concurrencyKey" IS NOT NULL OR NEW."concurrencyKey" IS NOT NULL)
          AND (OLD."status" IS DISTINCT FROM NEW."status"
               OR OLD."concurrencyKey" IS DISTINCT FROM NEW."concurrencyKey"))
    EXECUTE FUNCTION "concurrency_keys_count_running"();
CREATE TRIGGER "jobs_key_running_insert" AFTER INSERT ON "jobs"
    FOR EACH ROW
    WHEN (NEW."status" = 'RUNNING' AND NEW."concurrencyKey" IS NOT NULL)
    EXECUTE FUNCTION "concurrency_keys_count_running"();
CREATE TRIGGER "jobs_key_running_delete" AFTER DELETE ON "jobs"
    FOR EACH ROW
    WHEN (OLD."status" = 'RUNNING' AND OLD."concurrencyKey" IS NOT NULL)
    EXECUTE FUNCTION "concurrency_keys_count_running"();
