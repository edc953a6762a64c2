-- The module lifecycle. Only additions: the seed's `modules` table stays as
-- it is, and every new column is nullable.

-- Why the last transition failed (its hook job's error), until the next
-- one succeeds.
ALTER TABLE "modules" ADD COLUMN "lastError" JSONB;
-- During a transition: the hook job carrying it out…
ALTER TABLE "modules" ADD COLUMN "hookJobId" UUID;
-- …and what to restore if it fails for good: the state the module left
-- (and, for an update, its previous version and manifest).
ALTER TABLE "modules" ADD COLUMN "rollback" JSONB;
