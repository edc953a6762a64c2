ALTER TABLE "jobs" DROP COLUMN "freeReturns";
