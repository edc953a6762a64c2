//! The start and the end of a Work stream: the hello, checked and admitted
//! within the caps; the registration that holds the stream's place in the
//! registry, whose guard gives its leases back whatever ends the stream; and
//! the stream's audit rows (sampled per caller, and bounded in size).

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use serde_json::json;
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{
    Shared, keepalive,
    outbox::Outbox,
    registry::{Admission, MAX_CAPACITY, StreamCommand, StreamEntry, StreamSlot},
};
use crate::{
    auth::caller::Caller,
    domain::{
        Actor,
        audit::{AuditAction, AuditEvent},
        modules, validate,
    },
    error::AppError,
    proto::automation_v1 as pb,
    store::jobs::ClaimFilter,
};

/// How long a new stream may take to say hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

/// Job and module names an audit row of a stream lists (with the count of
/// all): a hello may name 256 of each, and the row need not copy them.
const AUDITED_NAMES: usize = 8;

/// When a refused stream may try again.
const RETRY_AFTER: Duration = Duration::from_secs(5);

/// What the worker said in `hello`, checked.
pub struct Hello {
    pub worker_id: String,
    pub filter: ClaimFilter,
    /// What it asked for (1 to [`MAX_CAPACITY`]).
    pub capacity: usize,
}

/// Checks a hello. A `max_concurrency` beyond [`MAX_CAPACITY`] is invalid;
/// within it, what the stream gets is bounded by the caps at registration.
///
/// A module's jobs (its hook jobs included) run the module's code, which
/// takes `modules:execute` as well: a caller without it is given only jobs
/// of no module, whatever names it asks for (an empty filter means any
/// job, and a job's name is not enough to tell whose it is), and asking
/// for modules by name is refused.
pub fn decode_hello(
    hello: pb::WorkerHello,
    stream: Uuid,
    caller: &Caller,
) -> Result<Hello, AppError> {
    let runs_modules = caller.holds(modules::EXECUTE);
    if !runs_modules && !hello.module_names.is_empty() {
        return Err(AppError::PermissionDenied(format!(
            "hello.module_names asks for the jobs of modules, which run their code: this needs \
             {} as well",
            modules::EXECUTE
        )));
    }
    let worker_id = if hello.worker_id.trim().is_empty() {
        format!("worker-{stream}")
    } else {
        validate::text("hello.worker_id", &hello.worker_id)?
    };
    let capacity = usize::try_from(hello.max_concurrency)
        .ok()
        .filter(|c| (1..=MAX_CAPACITY).contains(c))
        .ok_or_else(|| {
            AppError::invalid(
                "hello.max_concurrency",
                format!("must be within 1..{MAX_CAPACITY}"),
            )
        })?;
    let mut filter = ClaimFilter {
        plain_only: !runs_modules,
        ..ClaimFilter::default()
    };
    for (index, name) in hello.job_names.iter().enumerate() {
        filter.names.push(validate::job_name(
            &format!("hello.job_names[{index}]"),
            name,
        )?);
    }
    for (index, name) in hello.module_names.iter().enumerate() {
        filter.modules.push(validate::module_name(
            &format!("hello.module_names[{index}]"),
            name,
        )?);
    }
    filter.names.sort();
    filter.names.dedup();
    filter.modules.sort();
    filter.modules.dedup();
    Ok(Hello {
        worker_id,
        filter,
        capacity,
    })
}

/// The registration of a stream; dropping it unregisters the stream and
/// takes back the leases it still held: those never delivered go back as
/// if never leased, the others as lost (the worker is gone: each job goes
/// back to the queue, or fails if that was its last attempt).
pub struct RegisteredStream {
    pub shared: Arc<Shared>,
    pub id: Uuid,
    pub actor: Actor,
    pub worker_id: String,
    /// What the registry and the report writers tell the session.
    pub commands: mpsc::UnboundedReceiver<StreamCommand>,
    /// Where the report writers answer.
    pub reply_to: mpsc::UnboundedSender<StreamCommand>,
    /// What the session has for the worker.
    pub outbox: Arc<Outbox>,
    opened: Instant,
    /// Why the stream ended, for the audit row.
    pub ending: &'static str,
    /// Leases given back so far.
    pub taken_back: usize,
}

/// What a stream held when it was unregistered (the registry sorts it).
pub use super::registry::Withdrawn;

/// Registers a stream within the caps; returns its registration and the
/// capacity it was granted.
pub fn admit(
    shared: &Arc<Shared>,
    actor: Actor,
    hello: &Hello,
    id: Uuid,
    outbox: Arc<Outbox>,
) -> Result<(RegisteredStream, usize), AppError> {
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let entry = StreamEntry::new(
        actor.caller.user_id,
        hello.worker_id.clone(),
        hello.filter.clone(),
        commands.clone(),
    )
    .with_outbox(outbox.clone())
    .with_api_key(actor.caller.api_key);
    let admitted = shared.registry().register(id, entry, hello.capacity);
    if admitted.is_ok() {
        outbox.hold_slot(StreamSlot::new(shared, actor.caller.user_id));
    }
    let granted = admitted.map_err(|refusal| match refusal {
        Admission::Draining => {
            AppError::Draining("the server is shutting down; connect to another".into())
        }
        Admission::StreamsPerCaller(limit) => AppError::LimitExceeded {
            limit: "WORK_STREAMS_PER_CALLER",
            message: format!(
                "this caller holds {limit} Work streams on this server already, as many as it may"
            ),
            retry_after: RETRY_AFTER,
        },
        Admission::CapacityPerCaller(limit) => AppError::LimitExceeded {
            limit: "WORK_CAPACITY_PER_CALLER",
            message: format!(
                "this caller's Work streams on this server hold all the capacity it may have \
                 ({limit} jobs)"
            ),
            retry_after: RETRY_AFTER,
        },
        Admission::CapacityPerReplica(limit) => AppError::LimitExceeded {
            limit: "WORK_CAPACITY_PER_REPLICA",
            message: format!(
                "the Work streams on this server hold all the capacity it grants ({limit} jobs)"
            ),
            retry_after: RETRY_AFTER,
        },
    })?;
    let registration = RegisteredStream {
        shared: shared.clone(),
        id,
        actor,
        worker_id: hello.worker_id.clone(),
        commands: commands_rx,
        reply_to: commands,
        outbox,
        opened: Instant::now(),
        ending: "the worker closed the stream",
        taken_back: 0,
    };
    Ok((registration, granted))
}

/// Names as an audit row lists them: the first few and how many.
fn some_names(names: &[String]) -> serde_json::Value {
    json!({
        "first": names.iter().take(AUDITED_NAMES).collect::<Vec<_>>(),
        "count": names.len(),
    })
}

/// Audits a new stream: sampled per caller (a worker fleet reconnecting,
/// or a caller opening streams in a loop, writes one row and a summary per
/// window).
pub async fn audit_connected(registration: &RegisteredStream, hello: &Hello, granted: usize) {
    let caller = registration.actor.caller.user_id;
    let event = AuditEvent::success(
        AuditAction::WorkerConnected,
        Some(caller),
        format!("work-streams/{}", registration.id),
    )
    .with_details(json!({
        "worker_id": hello.worker_id,
        "max_concurrency": hello.capacity,
        "granted": granted,
        "job_names": some_names(&hello.filter.names),
        "module_names": some_names(&hello.filter.modules),
    }));
    registration
        .shared
        .audit
        .record_sampled(
            format!("work-open|{caller}"),
            &registration.actor.client,
            &event,
        )
        .await;
}

impl RegisteredStream {
    /// Unregisters the stream and sorts the leases it held (those no report
    /// is settling) into never sent and sent. Assignments still queued, in
    /// the outbox or as commands, were never sent.
    pub fn withdraw(&mut self) -> Withdrawn {
        let held = self.shared.registry().unregister(self.id);
        let mut unsent = self.outbox.withdraw_assignments();
        while let Ok(command) = self.commands.try_recv() {
            if let StreamCommand::Assign(job) = command {
                unsent.insert(job.id, job.attempts);
            }
        }
        let withdrawn = Withdrawn::sort(self.id, held, &unsent);
        self.taken_back += withdrawn.len();
        withdrawn
    }
}

impl Drop for RegisteredStream {
    fn drop(&mut self) {
        let withdrawn = self.withdraw();
        let shared = self.shared.clone();
        let stream = self.id;
        let client = self.actor.client.clone();
        let caller = self.actor.caller.user_id;
        let event = AuditEvent::success(
            AuditAction::WorkerDisconnected,
            Some(caller),
            format!("work-streams/{stream}"),
        )
        .with_details(json!({
            "worker_id": self.worker_id,
            "ended": self.ending,
            "leases_taken_back": self.taken_back,
            "seconds": self.opened.elapsed().as_secs(),
        }));
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let _entered = runtime.enter();
        // Tried again while the database is away: left to the reaper, each
        // would cost its job an attempt, the undelivered ones included.
        keepalive::hand_back_in_background(&shared, withdrawn.undelivered, true);
        let jobs: Vec<Uuid> = withdrawn.delivered.iter().map(|l| l.job).collect();
        keepalive::lose_in_background(&shared, stream, jobs);
        runtime.spawn(async move {
            shared
                .audit
                .record_sampled(format!("work-close|{caller}"), &client, &event)
                .await;
        });
    }
}
