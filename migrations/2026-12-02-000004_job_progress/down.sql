ALTER TABLE "jobs" DROP COLUMN "progressAt";
ALTER TABLE "jobs" DROP COLUMN "progressAttempt";
ALTER TABLE "jobs" DROP COLUMN "progress";
