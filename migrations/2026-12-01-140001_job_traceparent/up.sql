-- The W3C trace context of the call that created a job (`traceparent`,
-- 55 characters in version 00), handed to the worker with each assignment
-- so that a trace crosses the queue. NULL for jobs created without one.
ALTER TABLE "jobs" ADD COLUMN "traceparent" VARCHAR(55);
