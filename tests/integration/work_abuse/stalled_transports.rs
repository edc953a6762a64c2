//! A stalled stream's transport outlives its session: the session ends,
//! but the stream stays open until its worker reads or resets it. Its place
//! among its caller's streams is held until then.

use std::time::Duration;

use tonic::Code;

use super::{enqueue, hello_message, limit_of, narrow_channel, until_none_running};
use crate::common::{
    TestApp, TestOptions, account,
    worker::{TestWorker, hello, open_raw},
};

#[tokio::test]
async fn a_worker_that_stalls_and_reconnects_cannot_pile_up_streams() {
    let mut options = TestOptions::default();
    options.jobs.lease = Duration::from_secs(60);
    options.jobs.streams.send_timeout = Duration::from_millis(500);
    options.jobs.streams.work_streams_per_caller = 2;
    let app = TestApp::spawn_with(options).await;
    let admin = app.admin_token().await;
    let (_, bot) = account(&app, "staller", &["jobs:execute"]).await;
    // Stalls: never reads, never resets.
    let (stalled_tx, stalled_rx) = open_raw(narrow_channel(&app).await, &bot, hello_message(200))
        .await
        .expect("the call opens");
    enqueue(&app, &admin, "stalled.job", 200).await;
    // The session ends: every job is back.
    until_none_running(&app, Duration::from_secs(20)).await;

    // Its transport is still open: one more stream, not two.
    let channel = app.channel().await;
    let _second = TestWorker::connect(channel.clone(), &bot, hello(1))
        .await
        .expect("within the cap");
    let status = TestWorker::connect(channel.clone(), &bot, hello(1))
        .await
        .err()
        .expect("refused");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_eq!(limit_of(&status), "WORK_STREAMS_PER_CALLER");

    // Once the stalled worker lets go, its place is free again.
    drop((stalled_tx, stalled_rx));
    let mut tries = 0;
    loop {
        match TestWorker::connect(channel.clone(), &bot, hello(1)).await {
            Ok(_) => break,
            Err(status) => {
                assert_eq!(limit_of(&status), "WORK_STREAMS_PER_CALLER");
                tries += 1;
                assert!(tries < 100, "the stalled stream's place is never freed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    app.stop().await;
}
