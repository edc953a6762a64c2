DROP TRIGGER "jobs_key_running_delete" ON "jobs";
DROP TRIGGER "jobs_key_running_insert" ON "jobs";
DROP TRIGGER "jobs_key_running_update" ON "jobs";
DROP FUNCTION "concurrency_keys_count_running"();
ALTER TABLE "concurrency_keys" DROP COLUMN "running";
