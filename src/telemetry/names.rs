//! The names of the service's metrics, and the one-line recorders the
//! layers below the process call (the domain, the dispatcher, `db`). This
//! file imports nothing of the crate, so that any layer may name it without
//! a circle; the exporter is installed by [`super::install`].

/// RPCs started (grpc-prometheus name).
pub const GRPC_STARTED: &str = "grpc_server_started_total";
/// RPCs finished, by code (grpc-prometheus name).
pub const GRPC_HANDLED: &str = "grpc_server_handled_total";
/// RPC duration until the last message (grpc-prometheus name).
pub const GRPC_HANDLING_SECONDS: &str = "grpc_server_handling_seconds";

/// Pool connections checked out.
pub const POOL_IN_USE: &str = "db_pool_connections_in_use";
/// Pool connections open and free.
pub const POOL_IDLE: &str = "db_pool_connections_idle";
/// Most connections the pool may open.
pub const POOL_MAX: &str = "db_pool_connections_max";
/// Time spent waiting for a pooled connection.
pub const POOL_ACQUIRE_SECONDS: &str = "db_pool_acquire_seconds";
/// Checkouts that gave up waiting.
pub const POOL_ACQUIRE_TIMEOUTS: &str = "db_pool_acquire_timeouts_total";
/// Duration of a named database operation (`db::transaction`,
/// `db::with_connection`), connection checkout included.
pub const DB_OPERATION_SECONDS: &str = "db_operation_seconds";
/// Named database operations that returned an error, by kind.
pub const DB_OPERATION_ERRORS: &str = "db_operation_errors_total";

/// Version and commit of the running binary (always 1).
pub const BUILD_INFO: &str = "build_info";

/// gRPC connections closed before tonic saw them, by reason: `over_limit`
/// (too many not yet speaking), `timeout` (silent client or slow TLS
/// handshake), `handshake_failed`.
pub const CONNECTIONS_DROPPED: &str = "grpc_connections_dropped_total";

/// Logins by outcome: success, failure, throttled.
pub const LOGINS: &str = "auth_logins_total";
/// Calls authenticated with an API key.
pub const API_KEY_USES: &str = "auth_api_key_uses_total";
/// Sessions not revoked and not expired (sampled).
pub const ACTIVE_SESSIONS: &str = "auth_active_sessions";
/// GetUser/GetCurrentUser answered from the replica's account cache.
pub const ACCOUNT_CACHE_HITS: &str = "account_cache_hits_total";
/// GetUser/GetCurrentUser that read the database (not cached, or the cache
/// not serving).
pub const ACCOUNT_CACHE_MISSES: &str = "account_cache_misses_total";

/// Work streams open on this replica.
pub const WORKERS_CONNECTED: &str = "queue_workers_connected";
/// Job slots granted to the open Work streams and not in use.
pub const SLOTS_FREE: &str = "queue_worker_slots_free";
/// Job slots holding a lease.
pub const SLOTS_HELD: &str = "queue_worker_slots_held";
/// Reports settled per group-commit transaction.
pub const REPORTS_PER_BATCH: &str = "queue_reports_per_batch";
/// Reports settled, by kind of report.
pub const REPORTS: &str = "queue_reports_total";
/// Jobs whose progress was stored by the coalescing writer (at most once a
/// second per job, however often workers report).
pub const PROGRESS_WRITTEN: &str = "queue_progress_written_total";
/// Leases taken back by the reaper (their worker stopped heartbeating).
pub const LEASES_EXPIRED: &str = "queue_leases_expired_total";
/// From due to leased: how long a job waited in the queue.
pub const PENDING_TO_LEASED_SECONDS: &str = "queue_job_pending_to_leased_seconds";
/// From leased to its report settled (completed, failed or released).
pub const LEASED_TO_SETTLED_SECONDS: &str = "queue_job_leased_to_settled_seconds";
/// Jobs not finished, by name and status (sampled).
pub const JOBS: &str = "queue_jobs";
/// Age of the oldest due pending job, by name (sampled).
pub const OLDEST_PENDING_SECONDS: &str = "queue_oldest_pending_seconds";

/// Live rows per table (sampled from `pg_stat_user_tables`).
pub const TABLE_LIVE_ROWS: &str = "pg_table_live_rows";
/// Dead rows per table (sampled).
pub const TABLE_DEAD_ROWS: &str = "pg_table_dead_rows";
/// Size on disk per table, indexes and TOAST included (sampled).
pub const TABLE_BYTES: &str = "pg_table_size_bytes";
/// Index blocks found in shared buffers over all index blocks read
/// (sampled from `pg_statio_user_indexes`).
pub const INDEX_HIT_RATIO: &str = "pg_index_hit_ratio";
/// Lock requests waiting (`pg_locks` not granted, sampled).
pub const LOCK_WAITS: &str = "pg_lock_waits";
/// Jobs cancelled, by cause (`api`: CancelJob; `module_removed`;
/// `name_taken`: a module took the job's name; `schedule_overlap`: a
/// schedule's CANCEL_PREVIOUS), counted after commit.
pub const JOBS_CANCELLED: &str = "queue_jobs_cancelled_total";
/// Failed attempts sent back to PENDING for another try, counted after
/// commit.
pub const JOB_RETRIES: &str = "queue_job_retries_total";

/// Fire times of schedules acted on, by outcome (`created`: a job was
/// created; `skipped`: missed, overlapping or refused), after commit.
pub const SCHEDULE_FIRES: &str = "schedule_fires_total";
/// Claims of a schedule that failed (rolled back; the schedule backs off).
pub const SCHEDULE_FIRE_FAILURES: &str = "schedule_fire_failures_total";

/// Samples of the statistics above that failed.
pub const SAMPLE_ERRORS: &str = "telemetry_sample_errors_total";

/// Counts a login by its outcome (`success`, `failure`, `throttled`).
pub fn login(outcome: &'static str) {
    metrics::counter!(LOGINS, "outcome" => outcome).increment(1);
}

/// Counts a connection closed before tonic saw it (`over_limit`, `timeout`,
/// `handshake_failed`).
pub fn connection_dropped(reason: &'static str) {
    metrics::counter!(CONNECTIONS_DROPPED, "reason" => reason).increment(1);
}

/// Counts `count` jobs cancelled for `cause` (after their commit).
pub fn jobs_cancelled(cause: &'static str, count: usize) {
    if count > 0 {
        metrics::counter!(JOBS_CANCELLED, "cause" => cause).increment(count as u64);
    }
}

/// Counts the fire times one schedule claim acted on (after its commit).
pub fn schedule_fired(created: u64, skipped: u64) {
    if created > 0 {
        metrics::counter!(SCHEDULE_FIRES, "outcome" => "created").increment(created);
    }
    if skipped > 0 {
        metrics::counter!(SCHEDULE_FIRES, "outcome" => "skipped").increment(skipped);
    }
}

/// Counts a schedule claim that failed and was backed off.
pub fn schedule_fire_failed() {
    metrics::counter!(SCHEDULE_FIRE_FAILURES).increment(1);
}

/// Counts `count` failed attempts retried (after their commit).
pub fn job_retries(count: usize) {
    if count > 0 {
        metrics::counter!(JOB_RETRIES).increment(count as u64);
    }
}

/// Counts a call authenticated with an API key.
pub fn api_key_used() {
    metrics::counter!(API_KEY_USES).increment(1);
}

/// Counts a settled batch of worker reports.
pub fn reports_settled(batch: usize) {
    metrics::histogram!(REPORTS_PER_BATCH).record(batch as f64);
}

/// Counts jobs whose progress the writer stored.
pub fn progress_written(jobs: usize) {
    if jobs > 0 {
        metrics::counter!(PROGRESS_WRITTEN).increment(jobs as u64);
    }
}

/// Records a named database operation: its duration, and its error kind if
/// it failed.
pub fn db_operation(operation: &'static str, seconds: f64, error: Option<&'static str>) {
    metrics::histogram!(DB_OPERATION_SECONDS, "operation" => operation).record(seconds);
    if let Some(kind) = error {
        metrics::counter!(DB_OPERATION_ERRORS, "operation" => operation, "kind" => kind)
            .increment(1);
    }
}

/// Records the wait for a pooled connection, and whether it timed out.
pub fn pool_acquire(seconds: f64, timed_out: bool) {
    metrics::histogram!(POOL_ACQUIRE_SECONDS).record(seconds);
    if timed_out {
        metrics::counter!(POOL_ACQUIRE_TIMEOUTS).increment(1);
    }
}

/// Counts an accepted worker report by kind (`completed`, `failed`,
/// `failed_permanently`, `released`).
pub fn report(kind: &'static str) {
    metrics::counter!(REPORTS, "kind" => kind).increment(1);
}

/// Counts leases the reaper took back.
pub fn leases_expired(count: u64) {
    metrics::counter!(LEASES_EXPIRED).increment(count);
}

/// Records how long a job waited between becoming due and being leased.
pub fn job_leased(due_at: chrono::NaiveDateTime) {
    let waited = chrono::Utc::now().naive_utc() - due_at;
    let seconds = waited.num_microseconds().unwrap_or(0).max(0) as f64 / 1e6;
    metrics::histogram!(PENDING_TO_LEASED_SECONDS).record(seconds);
}

/// Records how long a lease lasted until its report was settled.
pub fn lease_settled(held_for: std::time::Duration) {
    metrics::histogram!(LEASED_TO_SETTLED_SECONDS).record(held_for.as_secs_f64());
}
