DROP TABLE "job_attempts";
