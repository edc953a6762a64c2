DROP INDEX "jobs_pending_name_idx";
DROP TABLE "queue_walks";
DROP INDEX "jobs_dead_finished_idx";
DROP INDEX "jobs_failed_message_idx";
DROP INDEX "jobs_failed_idx";
DROP INDEX "jobs_pending_queue_idx";
DROP TABLE "queue_pauses";
