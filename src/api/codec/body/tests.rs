//! The body's framing, looking and budgeting, fed chunk by chunk.

use std::time::Duration;

use super::*;
use crate::{
    api::codec::budget::BudgetSettings, proto::automation_v1 as pb, wire::json::json_to_struct,
};

fn framed(len: u32) -> Vec<u8> {
    let mut message = vec![0];
    message.extend_from_slice(&len.to_be_bytes());
    message.extend(std::iter::repeat_n(7u8, len as usize));
    message
}

fn framed_message(message: &impl prost::Message) -> Vec<u8> {
    let bytes = message.encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    framed.extend_from_slice(&bytes);
    framed
}

/// Data frames, one per chunk.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

/// Feeds `chunks` through a body capped at `max_bytes` and checked as
/// `check` says; what came out and how it ended.
async fn through_checked(
    chunks: Vec<Vec<u8>>,
    max_bytes: usize,
    check: Option<Check>,
) -> (Vec<u8>, Option<Status>) {
    let inner = Body::new(Chunks(chunks.into_iter().map(Bytes::from).collect()));
    let mut body = CheckedBody::new(inner, MessageCap::fixed(max_bytes), check);
    let mut out = Vec::new();
    loop {
        let frame =
            std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx)).await;
        match frame {
            Some(Ok(frame)) => out.extend_from_slice(&frame.into_data().unwrap()),
            Some(Err(status)) => return (out, Some(status)),
            None => return (out, None),
        }
    }
}

async fn through(chunks: Vec<Vec<u8>>, max_bytes: usize) -> (Vec<u8>, Option<Status>) {
    through_checked(chunks, max_bytes, None).await
}

fn check(shape: Shape, budget: &RequestBudget, unary: bool) -> Option<Check> {
    Some(Check {
        shape,
        limits: JsonLimits {
            payload_max_bytes: 1000,
        },
        budget: budget.clone(),
        hold: unary.then(Hold::default),
    })
}

fn budget(total_bytes: usize) -> RequestBudget {
    RequestBudget::new(BudgetSettings {
        total_bytes,
        wait: Duration::from_millis(50),
        receive_timeout: Duration::from_millis(200),
    })
}

#[tokio::test]
async fn messages_within_the_cap_pass_whole_however_they_are_split() {
    let stream: Vec<u8> = [framed(10), framed(0), framed(100)].concat();
    for split in [1, 2, 3, 4, 5, 6, 7, 50, stream.len()] {
        let chunks: Vec<Vec<u8>> = stream.chunks(split).map(<[u8]>::to_vec).collect();
        let (out, refusal) = through(chunks, 100).await;
        assert!(refusal.is_none(), "split {split}: {refusal:?}");
        assert_eq!(out, stream, "split {split}");
    }
}

#[tokio::test]
async fn an_oversized_message_ends_the_body_after_the_ones_before_it() {
    let good = framed(10);
    let stream: Vec<u8> = [good.clone(), framed(101)].concat();
    for split in [1, 3, 12, 15, 16, stream.len()] {
        let chunks: Vec<Vec<u8>> = stream.chunks(split).map(<[u8]>::to_vec).collect();
        let (out, refusal) = through(chunks, 100).await;
        let refusal = refusal.expect("refused");
        assert_eq!(refusal.code(), tonic::Code::InvalidArgument);
        assert!(refusal.message().contains("101 bytes"), "{refusal:?}");
        // Everything before the oversized message's prefix went through,
        // and at most the part of its prefix that shared a frame with it.
        assert!(out.starts_with(&good), "split {split}");
        assert!(out.len() < good.len() + 5, "split {split}: {}", out.len());
    }
}

fn report(result: serde_json::Value) -> pb::WorkRequest {
    pb::WorkRequest {
        kind: Some(pb::work_request::Kind::Completion(pb::JobCompletion {
            lease: None,
            result: Some(crate::wire::json::json_to_value(result)),
        })),
    }
}

#[tokio::test]
async fn checked_messages_pass_whole_however_they_are_split_and_shares_come_back() {
    let budget = budget(64 << 20);
    let small = framed_message(&report(serde_json::json!({"ok": true})));
    let costly = framed_message(&report(serde_json::json!({
        "a": vec![serde_json::json!({"k": 0}); 1000]
    })));
    let stream: Vec<u8> = [small.clone(), costly, small].concat();
    for split in [1, 4, 5, 6, 7, 50, 4096, stream.len()] {
        let chunks: Vec<Vec<u8>> = stream.chunks(split).map(<[u8]>::to_vec).collect();
        let (out, refusal) =
            through_checked(chunks, 1 << 20, check(Shape::Work, &budget, false)).await;
        assert!(refusal.is_none(), "split {split}: {refusal:?}");
        assert_eq!(out, stream, "split {split}");
        assert_eq!(budget.free(), 64 << 20, "split {split}");
    }
    let job = pb::CreateJobRequest {
        name: "x.y".into(),
        payload: Some(json_to_struct(serde_json::json!({"k": "v"}))),
        ..Default::default()
    };
    let unary = framed_message(&job);
    for split in [1, 5, 6, unary.len()] {
        let chunks: Vec<Vec<u8>> = unary.chunks(split).map(<[u8]>::to_vec).collect();
        let check = check(Shape::CreateJob, &budget, true);
        let hold = check.as_ref().and_then(|c| c.hold.clone()).unwrap();
        let (out, refusal) = through_checked(chunks, 1 << 20, check).await;
        assert!(refusal.is_none(), "split {split}: {refusal:?}");
        assert_eq!(out, unary, "split {split}");
        // The call keeps its share until its response is gone.
        assert!(budget.free() < 64 << 20, "split {split}");
        drop(hold);
        assert_eq!(budget.free(), 64 << 20, "split {split}");
    }
}

#[tokio::test]
async fn a_payload_too_large_as_json_is_refused_by_name_before_it_is_passed_on() {
    let budget = budget(64 << 20);
    let job = pb::CreateJobRequest {
        name: "x.y".into(),
        payload: Some(json_to_struct(serde_json::json!({ "s": "x".repeat(1000) }))),
        ..Default::default()
    };
    let (out, refusal) = through_checked(
        vec![framed_message(&job)],
        1 << 20,
        check(Shape::CreateJob, &budget, true),
    )
    .await;
    assert!(out.is_empty(), "nothing of it went on to be decoded");
    let refusal = refusal.expect("refused");
    assert_eq!(refusal.code(), tonic::Code::InvalidArgument);
    assert!(
        refusal.message().starts_with("payload: is 1008 bytes"),
        "{refusal:?}"
    );
    assert_eq!(budget.free(), 64 << 20);
}

/// A body that sends `data` and then never ends.
struct Stalled(Option<Bytes>);

impl http_body::Body for Stalled {
    type Data = Bytes;
    type Error = Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Status>>> {
        match self.0.take() {
            Some(data) => Poll::Ready(Some(Ok(Frame::data(data)))),
            None => Poll::Pending,
        }
    }
}

#[tokio::test]
async fn a_reservation_whose_message_never_comes_is_given_back() {
    let budget = budget(8 << 20);
    let mut started = vec![0, 0, 0, 0x10, 0];
    started.extend_from_slice(&[0x0a, 0x01]);
    let inner = Body::new(Stalled(Some(Bytes::from(started))));
    let mut body = CheckedBody::new(
        inner,
        MessageCap::fixed(1 << 20),
        check(Shape::CreateJob, &budget, true),
    );
    let frame = std::future::poll_fn(|cx| http_body::Body::poll_frame(Pin::new(&mut body), cx));
    let refusal = tokio::time::timeout(Duration::from_secs(5), frame)
        .await
        .expect("not stuck")
        .expect("a frame")
        .expect_err("refused");
    assert_eq!(
        refusal.code(),
        tonic::Code::ResourceExhausted,
        "{refusal:?}"
    );
    assert_eq!(budget.free(), 8 << 20);
}
