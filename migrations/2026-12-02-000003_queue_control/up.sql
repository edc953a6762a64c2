-- Queue control: pauses, and the indexes of ListQueues and of the
-- dead-letter filters of ListJobs.
--
-- A pause holds the pending jobs of one job name ('job') or of a module's
-- jobs ('module'). Held jobs leave the dispatch index ("held", as for a
-- module that is not ENABLED), so however many wait, a claim never walks
-- past them. Every statement that makes a job PENDING computes "held" from
-- this table; after PauseQueue or ResumeQueue changes it, a walk (in short
-- batches) recomputes "held" for the queue's pending jobs, so that no job
-- keeps a "held" computed from a pause that changed since (see
-- src/store/jobs/queues.rs for why the walk misses none).
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

-- Walks owed: a pause or a resume of (kind, name) committed and its walk
-- over the queue's pending jobs is not finished. Written in the pause's or
-- resume's own transaction, removed by the walk that finished after the
-- last change ("generation"); every replica finishes the walks owed (after
-- a crash, a timeout), and ListQueues shows such a queue as settling.
CREATE TABLE "queue_walks" (
    "kind" VARCHAR NOT NULL,
    "name" VARCHAR NOT NULL,
    "owedSince" TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP,
    "generation" BIGINT NOT NULL DEFAULT 1,
    CONSTRAINT "queue_walks_pkey" PRIMARY KEY ("kind", "name")
);

-- A walk over one job name's pending jobs in id order (batches of a few
-- thousand), ListQueues' distinct pending names (a loose index scan) and
-- the figures of the page's names (index only: module and schedule time
-- are carried): pending rows only.
CREATE INDEX "jobs_pending_name_idx" ON "jobs"("name", "id") INCLUDE ("moduleName", "scheduledAt")
    WHERE "status" = 'PENDING';
