//! Diesel's view of the schema. The database keeps the seed's camelCase
//! column names; Rust code uses snake_case through `sql_name`.

/// PostgreSQL enum types of the seed schema.
pub mod sql_types {
    /// `"ModuleStatus"`.
    #[derive(diesel::query_builder::QueryId, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "ModuleStatus"))]
    pub struct ModuleStatus;

    /// `"JobStatus"`.
    #[derive(diesel::query_builder::QueryId, diesel::sql_types::SqlType)]
    #[diesel(postgres_type(name = "JobStatus"))]
    pub struct JobStatus;
}

diesel::table! {
    users (id) {
        id -> Uuid,
        email -> Varchar,
        username -> Varchar,
        password -> Varchar,
        #[sql_name = "firstName"]
        first_name -> Nullable<Varchar>,
        #[sql_name = "lastName"]
        last_name -> Nullable<Varchar>,
        #[sql_name = "isActive"]
        is_active -> Bool,
        #[sql_name = "createdAt"]
        created_at -> Timestamp,
        #[sql_name = "updatedAt"]
        updated_at -> Timestamp,
        #[sql_name = "lastLogin"]
        last_login -> Nullable<Timestamp>,
    }
}

diesel::table! {
    roles (id) {
        id -> Uuid,
        name -> Varchar,
        description -> Text,
        permissions -> Jsonb,
        #[sql_name = "createdAt"]
        created_at -> Timestamp,
        #[sql_name = "updatedAt"]
        updated_at -> Timestamp,
    }
}

diesel::table! {
    user_roles (id) {
        id -> Uuid,
        #[sql_name = "userId"]
        user_id -> Uuid,
        #[sql_name = "roleId"]
        role_id -> Uuid,
        #[sql_name = "assignedAt"]
        assigned_at -> Timestamp,
        #[sql_name = "assignedBy"]
        assigned_by -> Nullable<Uuid>,
    }
}

diesel::table! {
    sessions (id) {
        id -> Uuid,
        #[sql_name = "userId"]
        user_id -> Uuid,
        #[sql_name = "refreshToken"]
        refresh_token -> Varchar,
        #[sql_name = "userAgent"]
        user_agent -> Text,
        #[sql_name = "ipAddress"]
        ip_address -> Varchar,
        #[sql_name = "expiresAt"]
        expires_at -> Timestamp,
        #[sql_name = "createdAt"]
        created_at -> Timestamp,
        #[sql_name = "revokedAt"]
        revoked_at -> Nullable<Timestamp>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::ModuleStatus;

    modules (id) {
        id -> Uuid,
        name -> Varchar,
        version -> Varchar,
        #[sql_name = "displayName"]
        display_name -> Varchar,
        description -> Text,
        status -> ModuleStatus,
        manifest -> Jsonb,
        #[sql_name = "installedAt"]
        installed_at -> Nullable<Timestamp>,
        #[sql_name = "enabledAt"]
        enabled_at -> Nullable<Timestamp>,
        #[sql_name = "disabledAt"]
        disabled_at -> Nullable<Timestamp>,
        #[sql_name = "updatedAt"]
        updated_at -> Timestamp,
        #[sql_name = "createdAt"]
        created_at -> Timestamp,
        #[sql_name = "lastError"]
        last_error -> Nullable<Jsonb>,
        #[sql_name = "hookJobId"]
        hook_job_id -> Nullable<Uuid>,
        rollback -> Nullable<Jsonb>,
    }
}

diesel::table! {
    use diesel::sql_types::*;
    use super::sql_types::JobStatus;

    jobs (id) {
        id -> Uuid,
        name -> Varchar,
        #[sql_name = "moduleName"]
        module_name -> Nullable<Varchar>,
        status -> JobStatus,
        priority -> Int4,
        payload -> Jsonb,
        result -> Nullable<Jsonb>,
        error -> Nullable<Jsonb>,
        attempts -> Int4,
        #[sql_name = "maxAttempts"]
        max_attempts -> Int4,
        #[sql_name = "scheduledAt"]
        scheduled_at -> Timestamp,
        #[sql_name = "startedAt"]
        started_at -> Nullable<Timestamp>,
        #[sql_name = "completedAt"]
        completed_at -> Nullable<Timestamp>,
        #[sql_name = "failedAt"]
        failed_at -> Nullable<Timestamp>,
        #[sql_name = "createdAt"]
        created_at -> Timestamp,
        #[sql_name = "updatedAt"]
        updated_at -> Timestamp,
        #[sql_name = "leasedBy"]
        leased_by -> Nullable<Uuid>,
        #[sql_name = "leaseExpiresAt"]
        lease_expires_at -> Nullable<Timestamp>,
        #[sql_name = "workerId"]
        worker_id -> Nullable<Varchar>,
        #[sql_name = "idempotencyKey"]
        idempotency_key -> Nullable<Varchar>,
        #[sql_name = "createdBy"]
        created_by -> Nullable<Uuid>,
        #[sql_name = "attemptBudget"]
        attempt_budget -> Nullable<Int4>,
        hook -> Nullable<Varchar>,
        held -> Bool,
        #[sql_name = "freeReturns"]
        free_returns -> Int4,
        traceparent -> Nullable<Varchar>,
        progress -> Nullable<Jsonb>,
        #[sql_name = "progressAttempt"]
        progress_attempt -> Nullable<Int4>,
        #[sql_name = "progressAt"]
        progress_at -> Nullable<Timestamp>,
        #[sql_name = "scheduleId"]
        schedule_id -> Nullable<Uuid>,
        #[sql_name = "scheduleFireAt"]
        schedule_fire_at -> Nullable<Timestamp>,
        #[sql_name = "concurrencyKey"]
        concurrency_key -> Nullable<Varchar>,
        #[sql_name = "concurrencyMax"]
        concurrency_max -> Nullable<Int4>,
        waiting -> Bool,
        #[sql_name = "claimId"]
        claim_id -> Nullable<Uuid>,
        #[sql_name = "rateLimit"]
        rate_limit -> Nullable<Varchar>,
    }
}

diesel::table! {
    audit_logs (id) {
        id -> Uuid,
        #[sql_name = "userId"]
        user_id -> Nullable<Uuid>,
        action -> Varchar,
        resource -> Varchar,
        outcome -> Varchar,
        details -> Jsonb,
        #[sql_name = "ipAddress"]
        ip_address -> Varchar,
        #[sql_name = "userAgent"]
        user_agent -> Text,
        #[sql_name = "createdAt"]
        created_at -> Timestamp,
    }
}

diesel::table! {
    api_keys (id) {
        id -> Uuid,
        #[sql_name = "userId"]
        user_id -> Uuid,
        name -> Varchar,
        #[sql_name = "secretHash"]
        secret_hash -> Bytea,
        permissions -> Jsonb,
        #[sql_name = "expiresAt"]
        expires_at -> Nullable<Timestamp>,
        #[sql_name = "revokedAt"]
        revoked_at -> Nullable<Timestamp>,
        #[sql_name = "createdBy"]
        created_by -> Nullable<Uuid>,
        #[sql_name = "createdAt"]
        created_at -> Timestamp,
    }
}

diesel::table! {
    module_job_types (name, module_id) {
        name -> Varchar,
        #[sql_name = "moduleId"]
        module_id -> Uuid,
    }
}

diesel::joinable!(api_keys -> users (user_id));
diesel::joinable!(module_job_types -> modules (module_id));
diesel::joinable!(user_roles -> users (user_id));
diesel::joinable!(user_roles -> roles (role_id));
diesel::joinable!(sessions -> users (user_id));
diesel::joinable!(audit_logs -> users (user_id));

diesel::table! {
    session_spent_tokens (token_hash) {
        #[sql_name = "tokenHash"]
        token_hash -> Varchar,
        #[sql_name = "sessionId"]
        session_id -> Uuid,
        #[sql_name = "spentAt"]
        spent_at -> Timestamp,
    }
}

diesel::table! {
    login_throttles (key) {
        key -> Varchar,
        failures -> Int4,
        #[sql_name = "windowStartedAt"]
        window_started_at -> Timestamp,
        #[sql_name = "lockedUntil"]
        locked_until -> Nullable<Timestamp>,
        #[sql_name = "inFlight"]
        in_flight -> Int4,
        #[sql_name = "inFlightSince"]
        in_flight_since -> Nullable<Timestamp>,
    }
}

diesel::table! {
    schedules (id) {
        id -> Uuid,
        name -> Varchar,
        description -> Text,
        cron -> Varchar,
        #[sql_name = "timeZone"]
        time_zone -> Varchar,
        #[sql_name = "jobName"]
        job_name -> Varchar,
        #[sql_name = "moduleName"]
        module_name -> Nullable<Varchar>,
        payload -> Jsonb,
        priority -> Int4,
        #[sql_name = "maxAttempts"]
        max_attempts -> Nullable<Int4>,
        #[sql_name = "overlapPolicy"]
        overlap_policy -> Varchar,
        #[sql_name = "missedFirePolicy"]
        missed_fire_policy -> Varchar,
        paused -> Bool,
        #[sql_name = "nextFireAt"]
        next_fire_at -> Nullable<Timestamp>,
        #[sql_name = "lastFireAt"]
        last_fire_at -> Nullable<Timestamp>,
        #[sql_name = "lastJobId"]
        last_job_id -> Nullable<Uuid>,
        #[sql_name = "lastError"]
        last_error -> Nullable<Text>,
        #[sql_name = "createdBy"]
        created_by -> Nullable<Uuid>,
        #[sql_name = "createdAt"]
        created_at -> Timestamp,
        #[sql_name = "updatedAt"]
        updated_at -> Timestamp,
    }
}

diesel::joinable!(session_spent_tokens -> sessions (session_id));
diesel::allow_tables_to_appear_in_same_query!(
    users,
    roles,
    user_roles,
    sessions,
    modules,
    jobs,
    audit_logs,
    session_spent_tokens,
    login_throttles,
    api_keys,
    module_job_types,
    schedules,
);

diesel::table! {
    concurrency_keys (key) {
        key -> Varchar,
        max -> Int4,
        running -> Int4,
    }
}

diesel::table! {
    rate_limits (name) {
        name -> Varchar,
        units -> Int4,
        #[sql_name = "intervalMs"]
        interval_ms -> Int8,
        burst -> Int4,
        tokens -> Float8,
        #[sql_name = "refilledAt"]
        refilled_at -> Timestamp,
        #[sql_name = "servedAt"]
        served_at -> Timestamp,
        #[sql_name = "createdAt"]
        created_at -> Timestamp,
        #[sql_name = "updatedAt"]
        updated_at -> Timestamp,
    }
}

diesel::table! {
    job_attempts (job_id, attempt) {
        #[sql_name = "jobId"]
        job_id -> Uuid,
        attempt -> Int4,
        #[sql_name = "workerId"]
        worker_id -> Nullable<Varchar>,
        #[sql_name = "streamId"]
        stream_id -> Nullable<Uuid>,
        #[sql_name = "leasedAt"]
        leased_at -> Nullable<Timestamp>,
        #[sql_name = "endedAt"]
        ended_at -> Timestamp,
        outcome -> Varchar,
        error -> Nullable<Text>,
    }
}
