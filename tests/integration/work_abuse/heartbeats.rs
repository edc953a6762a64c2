//! Heartbeats, from both sides: a worker that keeps the server busy with
//! them must still be re-checked, and one that heartbeats each job on its
//! own must keep every one of them.

use std::time::Duration;

use automation_control_plane::proto::automation_v1::{self as pb, work_request::Kind as Out};
use bytes::{BufMut as _, Bytes};
use prost::Message as _;
use serde_json::json;
use tonic::{
    Code, Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    codegen::http::uri::PathAndQuery,
};

use super::{hello_message, read_to_end};
use crate::common::{TestApp, TestOptions, account, authed, new_job, worker::lease_of};

/// Sends pre-encoded messages: a client whose every message costs the
/// server far more than it costs the client, so that the session always
/// has one ready.
#[derive(Debug, Clone, Copy, Default)]
struct Raw;

struct RawEncoder;

struct ResponseDecoder;

impl Encoder for RawEncoder {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for ResponseDecoder {
    type Item = pb::WorkResponse;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<pb::WorkResponse>, Status> {
        pb::WorkResponse::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}

impl Codec for Raw {
    type Encode = Bytes;
    type Decode = pb::WorkResponse;
    type Encoder = RawEncoder;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

/// A worker that always has a message ready (well within the inbound
/// rate) cannot keep the session from noticing that its key was revoked.
#[tokio::test]
async fn a_busy_worker_with_a_revoked_key_is_still_cut_off() {
    let mut options = TestOptions::default();
    // Re-checked every second.
    options.jobs.lease = Duration::from_secs(3);
    options.jobs.streams.inbound_messages_per_sec = 1_000_000;
    let app = TestApp::spawn_with(options).await;
    let (_, bot) = account(&app, "busy-bot", &["jobs:execute"]).await;
    let mut keys = pb::api_key_service_client::ApiKeyServiceClient::new(app.channel().await);
    let key = keys
        .create_api_key(authed(
            &bot,
            pb::CreateApiKeyRequest {
                user_id: String::new(),
                name: "busy worker".into(),
                permissions: vec!["jobs:execute".into()],
                expire_time: None,
            },
        ))
        .await
        .expect("key")
        .into_inner();
    // Heartbeats naming a thousand leases (none of them held): cheap to
    // send again and again, each one work for the server to read.
    let heartbeat = pb::WorkRequest {
        kind: Some(Out::Heartbeat(pb::WorkerHeartbeat {
            jobs: (0..1_000)
                .map(|_| pb::JobLeaseRef {
                    job_id: uuid::Uuid::now_v7().to_string(),
                    attempt: 1,
                })
                .collect(),
        })),
    };
    let heartbeat = Bytes::from(heartbeat.encode_to_vec());
    let first = Bytes::from(hello_message(1).encode_to_vec());
    let messages =
        futures::stream::iter(std::iter::once(first).chain(std::iter::repeat(heartbeat)));
    let mut grpc = tonic::client::Grpc::new(app.channel().await);
    grpc.ready().await.expect("ready");
    let mut rx = grpc
        .streaming(
            authed(&key.secret, messages),
            PathAndQuery::from_static("/automation.v1.JobService/Work"),
            Raw,
        )
        .await
        .expect("the call opens")
        .into_inner();
    tokio::time::sleep(Duration::from_millis(500)).await;
    keys.revoke_api_key(authed(
        &bot,
        pb::RevokeApiKeyRequest {
            id: key.api_key.expect("key").id,
        },
    ))
    .await
    .expect("revoke");
    let (_, status) = read_to_end(&mut rx).await;
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    app.stop().await;
}

/// An SDK that heartbeats each job on its own, the heartbeats a moment
/// apart, keeps every lease (not only the first one named).
#[tokio::test]
async fn heartbeats_naming_one_job_each_keep_every_lease() {
    let mut options = TestOptions::default();
    // A heartbeat interval of 2/3 s; the server keeps a lease alive itself
    // for 2 s after leasing, so after about 4 s only heartbeats hold one.
    options.jobs.lease = Duration::from_secs(2);
    let app = TestApp::spawn_with(options).await;
    let token = app.admin_token().await;
    let mut worker = app.worker(3).await;
    for i in 0..3 {
        app.create_job(&token, new_job("one.by.one", json!({ "i": i })))
            .await;
    }
    let mut assignments = Vec::new();
    for _ in 0..3 {
        assignments.push(worker.assignment().await);
    }
    // Three leases' worth of time, each job heartbeaten alone.
    for _ in 0..15 {
        for assignment in &assignments {
            worker
                .send(Out::Heartbeat(pb::WorkerHeartbeat {
                    jobs: vec![lease_of(assignment)],
                }))
                .await;
        }
        // No cancellation: every lease is still this worker's.
        worker.silent_for(Duration::from_millis(400)).await;
    }
    for assignment in &assignments {
        worker.complete(assignment, json!(1)).await;
        let ack = worker.ack().await;
        assert!(ack.accepted, "{ack:?}");
    }
    app.stop().await;
}
