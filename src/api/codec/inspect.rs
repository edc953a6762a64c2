//! The look at a request's bytes that comes before decoding it, for the
//! methods that carry JSON documents: each document too large as JSON is
//! refused naming its field (as the domain's own check would, but without
//! building the tree first), and the memory that decoding and handling the
//! message will take is estimated, for the request budget
//! ([`super::budget`]).

use super::json_wire::{JsonMeasure, Wire, enter, measure_struct, measure_value};
use crate::{
    domain::{
        jobs::leases::progress, modules::manifest::MAX_MANIFEST_BYTES,
        schedules::TEMPLATE_PAYLOAD_MAX_BYTES,
    },
    error::AppError,
};

/// The methods whose messages are looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `CreateJobRequest`: `payload`.
    CreateJob,
    /// `BatchCreateJobsRequest`: `requests[i].payload`.
    BatchCreateJobs,
    /// `RegisterModuleRequest`: `manifest`.
    RegisterModule,
    /// `UpdateModuleRequest`: `module.manifest` (and `module.last_error`,
    /// which is ignored but still decoded).
    UpdateModule,
    /// `WorkRequest`: a completion's `result`, a failure's `details`. Not
    /// refused here: a result too large becomes a failed attempt, as the
    /// protocol says, so only the cost is estimated. A progress report's
    /// `details` over its small bound is refused by name.
    Work,
    /// `CreateScheduleRequest`: `job_template.payload`.
    CreateSchedule,
    /// `UpdateScheduleRequest`: `schedule.job_template.payload`.
    UpdateSchedule,
}

impl Shape {
    /// Decoded trees of each document alive at once while a call is handled:
    /// for a CreateJob, the prost request, the serde_json spec, the row read
    /// back and the prost response; a worker's report is decoded and
    /// converted, and nothing is sent back.
    fn copies(self) -> usize {
        match self {
            Self::Work => 2,
            _ => 4,
        }
    }
}

/// What a message looked like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Inspection {
    /// Estimated bytes of memory that decoding and handling it take: its
    /// buffers and the decoded trees and JSON text of its documents.
    pub cost_bytes: usize,
}

/// The bound of each JSON document.
#[derive(Debug, Clone, Copy)]
pub struct JsonLimits {
    /// `JOB_PAYLOAD_MAX_BYTES`.
    pub payload_max_bytes: usize,
}

/// Walks `message` (the bytes of one request of `shape`, without the gRPC
/// prefix), refusing a document over its bound by name.
pub fn inspect(shape: Shape, message: &[u8], limits: JsonLimits) -> Result<Inspection, AppError> {
    if shape == Shape::CreateJob {
        let payload = create_job(message, "", limits, 0)?;
        return finish(shape, message, payload);
    }
    let mut documents = JsonMeasure::default();
    let mut manifest = JsonMeasure::default();
    let mut wire = Wire::new(message);
    let mut index = 0;
    while let Some((number, wire_type)) = wire.field()? {
        match (shape, number) {
            (Shape::BatchCreateJobs, 1) => {
                let request = wire.message(wire_type)?;
                let prefix = format!("requests[{index}].");
                documents.add(&create_job(request, &prefix, limits, 1)?);
                index += 1;
            }
            (Shape::RegisterModule, 5) => {
                manifest.add(&measure_struct(wire.message(wire_type)?, 1)?);
                bounded("manifest", manifest, MAX_MANIFEST_BYTES)?;
            }
            (Shape::UpdateModule, 1) => {
                documents.add(&module(wire.message(wire_type)?)?);
            }
            (Shape::Work, 4 | 5) => {
                documents.add(&report(number, wire.message(wire_type)?)?);
            }
            (Shape::Work, 8) => {
                documents.add(&progress_report(wire.message(wire_type)?)?);
            }
            (Shape::CreateSchedule, 5) => {
                documents.add(&job_template(wire.message(wire_type)?, "job_template.", 1)?);
            }
            (Shape::UpdateSchedule, 1) => {
                documents.add(&schedule(wire.message(wire_type)?)?);
            }
            _ => wire.skip(number, wire_type, 0)?,
        }
    }
    documents.add(&manifest);
    finish(shape, message, documents)
}

fn finish(shape: Shape, message: &[u8], documents: JsonMeasure) -> Result<Inspection, AppError> {
    // The message is held twice on its way in (received, then buffered by
    // the decoder); each copy of a document is a tree plus, at times, its
    // JSON text (validation, the database's parameter and row).
    let per_copy = documents.tree_bytes().saturating_add(documents.json_bytes);
    Ok(Inspection {
        cost_bytes: message
            .len()
            .saturating_mul(2)
            .saturating_add(per_copy.saturating_mul(shape.copies())),
    })
}

/// A `CreateJobRequest` at `depth`: its payload, `{}` when unset.
fn create_job(
    message: &[u8],
    prefix: &str,
    limits: JsonLimits,
    depth: usize,
) -> Result<JsonMeasure, AppError> {
    let mut payload: Option<JsonMeasure> = None;
    let mut wire = Wire::new(message);
    while let Some((number, wire_type)) = wire.field()? {
        if number == 3 {
            let measured = measure_struct(wire.message(wire_type)?, enter(depth)?)?;
            let payload = payload.get_or_insert_default();
            payload.add(&measured);
            // Refused as soon as it is over, before the rest is read.
            bounded(
                &format!("{prefix}payload"),
                *payload,
                limits.payload_max_bytes,
            )?;
        } else {
            wire.skip(number, wire_type, depth)?;
        }
    }
    let payload = payload.unwrap_or(JsonMeasure::EMPTY_OBJECT);
    bounded(
        &format!("{prefix}payload"),
        payload,
        limits.payload_max_bytes,
    )
}

/// An `UpdateModuleRequest`'s `module`.
fn module(message: &[u8]) -> Result<JsonMeasure, AppError> {
    let mut documents = JsonMeasure::default();
    let mut manifest = JsonMeasure::default();
    let mut wire = Wire::new(message);
    while let Some((number, wire_type)) = wire.field()? {
        match number {
            7 => {
                manifest.add(&measure_struct(wire.message(wire_type)?, 2)?);
                bounded("module.manifest", manifest, MAX_MANIFEST_BYTES)?;
            }
            13 => documents.add(&measure_struct(wire.message(wire_type)?, 2)?),
            _ => wire.skip(number, wire_type, 1)?,
        }
    }
    documents.add(&manifest);
    Ok(documents)
}

/// A schedule's `JobTemplate` at `depth`: its payload, bounded as the
/// domain bounds a template's.
fn job_template(message: &[u8], prefix: &str, depth: usize) -> Result<JsonMeasure, AppError> {
    let mut payload = JsonMeasure::default();
    let mut wire = Wire::new(message);
    while let Some((number, wire_type)) = wire.field()? {
        if number == 3 {
            payload.add(&measure_struct(wire.message(wire_type)?, enter(depth)?)?);
            bounded(
                &format!("{prefix}payload"),
                payload,
                TEMPLATE_PAYLOAD_MAX_BYTES,
            )?;
        } else {
            wire.skip(number, wire_type, depth)?;
        }
    }
    Ok(payload)
}

/// An `UpdateScheduleRequest`'s `schedule`.
fn schedule(message: &[u8]) -> Result<JsonMeasure, AppError> {
    let mut documents = JsonMeasure::default();
    let mut wire = Wire::new(message);
    while let Some((number, wire_type)) = wire.field()? {
        match number {
            6 => documents.add(&job_template(
                wire.message(wire_type)?,
                "schedule.job_template.",
                2,
            )?),
            _ => wire.skip(number, wire_type, 1)?,
        }
    }
    Ok(documents)
}

/// A `JobCompletion` (4: its `result`) or `JobFailure` (5: its `details`).
fn report(kind: u32, message: &[u8]) -> Result<JsonMeasure, AppError> {
    let mut documents = JsonMeasure::default();
    let mut wire = Wire::new(message);
    while let Some((number, wire_type)) = wire.field()? {
        match (kind, number) {
            (4, 2) => documents.add(&measure_value(wire.message(wire_type)?, 2)?),
            (5, 3) => documents.add(&measure_struct(wire.message(wire_type)?, 2)?),
            _ => wire.skip(number, wire_type, 1)?,
        }
    }
    Ok(documents)
}

/// A `JobProgressReport`'s `details` (4), refused past
/// [`progress::DETAILS_MAX_BYTES`] as JSON.
fn progress_report(message: &[u8]) -> Result<JsonMeasure, AppError> {
    let mut details = JsonMeasure::default();
    let mut wire = Wire::new(message);
    while let Some((number, wire_type)) = wire.field()? {
        if number == 4 {
            details.add(&measure_struct(wire.message(wire_type)?, 2)?);
            bounded("progress.details", details, progress::DETAILS_MAX_BYTES)?;
        } else {
            wire.skip(number, wire_type, 1)?;
        }
    }
    Ok(details)
}

/// The document, or the refusal the domain would give it.
fn bounded(field: &str, measure: JsonMeasure, max_bytes: usize) -> Result<JsonMeasure, AppError> {
    if measure.json_bytes > max_bytes {
        return Err(AppError::invalid(
            field,
            format!(
                "is {} bytes as JSON; at most {max_bytes} are accepted",
                measure.json_bytes
            ),
        ));
    }
    Ok(measure)
}

/// The estimated cost of the costliest legal CreateJob: a payload of
/// `payload_max_bytes` made of `{"":0}` objects (7 bytes of JSON each, the
/// most objects per byte), for the start-up check that the budget can take
/// one.
pub fn worst_create_job_cost(payload_max_bytes: usize) -> usize {
    let objects = payload_max_bytes / 7;
    let documents = JsonMeasure {
        json_bytes: payload_max_bytes,
        values: objects * 2,
        objects,
        members: objects,
        strings: objects,
        text_bytes: 0,
    };
    // 17 bytes on the wire per object (a list entry, a Value, a map entry
    // and a number).
    let wire = objects * 17;
    wire * 2 + (documents.tree_bytes() + documents.json_bytes) * Shape::CreateJob.copies()
}

#[cfg(test)]
mod tests {
    use prost::Message as _;

    use super::*;
    use crate::{proto::automation_v1 as pb, wire::json::json_to_struct};

    const LIMITS: JsonLimits = JsonLimits {
        payload_max_bytes: 1000,
    };

    fn job(payload: serde_json::Value) -> pb::CreateJobRequest {
        pb::CreateJobRequest {
            name: "x.y".into(),
            payload: Some(json_to_struct(payload)),
            ..Default::default()
        }
    }

    fn objects(count: usize) -> serde_json::Value {
        serde_json::json!({ "a": vec![serde_json::json!({"k": 0}); count] })
    }

    #[test]
    fn a_payload_over_the_limit_is_refused_by_name_and_one_at_it_passes() {
        // `{"a":[` + n × `{"k":0}` + commas + `]}`: 8 n + 7 bytes.
        let at = job(objects(124)).encode_to_vec();
        assert_eq!(
            serde_json::to_vec(&objects(124)).unwrap().len(),
            999,
            "the document's length"
        );
        inspect(Shape::CreateJob, &at, LIMITS).unwrap();
        let over = job(objects(125)).encode_to_vec();
        let error = inspect(Shape::CreateJob, &over, LIMITS).unwrap_err();
        assert_eq!(
            error.to_string(),
            "payload: is 1007 bytes as JSON; at most 1000 are accepted"
        );
    }

    #[test]
    fn schedule_templates_are_held_to_their_own_bound() {
        let template = |payload: serde_json::Value| pb::JobTemplate {
            name: "x.y".into(),
            payload: Some(json_to_struct(payload)),
            ..Default::default()
        };
        let huge = serde_json::json!({ "x": "y".repeat(TEMPLATE_PAYLOAD_MAX_BYTES) });
        let create = pb::CreateScheduleRequest {
            job_template: Some(template(huge.clone())),
            ..Default::default()
        };
        let error = inspect(Shape::CreateSchedule, &create.encode_to_vec(), LIMITS).unwrap_err();
        assert!(
            error.to_string().starts_with("job_template.payload: "),
            "{error}"
        );
        let update = pb::UpdateScheduleRequest {
            schedule: Some(pb::Schedule {
                job_template: Some(template(huge)),
                ..Default::default()
            }),
            update_mask: None,
        };
        let error = inspect(Shape::UpdateSchedule, &update.encode_to_vec(), LIMITS).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("schedule.job_template.payload: "),
            "{error}"
        );
        // Under the bound (and over a job's, which does not apply): passes.
        let small = pb::CreateScheduleRequest {
            job_template: Some(template(objects(200))),
            ..Default::default()
        };
        inspect(Shape::CreateSchedule, &small.encode_to_vec(), LIMITS).unwrap();
    }

    #[test]
    fn batches_name_the_job_and_modules_their_manifest() {
        let batch = pb::BatchCreateJobsRequest {
            requests: vec![job(objects(1)), job(objects(200))],
        };
        let error = inspect(Shape::BatchCreateJobs, &batch.encode_to_vec(), LIMITS).unwrap_err();
        assert!(
            error.to_string().starts_with("requests[1].payload: "),
            "{error}"
        );

        let huge = serde_json::json!({ "x": "y".repeat(MAX_MANIFEST_BYTES) });
        let register = pb::RegisterModuleRequest {
            manifest: Some(json_to_struct(huge.clone())),
            ..Default::default()
        };
        let error = inspect(Shape::RegisterModule, &register.encode_to_vec(), LIMITS).unwrap_err();
        assert!(error.to_string().starts_with("manifest: "), "{error}");
        let update = pb::UpdateModuleRequest {
            module: Some(pb::Module {
                manifest: Some(json_to_struct(huge)),
                ..Default::default()
            }),
            update_mask: None,
        };
        let error = inspect(Shape::UpdateModule, &update.encode_to_vec(), LIMITS).unwrap_err();
        assert!(
            error.to_string().starts_with("module.manifest: "),
            "{error}"
        );
    }

    #[test]
    fn the_cost_follows_the_objects_not_the_bytes() {
        let text = job(serde_json::json!({ "s": "x".repeat(900) })).encode_to_vec();
        let tree = job(objects(120)).encode_to_vec();
        let text = inspect(Shape::CreateJob, &text, LIMITS).unwrap().cost_bytes;
        let tree = inspect(Shape::CreateJob, &tree, LIMITS).unwrap().cost_bytes;
        // About the same JSON length; the objects cost tens of times more.
        assert!(tree > 20 * text, "{tree} vs {text}");
        assert!(worst_create_job_cost(1000) >= tree);
    }

    #[test]
    fn progress_details_over_their_bound_are_refused_by_name() {
        let report = |details: serde_json::Value| pb::WorkRequest {
            kind: Some(pb::work_request::Kind::Progress(pb::JobProgressReport {
                details: Some(json_to_struct(details)),
                ..Default::default()
            })),
        };
        let at = serde_json::json!({ "k": "x".repeat(progress::DETAILS_MAX_BYTES - 8) });
        assert_eq!(
            serde_json::to_vec(&at).unwrap().len(),
            progress::DETAILS_MAX_BYTES
        );
        inspect(Shape::Work, &report(at).encode_to_vec(), LIMITS).unwrap();
        let over = serde_json::json!({ "k": "x".repeat(progress::DETAILS_MAX_BYTES - 7) });
        let error = inspect(Shape::Work, &report(over).encode_to_vec(), LIMITS).unwrap_err();
        assert!(
            error.to_string().starts_with("progress.details: "),
            "{error}"
        );
    }

    #[test]
    fn a_large_result_is_costed_not_refused() {
        let report = pb::WorkRequest {
            kind: Some(pb::work_request::Kind::Completion(pb::JobCompletion {
                lease: None,
                result: Some(crate::wire::json::json_to_value(objects(500))),
            })),
        };
        let seen = inspect(Shape::Work, &report.encode_to_vec(), LIMITS).unwrap();
        assert!(seen.cost_bytes > 500 * 1000, "{seen:?}");
    }
}
