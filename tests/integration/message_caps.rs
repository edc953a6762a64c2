//! Message size caps: each RPC's cap follows from its largest legal request
//! and is checked on the message's length prefix, before the message is
//! buffered or decoded. A message over it answers INVALID_ARGUMENT with
//! reason MESSAGE_TOO_LARGE naming the setting; a legal request at the
//! limit, in its worst encoding, is accepted; a batch is bounded by its own
//! budget. Under the cap, a payload too large as JSON is refused from its
//! bytes, before any tree of it is built, and the memory that large requests
//! hold at once is bounded by REQUEST_MEMORY_BUDGET_BYTES.

use crate::common;

use std::time::Duration;

use automation_control_plane::{
    api::codec::{
        budget::BudgetSettings,
        message_caps::{ENVELOPE_BYTES, HEARTBEAT_MAX_BYTES, struct_wire_bound},
    },
    proto::automation_v1 as pb,
};
use bytes::Bytes;
use common::{JobServiceClient, TestApp, TestOptions, authed, new_job, raw_codec::RawCodec};
use prost::Message as _;
use tonic::{Code, Status, transport::Channel};
use tonic_types::StatusExt as _;

/// The payload limit of these tests' servers: small, so that the bodies
/// sent stay small too.
const PAYLOAD_MAX: usize = 64 * 1024;
/// Their BatchCreateJobs budget.
const BATCH_MAX: usize = 1024 * 1024;
/// CreateJob's cap, as the server derives it.
const CREATE_JOB_CAP: usize = struct_wire_bound(PAYLOAD_MAX) + ENVELOPE_BYTES;

async fn spawn() -> TestApp {
    let mut options = TestOptions::default();
    options.jobs.payload_max_bytes = PAYLOAD_MAX;
    options.server.batch_max_bytes = BATCH_MAX;
    TestApp::spawn_with(options).await
}

/// A unary call of `path` with `body` as the message; the refusal.
async fn refused(channel: Channel, token: &str, path: &str, body: Vec<u8>) -> Status {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    grpc.unary(authed(token, body), path.parse().expect("path"), RawCodec)
        .await
        .map(drop)
        .expect_err("refused")
}

/// The ErrorInfo reason and metadata of a refusal.
fn reason(status: &Status) -> (String, std::collections::HashMap<String, String>) {
    let info = status
        .get_error_details()
        .error_info()
        .cloned()
        .unwrap_or_else(|| panic!("no ErrorInfo: {status:?}"));
    (info.reason, info.metadata)
}

/// Bytes that are not protobuf: every field tag 0xff… is a varint that never
/// ends, so decoding them could only fail.
fn garbage(len: usize) -> Vec<u8> {
    vec![0xff; len]
}

/// A payload whose protobuf form is as large as JSON of `json_bytes` can
/// make it: a list of zeros, exactly `json_bytes` long as the server
/// measures it.
fn worst_payload(json_bytes: usize) -> serde_json::Value {
    // `{"a":[]}` is 8 bytes; each `0,` adds 2 (the first `0` only 1), and a
    // key of one more letter pads an odd length.
    let room = json_bytes - 8;
    let (key, count) = if room % 2 == 1 {
        ("a", room.div_ceil(2))
    } else {
        ("aa", room / 2)
    };
    let payload = serde_json::json!({ key: vec![0; count] });
    assert_eq!(serde_json::to_vec(&payload).unwrap().len(), json_bytes);
    payload
}

#[tokio::test]
async fn a_create_job_over_its_cap_is_refused_before_it_is_decoded() {
    let app = spawn().await;
    let token = app.admin_token().await;
    let path = "/automation.v1.JobService/CreateJob";

    // Not protobuf, one byte over the cap: refused for its size, so it was
    // never decoded (decoding it would have said MALFORMED_MESSAGE).
    let status = refused(
        app.channel().await,
        &token,
        path,
        garbage(CREATE_JOB_CAP + 1),
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let (why, metadata) = reason(&status);
    assert_eq!(why, "MESSAGE_TOO_LARGE", "{status:?}");
    assert_eq!(metadata["limit"], "JOB_PAYLOAD_MAX_BYTES");
    assert_eq!(metadata["max_bytes"], CREATE_JOB_CAP.to_string());
    assert_eq!(metadata["message_bytes"], (CREATE_JOB_CAP + 1).to_string());

    // The same garbage at the cap is decoded, and fails as garbage.
    let status = refused(app.channel().await, &token, path, garbage(CREATE_JOB_CAP)).await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert_eq!(reason(&status).0, "MALFORMED_MESSAGE", "{status:?}");

    // A 16 MiB request is refused the same way, and the server goes on.
    let status = refused(app.channel().await, &token, path, garbage(16 << 20)).await;
    assert_eq!(reason(&status).0, "MESSAGE_TOO_LARGE", "{status:?}");

    // Methods without a JSON document have a small fixed cap, no setting.
    let status = refused(
        app.channel().await,
        &token,
        "/automation.v1.UserService/GetUser",
        garbage(600 * 1024),
    )
    .await;
    let (why, metadata) = reason(&status);
    assert_eq!(why, "MESSAGE_TOO_LARGE", "{status:?}");
    assert!(!metadata.contains_key("limit"), "{metadata:?}");
    app.create_job(&token, new_job("after.refusals", serde_json::json!({})))
        .await;
    app.stop().await;
}

#[tokio::test]
async fn a_payload_at_the_limit_in_its_worst_encoding_is_accepted() {
    let app = spawn().await;
    let token = app.admin_token().await;
    let request = new_job("worst.case", worst_payload(PAYLOAD_MAX));
    // Over five times its JSON on the wire: a cap of "payload + a little"
    // would refuse it.
    assert!(request.encoded_len() > 5 * PAYLOAD_MAX);
    assert!(request.encoded_len() <= CREATE_JOB_CAP);
    let sent = request.payload.clone();
    let job = app.create_job(&token, request).await;
    assert_eq!(job.payload, sent, "stored as sent");

    // One byte more of JSON is refused by the payload check, by name.
    let status = JobServiceClient::new(app.channel().await)
        .create_job(authed(
            &token,
            new_job("worst.case", worst_payload(PAYLOAD_MAX + 1)),
        ))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(status.message().starts_with("payload:"), "{status:?}");
    app.stop().await;
}

/// A batch of 1,000 jobs whose message is exactly `bytes` long.
fn batch_of(bytes: usize) -> pb::BatchCreateJobsRequest {
    let job = |i: usize, pad: usize| {
        new_job(
            &format!("batch.job{i}"),
            serde_json::json!({ "pad": "x".repeat(pad) }),
        )
    };
    let mut requests: Vec<_> = (0..1000).map(|i| job(i, 0)).collect();
    let base = pb::BatchCreateJobsRequest {
        requests: requests.clone(),
    }
    .encoded_len();
    // Spread the rest over the jobs (each stays far below the payload
    // limit), then trim the last one to the byte; a length prefix that grows
    // a byte is absorbed by trying one less.
    let per_job = (bytes - base) / 1000;
    for (i, request) in requests.iter_mut().enumerate() {
        *request = job(i, per_job.saturating_sub(8));
    }
    for shrink in 0..16 {
        let mut trial = requests.clone();
        let len = pb::BatchCreateJobsRequest {
            requests: trial.clone(),
        }
        .encoded_len();
        let last_pad = (per_job.saturating_sub(8) + bytes).saturating_sub(len + shrink);
        trial[999] = job(999, last_pad);
        let batch = pb::BatchCreateJobsRequest { requests: trial };
        if batch.encoded_len() == bytes {
            return batch;
        }
    }
    panic!("no batch of exactly {bytes} bytes");
}

#[tokio::test]
async fn a_batch_at_its_budget_works_and_one_byte_more_is_refused() {
    let app = spawn().await;
    let token = app.admin_token().await;
    let mut client = JobServiceClient::new(app.channel().await);

    let batch = batch_of(BATCH_MAX);
    let jobs = client
        .batch_create_jobs(authed(&token, batch))
        .await
        .expect("a batch at its budget")
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1000);

    let status = client
        .batch_create_jobs(authed(&token, batch_of(BATCH_MAX + 1)))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let (why, metadata) = reason(&status);
    assert_eq!(why, "MESSAGE_TOO_LARGE", "{status:?}");
    assert_eq!(metadata["limit"], "JOB_BATCH_MAX_BYTES");
    assert_eq!(metadata["max_bytes"], BATCH_MAX.to_string());
    app.stop().await;
}

#[tokio::test]
async fn a_worker_message_over_its_cap_ends_the_stream_with_the_reason() {
    let app = spawn().await;
    let token = app.admin_token().await;
    let mut grpc = tonic::client::Grpc::new(app.channel().await);
    grpc.ready().await.expect("ready");
    let hello = pb::WorkRequest {
        kind: Some(pb::work_request::Kind::Hello(pb::WorkerHello {
            worker_id: "too-large".into(),
            job_names: vec![],
            module_names: vec![],
            max_concurrency: 1,
        })),
    }
    .encode_to_vec();
    // A completion's result is bounded like a payload: the cap is that
    // payload's worst encoding plus a failure's message and the envelope,
    // or the largest heartbeat (10,000 leases) when that is more.
    let cap =
        (struct_wire_bound(PAYLOAD_MAX) + 64 * 1024 + ENVELOPE_BYTES).max(HEARTBEAT_MAX_BYTES);
    let messages = vec![hello, garbage(cap + 1)];
    let result = grpc
        .streaming(
            authed(&token, tokio_stream::iter(messages)),
            "/automation.v1.JobService/Work".parse().expect("path"),
            RawCodec,
        )
        .await;
    let status = match result {
        Err(status) => status,
        Ok(response) => {
            let mut stream = response.into_inner();
            loop {
                match stream.message().await {
                    Ok(Some(())) => continue,
                    Ok(None) => panic!("the stream ended without an error"),
                    Err(status) => break status,
                }
            }
        }
    };
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let (why, metadata) = reason(&status);
    assert_eq!(why, "MESSAGE_TOO_LARGE", "{status:?}");
    assert_eq!(metadata["limit"], "JOB_PAYLOAD_MAX_BYTES");
    assert_eq!(metadata["max_bytes"], cap.to_string());
    app.stop().await;
}

/// A payload of `count` one-key objects: `{"a":[{"k":0},…]}`, 8 bytes of
/// JSON and 20 of protobuf each, and a tree node apiece once decoded.
fn objects(count: usize) -> serde_json::Value {
    serde_json::json!({ "a": vec![serde_json::json!({"k": 0}); count] })
}

#[tokio::test]
async fn a_payload_too_large_as_json_is_refused_by_name_before_it_is_decoded() {
    let app = spawn().await;
    let token = app.admin_token().await;
    // Under the message cap, over twice the JSON limit: decoding it would
    // build some 40,000 tree nodes before the JSON check could refuse it.
    let request = new_job("objects.many", objects(20_000));
    let mut body = request.encode_to_vec();
    assert!(body.len() < CREATE_JOB_CAP);
    // Then bytes that are not protobuf. Decoding would have failed on them
    // (MALFORMED_MESSAGE) after building the tree; the refusal names the
    // payload instead, so it came from the look at the bytes, before any
    // decoding.
    body.extend_from_slice(&[0xff; 16]);
    let status = refused(
        app.channel().await,
        &token,
        "/automation.v1.JobService/CreateJob",
        body,
    )
    .await;
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let (why, metadata) = reason(&status);
    assert_eq!(why, "INVALID_FIELD", "{status:?}");
    assert_eq!(metadata["field"], "payload");
    assert_eq!(
        status.message(),
        format!("payload: is 160007 bytes as JSON; at most {PAYLOAD_MAX} are accepted")
    );

    // In a batch, the job is named.
    let batch = pb::BatchCreateJobsRequest {
        requests: vec![
            new_job("objects.few", objects(10)),
            new_job("objects.many", objects(20_000)),
        ],
    };
    let status = JobServiceClient::new(app.channel().await)
        .batch_create_jobs(authed(&token, batch))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(
        status
            .message()
            .starts_with("requests[1].payload: is 160007 bytes as JSON"),
        "{status:?}"
    );

    // The same objects within the limit are taken, and stored as sent.
    let job = app
        .create_job(&token, new_job("objects.fit", objects(8_000)))
        .await;
    let sent = new_job("objects.fit", objects(8_000)).payload;
    assert_eq!(job.payload, sent, "stored as sent");
    app.stop().await;
}

/// A request body fed by the test, frame by frame.
struct Fed(tokio::sync::mpsc::Receiver<Bytes>);

impl http_body::Body for Fed {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Status>>> {
        self.0
            .poll_recv(cx)
            .map(|data| data.map(|data| Ok(http_body::Frame::data(data))))
    }
}

/// Starts a CreateJob whose message claims `len` bytes and sends only the
/// length prefix; the call stays open until the returned sender is dropped.
fn stalled_create_job(channel: Channel, token: &str, len: u32) -> tokio::sync::mpsc::Sender<Bytes> {
    use tower::ServiceExt as _;
    let (feed, fed) = tokio::sync::mpsc::channel(4);
    let mut prefix = vec![0];
    prefix.extend_from_slice(&len.to_be_bytes());
    feed.try_send(Bytes::from(prefix))
        .expect("room for the prefix");
    let request = http::Request::builder()
        .method("POST")
        .uri("/automation.v1.JobService/CreateJob")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("authorization", format!("Bearer {token}"))
        .body(tonic::body::Body::new(Fed(fed)))
        .expect("request");
    tokio::spawn(async move {
        let _ = channel.oneshot(request).await;
    });
    feed
}

fn tiny_budget() -> BudgetSettings {
    BudgetSettings {
        // An eighth (128 KiB) to receive messages, the rest to handle them.
        total_bytes: 1024 * 1024,
        wait: Duration::from_millis(200),
        receive_timeout: Duration::from_secs(60),
    }
}

#[tokio::test]
async fn the_request_budget_refuses_with_limit_exceeded_when_it_is_spent() {
    let mut options = TestOptions::default();
    options.jobs.payload_max_bytes = PAYLOAD_MAX;
    options.server.request_budget = tiny_budget();
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    // A legal job of 60 KiB: it needs room to be received.
    let job = || {
        new_job(
            "budget.text",
            serde_json::json!({ "s": "x".repeat(60 * 1024) }),
        )
    };
    app.create_job(&token, job()).await;

    // A caller announces 120 KiB and stalls: the room to receive it is kept
    // for it, and the next large request finds none in time.
    let stalled = stalled_create_job(app.channel().await, &token, 120 * 1024);
    let mut client = JobServiceClient::new(app.channel().await);
    let mut status = None;
    for _ in 0..100 {
        match client.create_job(authed(&token, job())).await {
            // The stalled call's reservation is not in place yet.
            Ok(_) => tokio::task::yield_now().await,
            Err(refusal) => {
                status = Some(refusal);
                break;
            }
        }
    }
    let status = status.expect("refused once the budget is spent");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    let (why, metadata) = reason(&status);
    assert_eq!(why, "LIMIT_EXCEEDED", "{status:?}");
    assert_eq!(metadata["limit"], "REQUEST_MEMORY_BUDGET_BYTES");
    assert!(metadata.contains_key("retry_after_ms"), "{metadata:?}");

    // Small requests of other methods are not held up.
    JobServiceClient::new(app.channel().await)
        .list_jobs(authed(&token, pb::ListJobsRequest::default()))
        .await
        .expect("a small call");

    // The stalled call ends: its room comes back, and large requests work
    // again.
    drop(stalled);
    let mut created = false;
    for _ in 0..100 {
        if client.create_job(authed(&token, job())).await.is_ok() {
            created = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(created, "the budget came back");
    app.stop().await;
}

#[tokio::test]
async fn a_request_that_could_never_fit_the_budget_is_refused_at_once() {
    let mut options = TestOptions::default();
    options.jobs.payload_max_bytes = PAYLOAD_MAX;
    options.server.request_budget = tiny_budget();
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    // Within the JSON limit (56 KB), but 7,000 objects take tens of MB to
    // decode and handle: more than this server's whole budget.
    let status = JobServiceClient::new(app.channel().await)
        .create_job(authed(&token, new_job("objects.costly", objects(7_000))))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    let (why, metadata) = reason(&status);
    assert_eq!(why, "INVALID_FIELD", "{status:?}");
    assert_eq!(metadata["field"], "payload");
    assert!(
        status.message().contains("REQUEST_MEMORY_BUDGET_BYTES"),
        "{status:?}"
    );
    // What fits is taken.
    app.create_job(&token, new_job("objects.cheap", objects(50)))
        .await;
    app.stop().await;
}
