//! The audit trail: what happened, by whom, from where.
//!
//! A change and its record are written in one transaction, so they commit or
//! vanish together. Events that cost a caller nothing to cause (denied
//! anonymous calls, throttled logins) are sampled instead: the first of each
//! kind per client and window is written at once, the rest are counted in
//! memory and written as one summary row when the window ends, so a flood of
//! them cannot grow the table or load the database.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use chrono::NaiveDateTime;
use diesel_async::AsyncPgConnection;
use serde_json::json;
use sha2::{Digest as _, Sha256};
use uuid::Uuid;

use crate::{
    auth::client::ClientInfo,
    db::{self, DbPool},
    error::AppError,
    store::{
        self,
        audit::{self as rows, AuditFilter},
        models::AuditLogRow,
        pagination::{Cursor, PageRequest},
    },
};

use super::Page;

/// Every action the audit trail records; `as_str` is the stored name
/// (`area.verb`), which clients filter on, so names never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditAction {
    /// A login, successful or not.
    Login,
    /// A refresh-token rotation.
    Refresh,
    /// A spent refresh token came back; the session was revoked.
    RefreshReuse,
    /// A session ended by its owner.
    Logout,
    /// A password changed by its owner.
    ChangePassword,
    /// One of the caller's sessions revoked.
    RevokeSession,
    /// A call refused by the authorization layer.
    Denied,
    /// An account created.
    CreateUser,
    /// An account changed.
    UpdateUser,
    /// An account deleted.
    DeleteUser,
    /// A password set by an administrator.
    ResetUserPassword,
    /// A role created.
    CreateRole,
    /// A role changed.
    UpdateRole,
    /// A role deleted.
    DeleteRole,
    /// A role given to a user.
    AssignRole,
    /// A role taken from a user.
    UnassignRole,
    /// A job enqueued.
    CreateJob,
    /// A batch of jobs enqueued.
    BatchCreateJobs,
    /// A job cancelled.
    CancelJob,
    /// A job put back in the queue.
    RetryJob,
    /// A page of jobs put back in the queue (by ids or by a filter).
    BatchRetryJobs,
    /// A page of jobs cancelled (by ids or by a filter).
    BatchCancelJobs,
    /// A queue paused.
    PauseQueue,
    /// A queue resumed.
    ResumeQueue,
    /// A worker opened a Work stream.
    WorkerConnected,
    /// A Work stream ended.
    WorkerDisconnected,
    /// A module registered.
    RegisterModule,
    /// A module's fields or version changed.
    UpdateModule,
    /// A module installed or re-enabled.
    EnableModule,
    /// A module suspended.
    DisableModule,
    /// A module's removal began (or it was deleted at once).
    DeleteModule,
    /// A module's hook job completed: its transition is done.
    ModuleHookSucceeded,
    /// A module's hook job failed for good: its transition was undone.
    ModuleHookFailed,
    /// A schedule created.
    CreateSchedule,
    /// A schedule changed.
    UpdateSchedule,
    /// A schedule deleted.
    DeleteSchedule,
    /// A schedule paused.
    PauseSchedule,
    /// A schedule resumed.
    ResumeSchedule,
    /// A schedule run now.
    TriggerSchedule,
    /// A rate limit created or replaced.
    PutRateLimit,
    /// A rate limit deleted.
    DeleteRateLimit,
    /// An API key created.
    CreateApiKey,
    /// An API key revoked.
    RevokeApiKey,
    /// Calls made with an API key (sampled: the first per window, then a
    /// count).
    ApiKeyUsed,
}

impl AuditAction {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Login => "auth.login",
            Self::Refresh => "auth.refresh",
            Self::RefreshReuse => "auth.refresh_reuse",
            Self::Logout => "auth.logout",
            Self::ChangePassword => "auth.change_password",
            Self::RevokeSession => "auth.revoke_session",
            Self::Denied => "auth.denied",
            Self::CreateUser => "users.create",
            Self::UpdateUser => "users.update",
            Self::DeleteUser => "users.delete",
            Self::ResetUserPassword => "users.reset_password",
            Self::CreateRole => "roles.create",
            Self::UpdateRole => "roles.update",
            Self::DeleteRole => "roles.delete",
            Self::AssignRole => "roles.assign",
            Self::UnassignRole => "roles.unassign",
            Self::CreateJob => "jobs.create",
            Self::BatchCreateJobs => "jobs.batch_create",
            Self::CancelJob => "jobs.cancel",
            Self::RetryJob => "jobs.retry",
            Self::BatchRetryJobs => "jobs.batch_retry",
            Self::BatchCancelJobs => "jobs.batch_cancel",
            Self::PauseQueue => "jobs.pause_queue",
            Self::ResumeQueue => "jobs.resume_queue",
            Self::WorkerConnected => "jobs.work_open",
            Self::WorkerDisconnected => "jobs.work_close",
            Self::RegisterModule => "modules.register",
            Self::UpdateModule => "modules.update",
            Self::EnableModule => "modules.enable",
            Self::DisableModule => "modules.disable",
            Self::DeleteModule => "modules.delete",
            Self::ModuleHookSucceeded => "modules.hook_succeeded",
            Self::ModuleHookFailed => "modules.hook_failed",
            Self::CreateSchedule => "schedules.create",
            Self::UpdateSchedule => "schedules.update",
            Self::DeleteSchedule => "schedules.delete",
            Self::PauseSchedule => "schedules.pause",
            Self::ResumeSchedule => "schedules.resume",
            Self::TriggerSchedule => "schedules.trigger",
            Self::PutRateLimit => "rate_limits.put",
            Self::DeleteRateLimit => "rate_limits.delete",
            Self::CreateApiKey => "api_keys.create",
            Self::RevokeApiKey => "api_keys.revoke",
            Self::ApiKeyUsed => "api_keys.use",
        }
    }
}

/// One event to record.
#[derive(Debug, Clone)]
pub struct AuditEvent {
    /// What happened.
    pub action: AuditAction,
    /// Who did it, when known.
    pub user_id: Option<Uuid>,
    /// What it happened to, e.g. `users/<id>`.
    pub resource: String,
    /// Whether it succeeded.
    pub success: bool,
    /// Context; never secrets.
    pub details: serde_json::Value,
}

impl AuditEvent {
    /// A successful `action` on `resource` by `user_id`.
    pub fn success(
        action: AuditAction,
        user_id: Option<Uuid>,
        resource: impl Into<String>,
    ) -> Self {
        Self {
            action,
            user_id,
            resource: resource.into(),
            success: true,
            details: json!({}),
        }
    }

    /// A failed `action` on `resource` by `user_id`.
    pub fn failure(
        action: AuditAction,
        user_id: Option<Uuid>,
        resource: impl Into<String>,
    ) -> Self {
        Self {
            success: false,
            ..Self::success(action, user_id, resource)
        }
    }

    /// The same event with these details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }

    /// The row that records this event from `client`.
    pub fn row(&self, client: &ClientInfo) -> AuditLogRow {
        AuditLogRow {
            id: Uuid::now_v7(),
            user_id: self.user_id,
            action: self.action.as_str().to_owned(),
            resource: self.resource.clone(),
            outcome: if self.success { "success" } else { "failure" }.to_owned(),
            details: match (client.api_key, &self.details) {
                (Some(key), serde_json::Value::Object(details)) => {
                    let mut details = details.clone();
                    details.insert("api_key".into(), json!(key));
                    serde_json::Value::Object(details)
                }
                _ => self.details.clone(),
            },
            ip_address: client.ip_text(),
            user_agent: client.user_agent.clone(),
            created_at: store::now(),
        }
    }
}

/// How audit rows name a session: a fingerprint of its id, never the id
/// itself, which (with a leaked signing key) would let an audit reader forge
/// tokens of a live session.
pub fn session_resource(session_id: Uuid) -> String {
    let digest = Sha256::digest(session_id.as_bytes());
    format!("sessions/{}", hex::encode(&digest[..8]))
}

/// Writes and reads the audit trail.
#[derive(Clone)]
pub struct AuditTrail {
    pool: DbPool,
    sampler: Arc<Sampler>,
}

impl AuditTrail {
    /// The trail in `pool`'s database; repeated cheap events are summarised
    /// per `window`.
    pub fn new(pool: DbPool, window: Duration) -> Self {
        Self {
            pool,
            sampler: Arc::new(Sampler::new(
                window,
                MAX_SAMPLED_KEYS,
                FIRST_OCCURRENCES_PER_WINDOW,
            )),
        }
    }

    /// Records `event` inside `conn`'s transaction.
    pub async fn record(
        conn: &mut AsyncPgConnection,
        client: &ClientInfo,
        event: &AuditEvent,
    ) -> Result<(), AppError> {
        rows::insert(conn, &event.row(client)).await?;
        Ok(())
    }

    /// Records `event` on its own.
    pub async fn record_now(
        &self,
        client: &ClientInfo,
        event: &AuditEvent,
    ) -> Result<(), AppError> {
        let row = event.row(client);
        db::with_connection(&self.pool, "audit.insert", async |conn| {
            Ok(rows::insert(conn, &row).await?)
        })
        .await
    }

    /// Records `event` if it is the first of its `key` in the current
    /// window; otherwise only counts it for the window's summary row.
    pub async fn record_sampled(&self, key: String, client: &ClientInfo, event: &AuditEvent) {
        let row = event.row(client);
        if !self.sampler.admit(key, &row, Instant::now()) {
            return;
        }
        if let Err(error) = self.record_now(client, event).await {
            tracing::warn!(%error, action = event.action.as_str(), "could not write an audit row");
        }
    }

    /// Writes the summary rows of every window that has ended (or of all,
    /// when `everything`, at shutdown); returns how many.
    pub async fn flush_summaries(&self, everything: bool) -> Result<usize, AppError> {
        let summaries = self.sampler.take_ended(Instant::now(), everything);
        if summaries.is_empty() {
            return Ok(0);
        }
        let count = summaries.len();
        db::transaction(&self.pool, "audit.summaries", async |conn| {
            for row in &summaries {
                rows::insert(conn, row).await?;
            }
            Ok(())
        })
        .await?;
        Ok(count)
    }

    /// Lists records, newest first.
    pub async fn list(
        &self,
        filter: AuditFilter,
        page: PageRequest,
    ) -> Result<Page<AuditLogRow>, AppError> {
        let mut filter = filter;
        filter.before = page.after_time()?;
        let limit = page.limit;
        let rows = db::with_connection(&self.pool, "audit.list", async |conn| {
            Ok(rows::list(conn, &filter, limit + 1).await?)
        })
        .await?;
        Ok(Page::from_rows(rows, limit, |row| {
            Cursor::at_time(row.created_at, row.id)
        }))
    }
}

/// Most distinct keys sampled at once; past it, new keys share one overflow
/// entry per action (memory stays bounded under any flood).
const MAX_SAMPLED_KEYS: usize = 5_000;

/// Most first occurrences written per window, over all keys: past it, a
/// flood of distinct clients is summarised too, so that the rows written per
/// window are bounded whatever the attacker rotates through.
const FIRST_OCCURRENCES_PER_WINDOW: usize = 500;

/// Longest sampling key kept (keys hold client addresses and method names).
const MAX_KEY_BYTES: usize = 256;

/// One sampled key's current window.
struct Window {
    started: Instant,
    started_at: NaiveDateTime,
    suppressed: u64,
    first: AuditLogRow,
}

/// Counts repeated events per key and window.
struct Sampler {
    window: Duration,
    max_keys: usize,
    first_budget: usize,
    windows: Mutex<SamplerState>,
}

#[derive(Default)]
struct SamplerState {
    open: HashMap<String, Window>,
    /// Summaries of windows that ended before a flush took them.
    ended: Vec<AuditLogRow>,
    /// First occurrences written in the current budget period, and when it
    /// began.
    firsts: usize,
    firsts_since: Option<Instant>,
}

impl Window {
    /// The summary row of an ended window, when anything was suppressed.
    fn summary(&self, key: &str) -> Option<AuditLogRow> {
        if self.suppressed == 0 {
            return None;
        }
        let mut row = self.first.clone();
        row.id = Uuid::now_v7();
        row.created_at = store::now();
        row.details = json!({
            "summary": "repeats of the first event, not recorded one by one",
            "repeats": self.suppressed,
            "since": self.started_at.and_utc().to_rfc3339(),
            "sample_key": key.split('|').next().unwrap_or_default(),
            "first": self.first.details,
        });
        Some(row)
    }
}

impl std::fmt::Debug for Sampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sampler")
            .field("window", &self.window)
            .finish_non_exhaustive()
    }
}

impl Sampler {
    fn new(window: Duration, max_keys: usize, first_budget: usize) -> Self {
        Self {
            window,
            max_keys,
            first_budget,
            windows: Mutex::new(SamplerState::default()),
        }
    }

    /// True for the first event of `key` in its window (write it now).
    fn admit(&self, key: String, row: &AuditLogRow, now: Instant) -> bool {
        let mut state = crate::sync::lock(&self.windows);
        if state
            .firsts_since
            .is_none_or(|since| now.duration_since(since) >= self.window)
        {
            state.firsts = 0;
            state.firsts_since = Some(now);
        }
        let mut key = key;
        if key.len() > MAX_KEY_BYTES {
            let mut cut = MAX_KEY_BYTES;
            while !key.is_char_boundary(cut) {
                cut -= 1;
            }
            key.truncate(cut);
        }
        let known = state.open.contains_key(&key);
        let key =
            if !known && (state.open.len() >= self.max_keys || state.firsts >= self.first_budget) {
                format!("overflow|{}", row.action)
            } else {
                key
            };
        if let Some(window) = state.open.get_mut(&key)
            && now.duration_since(window.started) < self.window
        {
            window.suppressed += 1;
            return false;
        }
        let fresh = Window {
            started: now,
            started_at: row.created_at,
            suppressed: 0,
            first: row.clone(),
        };
        if let Some(ended) = state.open.insert(key.clone(), fresh)
            && let Some(summary) = ended.summary(&key)
        {
            state.ended.push(summary);
        }
        state.firsts += 1;
        true
    }

    /// Summary rows of windows that ended with suppressed events; ended
    /// windows are forgotten.
    fn take_ended(&self, now: Instant, everything: bool) -> Vec<AuditLogRow> {
        let mut state = crate::sync::lock(&self.windows);
        let mut summaries = std::mem::take(&mut state.ended);
        state.open.retain(|key, window| {
            let ended = everything || now.duration_since(window.started) >= self.window;
            if ended {
                summaries.extend(window.summary(key));
            }
            !ended
        });
        summaries
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> AuditLogRow {
        AuditEvent::failure(
            AuditAction::Denied,
            None,
            "automation.v1.UserService/GetUser",
        )
        .row(&ClientInfo::default())
    }

    #[test]
    fn repeats_are_counted_and_summarised_once_per_window() {
        let sampler = Sampler::new(Duration::from_secs(60), 100, 100);
        let start = Instant::now();
        assert!(sampler.admit("a".into(), &row(), start));
        for _ in 0..999 {
            assert!(!sampler.admit("a".into(), &row(), start));
        }
        assert!(sampler.admit("b".into(), &row(), start));
        assert!(sampler.take_ended(start, false).is_empty());
        let summaries = sampler.take_ended(start + Duration::from_secs(61), false);
        assert_eq!(summaries.len(), 1, "b had no repeats");
        assert_eq!(summaries[0].details["repeats"], 999);
        assert!(sampler.admit("a".into(), &row(), start + Duration::from_secs(62)));
    }

    #[test]
    fn memory_stays_bounded() {
        let sampler = Sampler::new(Duration::from_secs(60), 10, 1000);
        let now = Instant::now();
        for i in 0..1000 {
            sampler.admit(format!("key-{i}"), &row(), now);
        }
        assert!(sampler.windows.lock().unwrap().open.len() <= 11);
    }

    #[test]
    fn rotating_keys_cannot_buy_rows() {
        let sampler = Sampler::new(Duration::from_secs(60), 10_000, 50);
        let now = Instant::now();
        let written = (0..5_000)
            .filter(|i| sampler.admit(format!("client-{i}"), &row(), now))
            .count();
        assert_eq!(written, 51, "the budget, then one overflow entry");
        let summaries = sampler.take_ended(now, true);
        let repeats: u64 = summaries
            .iter()
            .map(|s| s.details["repeats"].as_u64().unwrap())
            .sum();
        assert_eq!(repeats, 5_000 - 51);
    }

    #[test]
    fn session_ids_never_appear_in_resources() {
        let id = Uuid::now_v7();
        let resource = session_resource(id);
        assert!(!resource.contains(&id.to_string()));
        assert_eq!(resource, session_resource(id));
    }
}
