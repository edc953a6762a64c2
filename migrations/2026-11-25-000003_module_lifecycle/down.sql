ALTER TABLE "modules" DROP COLUMN "rollback";
ALTER TABLE "modules" DROP COLUMN "hookJobId";
ALTER TABLE "modules" DROP COLUMN "lastError";
