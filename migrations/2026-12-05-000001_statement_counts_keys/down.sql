CREATE OR REPLACE TRIGGER "jobs_key_running_update" AFTER UPDATE OF "status", "concurrencyKey" ON "jobs"
    FOR EACH ROW
    WHEN ((OLD."status" = 'RUNNING' OR NEW."status" = 'RUNNING')
          AND (OLD."concurrencyKey" IS NOT NULL OR NEW."concurrencyKey" IS NOT NULL)
          AND (OLD."status" IS DISTINCT FROM NEW."status"
               OR OLD."concurrencyKey" IS DISTINCT FROM NEW."concurrencyKey"))
    EXECUTE FUNCTION "concurrency_keys_count_running"();
