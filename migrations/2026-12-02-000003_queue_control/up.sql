-- Queue control: pauses, and the indexes of ListQueues and of the
-- dead-letter filters of ListJobs.
--
-- A pause holds the pending jobs of one job name ('job') or of a module's
-- jobs ('module'). Held jobs leave the dispatch index ("held", as for a
-- module that is not ENABLED), so however many wait, a claim never walks
-- past them. Every statement that makes a job PENDING computes "held" from
-- this table; PauseQueue and ResumeQueue take it in ACCESS EXCLUSIVE mode
-- to change it, which waits for every transaction that read it, so no job
-- is written with a "held" computed from a pause that changed since.
CREATE TABLE "queue_pauses" (
    "kind" VARCHAR NOT NULL,
    "name" VARCHAR NOT NULL,
    "pausedAt" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "pausedBy" UUID,
    CONSTRAINT "queue_pauses_pkey" PRIMARY KEY ("kind", "name"),
    CONSTRAINT "queue_pauses_kind_check" CHECK ("kind" IN ('job', 'module'))
);

-- ListQueues' pending and scheduled figures, and a pause's or a resume's
-- walk over a queue's pending jobs: pending rows only (held or not).
CREATE INDEX "jobs_pending_queue_idx" ON "jobs"("moduleName", "name", "scheduledAt")
    WHERE "status" = 'PENDING';
-- Dead letters: ListJobs' failure-time filter and ListQueues' "failed in
-- the last hour" read FAILED rows only.
CREATE INDEX "jobs_failed_idx" ON "jobs"("failedAt") WHERE "status" = 'FAILED';
-- The error-prefix filter over FAILED rows: the message's first 200
-- characters, compared byte-wise (a btree entry must stay small; the full
-- prefix is checked on the rows found).
CREATE INDEX "jobs_failed_message_idx" ON "jobs"((left("error" ->> 'message', 200)) COLLATE "C")
    WHERE "status" = 'FAILED';
-- The finish-time filter over the dead-letter states (a terminal row's
-- "updatedAt" is when it finished; COMPLETED rows, the bulk, are left out
-- so that a completion costs no extra index entry).
CREATE INDEX "jobs_dead_finished_idx" ON "jobs"("updatedAt")
    WHERE "status" IN ('FAILED', 'CANCELLED');
