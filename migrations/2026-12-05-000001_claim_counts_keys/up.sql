-- The claim statement counts the jobs it starts per concurrency key
-- itself, in one grouped UPDATE of the key rows it already holds locked,
-- instead of one trigger-run UPDATE per keyed job (19 µs a job, a sixth
-- of a keyed claim's work: BENCHMARKS.md, issue 15, run 12). Only the
-- claimer's dedicated connection says so, by the session setting
-- `automation.claim_counts_keys = on`; every other writer (a settle, the
-- reaper, a cancel, the platform's backend, an older replica's claim
-- during a rolling deploy) still has its changes counted by the trigger.
-- Drop and create in this migration's one transaction: no status change
-- can pass between them uncounted.
DROP TRIGGER "jobs_key_running_update" ON "jobs";
CREATE TRIGGER "jobs_key_running_update" AFTER UPDATE OF "status", "concurrencyKey" ON "jobs"
    FOR EACH ROW
    WHEN ((OLD."status" = 'RUNNING' OR NEW."status" = 'RUNNING')
          AND (OLD."concurrencyKey" IS NOT NULL OR NEW."concurrencyKey" IS NOT NULL)
          AND (OLD."status" IS DISTINCT FROM NEW."status"
               OR OLD."concurrencyKey" IS DISTINCT FROM NEW."concurrencyKey")
          AND current_setting('automation.claim_counts_keys', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION "concurrency_keys_count_running"();
