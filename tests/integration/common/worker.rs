//! A worker written only from the proto: a plain tonic client holding one
//! Work stream, with helpers to say what a test expects to hear.

use std::time::Duration;

use automation_control_plane::proto::automation_v1::{
    self as pb, job_service_client::JobServiceClient, work_request::Kind as Out,
    work_response::Kind as In,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Status, Streaming, transport::Channel};

use super::authed;

/// How long a test waits for a message it expects.
pub const PATIENCE: Duration = Duration::from_secs(10);

/// One Work stream.
pub struct TestWorker {
    tx: mpsc::Sender<pb::WorkRequest>,
    rx: Streaming<pb::WorkResponse>,
    /// The server's welcome.
    pub welcome: pb::WorkerWelcome,
}

/// A hello for `max_concurrency` jobs of any name.
pub fn hello(max_concurrency: i32) -> pb::WorkerHello {
    pb::WorkerHello {
        worker_id: "test-worker".into(),
        job_names: vec![],
        module_names: vec![],
        max_concurrency,
    }
}

/// Opens a stream and sends `first` (not necessarily a hello).
pub async fn open_raw(
    channel: Channel,
    token: &str,
    first: pb::WorkRequest,
) -> Result<(mpsc::Sender<pb::WorkRequest>, Streaming<pb::WorkResponse>), Status> {
    let (tx, rx) = mpsc::channel(256);
    tx.send(first).await.expect("queue");
    let response = JobServiceClient::new(channel)
        .work(authed(token, ReceiverStream::new(rx)))
        .await?;
    Ok((tx, response.into_inner()))
}

impl TestWorker {
    /// Connects and waits for the welcome.
    pub async fn connect(
        channel: Channel,
        token: &str,
        hello: pb::WorkerHello,
    ) -> Result<Self, Status> {
        let (tx, mut rx) = open_raw(
            channel,
            token,
            pb::WorkRequest {
                kind: Some(Out::Hello(hello)),
            },
        )
        .await?;
        let first = tokio::time::timeout(PATIENCE, rx.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no welcome"))??
            .ok_or_else(|| Status::aborted("stream ended before the welcome"))?;
        let Some(In::Welcome(welcome)) = first.kind else {
            panic!("expected a welcome, got {first:?}");
        };
        Ok(Self { tx, rx, welcome })
    }

    /// Sends one message; false when the server already ended the stream.
    pub async fn try_send(&self, kind: Out) -> bool {
        self.tx
            .send(pb::WorkRequest { kind: Some(kind) })
            .await
            .is_ok()
    }

    /// Sends one message.
    pub async fn send(&self, kind: Out) {
        self.tx
            .send(pb::WorkRequest { kind: Some(kind) })
            .await
            .expect("stream open");
    }

    /// The next message, or the status the stream ended with; panics when
    /// nothing comes within [`PATIENCE`].
    pub async fn next(&mut self) -> Result<Option<In>, Status> {
        self.next_within(PATIENCE).await.expect("a message in time")
    }

    /// The next message if one comes within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Result<Option<In>, Status>> {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Err(_) => None,
            Ok(Err(status)) => Some(Err(status)),
            Ok(Ok(None)) => Some(Ok(None)),
            Ok(Ok(Some(message))) => Some(Ok(message.kind)),
        }
    }

    /// Asserts that nothing arrives within `wait`.
    pub async fn silent_for(&mut self, wait: Duration) {
        if let Some(message) = self.next_within(wait).await {
            panic!("expected silence, got {message:?}");
        }
    }

    /// The next message, which must be an assignment.
    pub async fn assignment(&mut self) -> pb::JobAssignment {
        match self.next().await {
            Ok(Some(In::Assignment(assignment))) => assignment,
            other => panic!("expected an assignment, got {other:?}"),
        }
    }

    /// The next message, which must be an ack.
    pub async fn ack(&mut self) -> pb::ReportAck {
        match self.next().await {
            Ok(Some(In::Ack(ack))) => ack,
            other => panic!("expected an ack, got {other:?}"),
        }
    }

    /// The next message, which must be a cancellation.
    pub async fn cancellation(&mut self) -> pb::JobCancellation {
        match self.next().await {
            Ok(Some(In::Cancellation(cancellation))) => cancellation,
            other => panic!("expected a cancellation, got {other:?}"),
        }
    }

    /// How the stream ends: its status (OK when it ends cleanly).
    pub async fn end(&mut self) -> Status {
        loop {
            match self.next().await {
                Ok(Some(_)) => continue,
                Ok(None) => return Status::ok(""),
                Err(status) => return status,
            }
        }
    }

    /// Reports success of an assignment.
    pub async fn complete(&self, assignment: &pb::JobAssignment, result: serde_json::Value) {
        self.complete_lease(lease_of(assignment), result).await;
    }

    /// Reports success of a lease.
    pub async fn complete_lease(&self, lease: pb::JobLeaseRef, result: serde_json::Value) {
        self.send(Out::Completion(pb::JobCompletion {
            lease: Some(lease),
            result: Some(json_value(result)),
        }))
        .await;
    }

    /// Reports failure of an assignment.
    pub async fn fail(&self, assignment: &pb::JobAssignment, message: &str, permanent: bool) {
        self.send(Out::Failure(pb::JobFailure {
            lease: Some(lease_of(assignment)),
            message: message.into(),
            details: None,
            permanent,
        }))
        .await;
    }

    /// Heartbeats every lease the stream holds.
    pub async fn heartbeat(&self) {
        self.send(Out::Heartbeat(pb::WorkerHeartbeat { jobs: vec![] }))
            .await;
    }

    /// Gives more credit.
    pub async fn credit(&self, credits: i32) {
        self.send(Out::Credit(pb::WorkerCredit { credits })).await;
    }

    /// Closes the sending half (the worker is done).
    pub fn close(self) -> Streaming<pb::WorkResponse> {
        drop(self.tx);
        self.rx
    }
}

/// The lease an assignment names.
pub fn lease_of(assignment: &pb::JobAssignment) -> pb::JobLeaseRef {
    pb::JobLeaseRef {
        job_id: assignment.job.as_ref().expect("job").id.clone(),
        attempt: assignment.attempt,
    }
}

/// The id of an assignment's job.
pub fn job_id(assignment: &pb::JobAssignment) -> String {
    assignment.job.as_ref().expect("job").id.clone()
}

/// JSON as a protobuf `Value`.
pub fn json_value(value: serde_json::Value) -> prost_types::Value {
    use prost_types::value::Kind;
    let kind = match value {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or_default()),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(items) => Kind::ListValue(prost_types::ListValue {
            values: items.into_iter().map(json_value).collect(),
        }),
        serde_json::Value::Object(map) => {
            Kind::StructValue(json_struct(serde_json::Value::Object(map)))
        }
    };
    prost_types::Value { kind: Some(kind) }
}

/// A JSON object as a protobuf `Struct`.
pub fn json_struct(value: serde_json::Value) -> prost_types::Struct {
    match value {
        serde_json::Value::Object(map) => prost_types::Struct {
            fields: map.into_iter().map(|(k, v)| (k, json_value(v))).collect(),
        },
        other => panic!("not an object: {other}"),
    }
}
