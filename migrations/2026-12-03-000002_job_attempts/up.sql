-- Attempt history: one row per ended attempt of a job (ListJobAttempts, the
-- console's job page). A job row keeps only its latest attempt; each
-- statement that ends one (a completion, a failure, a hand-back, a lost or
-- expired lease, a cancel) inserts its row here in the same statement, so
-- no ended attempt goes unrecorded and no round trip is added. The running
-- attempt is not stored: it is read from the job row. Only additions to the
-- seed schema: a table of our own.

CREATE TABLE "job_attempts" (
    "jobId" UUID NOT NULL,
    -- The job's attempt number (`jobs.attempts` while it ran), from 1.
    "attempt" INTEGER NOT NULL,
    -- The `worker_id` its worker gave in its hello, if known.
    "workerId" VARCHAR,
    -- The Work stream that held the lease, if known.
    "streamId" UUID,
    -- When the attempt was leased (`jobs.startedAt`) and when it ended.
    "leasedAt" TIMESTAMP(3),
    "endedAt" TIMESTAMP(3) NOT NULL,
    "outcome" VARCHAR(16) NOT NULL,
    -- Why it ended, for people: a failure's message, a lost lease's reason;
    -- bounded (the whole error stays on the job row).
    "error" TEXT,
    CONSTRAINT "job_attempts_pkey" PRIMARY KEY ("jobId", "attempt"),
    CONSTRAINT "job_attempts_outcome_check" CHECK ("outcome" IN
        ('COMPLETED', 'FAILED', 'HANDED_BACK', 'LEASE_LOST', 'LEASE_EXPIRED', 'CANCELLED')),
    CONSTRAINT "job_attempts_error_check" CHECK (char_length("error") <= 1024),
    -- Rows go with their job (retention, or the platform deleting it).
    CONSTRAINT "job_attempts_jobId_fkey" FOREIGN KEY ("jobId")
        REFERENCES "jobs"("id") ON DELETE CASCADE ON UPDATE CASCADE
);
