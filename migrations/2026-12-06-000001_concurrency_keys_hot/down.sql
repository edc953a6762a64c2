SET LOCAL lock_timeout = '5s';
ALTER TABLE "concurrency_keys" RESET (fillfactor);
ALTER TABLE "concurrency_keys"
    ADD COLUMN "servedAt" TIMESTAMP(6) NOT NULL DEFAULT (clock_timestamp() AT TIME ZONE 'UTC');
CREATE INDEX "concurrency_keys_servedAt_idx" ON "concurrency_keys"("servedAt", "key");
