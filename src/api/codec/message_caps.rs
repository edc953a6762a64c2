//! The size cap of every `automation.v1` message, checked on its gRPC length
//! prefix while the request body streams in: a message over its method's
//! cap is refused before it is buffered, let alone decoded into a `Struct`
//! (where a 16 MiB CreateJob once cost 155 MB and a second of CPU).
//!
//! Each cap follows from the largest request the method can legally take:
//! - `CreateJob`: a payload of `JOB_PAYLOAD_MAX_BYTES` as JSON in its worst
//!   protobuf encoding ([`struct_wire_bound`]) plus the envelope;
//! - `BatchCreateJobs`: a budget of its own, `JOB_BATCH_MAX_BYTES` (a batch
//!   is for many small jobs; 1,000 payloads at the limit would be a
//!   gigabyte, so the budget is not that);
//! - `Work`: each worker message, the largest being a completion's result or
//!   a failure's details (bounded like a payload) or a heartbeat naming
//!   10,000 leases;
//! - `RegisterModule`/`UpdateModule`: a manifest of 256 KiB as JSON;
//! - `CreateSchedule`/`UpdateSchedule`: a job template's payload of 64 KiB
//!   as JSON;
//! - everything else: [`SMALL_MESSAGE_BYTES`].
//!
//! `GRPC_MAX_MESSAGE_BYTES` bounds them all from outside. A refusal is
//! INVALID_ARGUMENT with reason `MESSAGE_TOO_LARGE` (see
//! [`crate::error::AppError::MessageTooLarge`]), on unary calls and streams
//! alike.
//!
//! Under its cap, a message with a JSON document can still cost a hundred
//! times its bytes once decoded; the layer therefore also walks those
//! messages before they are decoded and holds them to the request budget
//! ([`super::body`], [`super::budget`]).

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

use tonic::body::Body;
use tower::{Layer, Service};

pub use super::cap::MessageCap;
use super::{
    body::{Check, CheckedBody},
    budget::{Hold, HoldingBody, RequestBudget},
    inspect::{JsonLimits, Shape},
};
use crate::domain::{modules::manifest::MAX_MANIFEST_BYTES, schedules::TEMPLATE_PAYLOAD_MAX_BYTES};

/// The largest protobuf encoding of a JSON document of `json_bytes` bytes,
/// as `google.protobuf.Struct`/`Value`.
///
/// Why 11/2: the protobuf form of a JSON value is never more than 5.5 times
/// its JSON text. The worst case is a list of one-digit numbers: `0,` is 2
/// bytes of JSON, but each element is a `Value` of 9 bytes (a tag and a
/// double) framed as a list entry (a tag and a length), 11 bytes. Everything
/// else costs less per JSON byte: `null,`/`true,` 5 vs 4, `"",` 3 vs 4,
/// `[],`/`{},` 3 vs 4, an object member `"k":0,` 6 vs 16 (2.7×), and longer
/// strings and keys approach 1×. Nesting adds a tag and a length per level
/// for two JSON bytes, and decoding stops at 100 levels, which the
/// envelope's slack covers. (`serde_json` writes a whole `f64` as an
/// integer, as the server measures payloads, so `0` is one byte.)
pub const fn struct_wire_bound(json_bytes: usize) -> usize {
    json_bytes.saturating_mul(11) / 2
}

/// Room for everything in a request beside its JSON document (a job's name,
/// module, idempotency key, schedule…: under 1 KiB by their declared
/// limits), with room for an over-long field to be decoded and refused by
/// name rather than as an unreadable message.
pub const ENVELOPE_BYTES: usize = 64 * 1024;

/// Largest request of the methods that carry no JSON document: every field
/// they take is short (the largest, an update carrying a user's 256
/// permissions back, stays under 40 KiB); the bound leaves room for a value
/// far past its field's limit to be refused by name (INVALID_ARGUMENT
/// naming the field) while keeping what anyone can make the server hold per
/// call small.
pub const SMALL_MESSAGE_BYTES: usize = 512 * 1024;

/// Largest heartbeat: 10,000 `JobLeaseRef`s (the declared `max_items`), each
/// framed in 2 bytes, with a 64-byte id (3 bytes of tag and length) and the
/// longest attempt number (a negative int32 is 10 bytes, plus its tag), plus
/// the framing of the heartbeat and the request.
pub const HEARTBEAT_MAX_BYTES: usize = 10_000 * (2 + 2 + 64 + 1 + 10) + 16;

/// Largest failure `message` a worker may send (its declared `max_bytes`).
const FAILURE_MESSAGE_BYTES: usize = 64 * 1024;

/// What the caps are derived from.
#[derive(Debug, Clone, Copy)]
pub struct CapSettings {
    /// `JOB_PAYLOAD_MAX_BYTES`: a job's payload, result or error as JSON.
    pub payload_max_bytes: usize,
    /// `JOB_BATCH_MAX_BYTES`: one BatchCreateJobs message.
    pub batch_max_bytes: usize,
    /// `GRPC_MAX_MESSAGE_BYTES`: the outer bound of every message.
    pub outer_max_bytes: usize,
}

/// The cap of every `automation.v1` method.
#[derive(Debug, Clone)]
pub struct MessageCaps {
    create_job: MessageCap,
    batch_create_jobs: MessageCap,
    work: MessageCap,
    manifest: MessageCap,
    schedule: MessageCap,
    small: MessageCap,
    /// `JOB_PAYLOAD_MAX_BYTES`, for the look at each payload.
    payload_max_bytes: usize,
}

const PACKAGE_PREFIX: &str = "/automation.v1.";
const CREATE_JOB: &str = "/automation.v1.JobService/CreateJob";
const BATCH_CREATE_JOBS: &str = "/automation.v1.JobService/BatchCreateJobs";
const WORK: &str = "/automation.v1.JobService/Work";
const REGISTER_MODULE: &str = "/automation.v1.ModuleService/RegisterModule";
const UPDATE_MODULE: &str = "/automation.v1.ModuleService/UpdateModule";
const CREATE_SCHEDULE: &str = "/automation.v1.ScheduleService/CreateSchedule";
const UPDATE_SCHEDULE: &str = "/automation.v1.ScheduleService/UpdateSchedule";

impl MessageCaps {
    /// The caps that `settings` imply.
    pub fn new(settings: CapSettings) -> Self {
        let payload = struct_wire_bound(settings.payload_max_bytes);
        let outer = settings.outer_max_bytes;
        let caps = Self {
            create_job: MessageCap::set_by(
                "JOB_PAYLOAD_MAX_BYTES",
                payload.saturating_add(ENVELOPE_BYTES),
            ),
            batch_create_jobs: MessageCap::set_by("JOB_BATCH_MAX_BYTES", settings.batch_max_bytes),
            work: MessageCap::set_by(
                "JOB_PAYLOAD_MAX_BYTES",
                payload
                    .saturating_add(FAILURE_MESSAGE_BYTES + ENVELOPE_BYTES)
                    .max(HEARTBEAT_MAX_BYTES),
            ),
            manifest: MessageCap::fixed(struct_wire_bound(MAX_MANIFEST_BYTES) + ENVELOPE_BYTES),
            schedule: MessageCap::fixed(
                struct_wire_bound(TEMPLATE_PAYLOAD_MAX_BYTES) + ENVELOPE_BYTES,
            ),
            small: MessageCap::fixed(SMALL_MESSAGE_BYTES),
            payload_max_bytes: settings.payload_max_bytes,
        };
        Self {
            create_job: caps.create_job.within(outer),
            batch_create_jobs: caps.batch_create_jobs.within(outer),
            work: caps.work.within(outer),
            manifest: caps.manifest.within(outer),
            schedule: caps.schedule.within(outer),
            small: caps.small.within(outer),
            payload_max_bytes: caps.payload_max_bytes,
        }
    }

    /// The cap of the method at `path` (`/automation.v1.JobService/Work`);
    /// `None` outside `automation.v1` (health and reflection keep the
    /// library's default).
    pub fn for_path(&self, path: &str) -> Option<MessageCap> {
        Some(match path {
            CREATE_JOB => self.create_job,
            BATCH_CREATE_JOBS => self.batch_create_jobs,
            WORK => self.work,
            REGISTER_MODULE | UPDATE_MODULE => self.manifest,
            CREATE_SCHEDULE | UPDATE_SCHEDULE => self.schedule,
            _ if path.starts_with(PACKAGE_PREFIX) => self.small,
            _ => return None,
        })
    }

    /// The largest cap of any method of `service` (`JobService`), for the
    /// library's own per-service check behind this one.
    pub fn service_max(&self, service: &str) -> usize {
        match service {
            "JobService" => self
                .create_job
                .max_bytes
                .max(self.batch_create_jobs.max_bytes)
                .max(self.work.max_bytes)
                .max(self.small.max_bytes),
            "ModuleService" => self.manifest.max_bytes.max(self.small.max_bytes),
            "ScheduleService" => self.schedule.max_bytes.max(self.small.max_bytes),
            _ => self.small.max_bytes,
        }
    }

    /// The cap of CreateJob, for the start-up log.
    pub fn create_job(&self) -> MessageCap {
        self.create_job
    }
}

/// Puts every `automation.v1` request body behind its method's cap, and the
/// messages that carry JSON documents behind their look and the request
/// budget (see [`super::body`]).
#[derive(Debug, Clone)]
pub struct MessageCapLayer {
    caps: Arc<MessageCaps>,
    budget: RequestBudget,
    limits: JsonLimits,
}

impl MessageCapLayer {
    /// A layer enforcing `caps`, spending `budget`.
    pub fn new(caps: MessageCaps, budget: RequestBudget) -> Self {
        Self {
            limits: JsonLimits {
                payload_max_bytes: caps.payload_max_bytes,
            },
            caps: Arc::new(caps),
            budget,
        }
    }
}

impl<S> Layer<S> for MessageCapLayer {
    type Service = MessageCapService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageCapService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`MessageCapLayer`].
#[derive(Debug, Clone)]
pub struct MessageCapService<S> {
    inner: S,
    layer: MessageCapLayer,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S> Service<http::Request<Body>> for MessageCapService<S>
where
    S: Service<http::Request<Body>, Response = http::Response<Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let path = request.uri().path();
        let Some(cap) = self.layer.caps.for_path(path) else {
            return Box::pin(self.inner.call(request));
        };
        let check = shape_of(path).map(|shape| Check {
            shape,
            limits: self.layer.limits,
            budget: self.layer.budget.clone(),
            hold: (shape != Shape::Work).then(Hold::default),
        });
        let hold = check.as_ref().and_then(|check| check.hold.clone());
        let request = request.map(|body| Body::new(CheckedBody::new(body, cap, check)));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            // The call's shares stay taken until its response is sent.
            Ok(match hold {
                Some(hold) => response.map(|body| Body::new(HoldingBody::new(body, hold))),
                None => response,
            })
        })
    }
}

/// The documents a method's messages carry, if any.
fn shape_of(path: &str) -> Option<Shape> {
    Some(match path {
        CREATE_JOB => Shape::CreateJob,
        BATCH_CREATE_JOBS => Shape::BatchCreateJobs,
        REGISTER_MODULE => Shape::RegisterModule,
        UPDATE_MODULE => Shape::UpdateModule,
        WORK => Shape::Work,
        CREATE_SCHEDULE => Shape::CreateSchedule,
        UPDATE_SCHEDULE => Shape::UpdateSchedule,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::{
        auth::policy::METHOD_ACCESS, proto::automation_v1 as pb, wire::json::json_to_struct,
    };

    #[test]
    fn the_cap_of_a_payload_holds_its_worst_encoding() {
        // A list of one-digit numbers: 2 JSON bytes, 11 protobuf bytes each.
        let limit = 64 * 1024;
        let count = (limit - "{\"a\":[]}".len()).div_ceil(2);
        let json = serde_json::json!({ "a": vec![0; count] });
        let json_bytes = serde_json::to_vec(&json).unwrap().len();
        assert!(json_bytes <= limit, "{json_bytes}");
        let request = pb::CreateJobRequest {
            name: "x".repeat(128),
            module_name: "m".repeat(64),
            payload: Some(json_to_struct(json)),
            priority: -1,
            max_attempts: -1,
            schedule_time: Some(prost_types::Timestamp {
                seconds: -62_135_596_800,
                nanos: 999_999_999,
            }),
            idempotency_key: "k".repeat(255),
            concurrency_key: "c".repeat(255),
            concurrency_max: -1,
            rate_limit: "r".repeat(128),
        };
        let caps = MessageCaps::new(CapSettings {
            payload_max_bytes: limit,
            batch_max_bytes: 1 << 20,
            outer_max_bytes: usize::MAX,
        });
        let encoded = request.encoded_len();
        assert!(encoded <= caps.create_job.max_bytes, "{encoded}");
        // The factor is needed: the encoding is over five times the JSON.
        assert!(encoded > 5 * json_bytes, "{encoded} vs {json_bytes}");
    }

    #[test]
    fn the_largest_heartbeat_fits_the_work_cap() {
        let heartbeat = pb::WorkRequest {
            kind: Some(pb::work_request::Kind::Heartbeat(pb::WorkerHeartbeat {
                jobs: vec![
                    pb::JobLeaseRef {
                        job_id: "j".repeat(64),
                        attempt: i32::MIN,
                    };
                    10_000
                ],
            })),
        };
        assert!(heartbeat.encoded_len() <= HEARTBEAT_MAX_BYTES);
        let caps = MessageCaps::new(CapSettings {
            payload_max_bytes: 1024,
            batch_max_bytes: 1 << 20,
            outer_max_bytes: usize::MAX,
        });
        assert_eq!(caps.work.max_bytes, HEARTBEAT_MAX_BYTES);
    }

    #[test]
    fn named_methods_exist_and_the_outer_bound_wins() {
        for path in [
            CREATE_JOB,
            BATCH_CREATE_JOBS,
            WORK,
            REGISTER_MODULE,
            UPDATE_MODULE,
            CREATE_SCHEDULE,
            UPDATE_SCHEDULE,
        ] {
            assert!(
                METHOD_ACCESS.iter().any(|(method, _)| *method == path),
                "{path} is not a method"
            );
        }
        let caps = MessageCaps::new(CapSettings {
            payload_max_bytes: 1 << 20,
            batch_max_bytes: 8 << 20,
            outer_max_bytes: 4 << 20,
        });
        assert_eq!(
            caps.for_path(CREATE_JOB),
            Some(MessageCap::set_by("GRPC_MAX_MESSAGE_BYTES", 4 << 20))
        );
        assert_eq!(
            caps.for_path("/automation.v1.JobService/GetJob"),
            Some(MessageCap::fixed(SMALL_MESSAGE_BYTES))
        );
        assert_eq!(caps.for_path("/grpc.health.v1.Health/Check"), None);
    }
}
