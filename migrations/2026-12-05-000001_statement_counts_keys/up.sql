-- Statements that change many keyed jobs' status at once count each
-- key's RUNNING jobs themselves, in one grouped UPDATE of the key rows they
-- already hold locked, instead of one trigger-run UPDATE per keyed job
-- (19 µs a job: a sixth of a keyed claim's work, and all that a keyed
-- settle cost more than a plain one; BENCHMARKS.md, issue 15, run 12).
-- Such a statement says so by the setting `automation.statement_counts_keys
-- = on` (the claimer's connection for the whole session, a settle's
-- transaction around its settling statements; `store::jobs::keys`), and
-- counts only while it is on. Every other writer (the reaper, a cancel, the
-- platform's backend, an older replica during a rolling deploy) leaves it
-- unset and is still counted by the trigger.
-- Replaced in place (PostgreSQL 14+), under the lock CREATE TRIGGER
-- takes (writes to `jobs` wait, reads go on): no status change passes
-- uncounted, and no heartbeat of a replica still running waits behind an
-- exclusive lock. A server whose schema lacks this migration (started
-- with SKIP_MIGRATIONS) or was migrated down never turns the setting on:
-- it checks the trigger's definition (`store::jobs::keys`).
CREATE OR REPLACE TRIGGER "jobs_key_running_update" AFTER UPDATE OF "status", "concurrencyKey" ON "jobs"
    FOR EACH ROW
    WHEN ((OLD."status" = 'RUNNING' OR NEW."status" = 'RUNNING')
          AND (OLD."concurrencyKey" IS NOT NULL OR NEW."concurrencyKey" IS NOT NULL)
          AND (OLD."status" IS DISTINCT FROM NEW."status"
               OR OLD."concurrencyKey" IS DISTINCT FROM NEW."concurrencyKey")
          AND current_setting('automation.statement_counts_keys', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION "concurrency_keys_count_running"();
