//! The console's Workers page shows the Work streams of every replica, not
//! only those of the replica the browser reached: each replica publishes its
//! streams, and withdraws them when it stops.

use crate::common;

use std::{net::SocketAddr, time::Duration};

use automation_control_plane::http::HttpListener;
use common::{
    ADMIN_PASSWORD, TestApp, TestOptions,
    browser::{login, request},
    worker::{TestWorker, hello},
};

/// Polls the Workers page until `wanted` says yes about its body (or panics
/// after 20 s: replicas publish every 5 s).
async fn workers_page_until(
    addr: SocketAddr,
    cookie: &str,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = request(addr, "GET", "/console/workers", Some(cookie), None).await;
        assert_eq!(page.status, 200, "{page:?}");
        if wanted(&page.body) {
            return page.body;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: {}",
            page.body
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn the_workers_page_shows_the_streams_of_every_replica() {
    let listener = HttpListener::bind("127.0.0.1:0".parse().expect("address")).expect("bind");
    let addr = listener.local_addr();
    let mut options = TestOptions::default();
    options.server.http_listener = Some(listener);
    let near = TestApp::spawn_with(options).await;
    let far = near.replica(TestOptions::default()).await;

    let token = far.admin_token().await;
    let mut far_hello = hello(3);
    far_hello.worker_id = "far-worker".into();
    far_hello.job_names = vec!["far.job".into()];
    let far_worker = TestWorker::connect(far.channel().await, &token, far_hello)
        .await
        .expect("worker on the other replica");
    let mut near_hello = hello(2);
    near_hello.worker_id = "near-worker".into();
    let near_worker = TestWorker::connect(near.channel().await, &token, near_hello)
        .await
        .expect("worker on this replica");

    let cookie = login(addr, "admin", ADMIN_PASSWORD).await;
    let page = workers_page_until(addr, &cookie, "both workers", |body| {
        body.contains("far-worker") && body.contains("near-worker")
    })
    .await;
    assert!(page.contains("far.job"), "{page}");
    assert!(page.contains("2 Work streams on 2 replicas"), "{page}");
    assert!(page.contains("this replica"), "{page}");

    assert!(page.contains("<td>admin</td>"), "{page}");

    // Someone who may read jobs but not list users sees the workers, not
    // whose accounts they run under.
    common::account(&near, "job-reader", &["jobs:read"]).await;
    let reader = login(addr, "job-reader", "user-password-1").await;
    let seen = workers_page_until(addr, &reader, "the workers, for a job reader", |body| {
        body.contains("far-worker") && body.contains("near-worker")
    })
    .await;
    let admin_id = near.current_user(&token).await.id;
    assert!(seen.contains(&admin_id), "{seen}");
    assert!(!seen.contains("<td>admin</td>"), "{seen}");

    // The other replica stops: its streams leave the page.
    drop(far_worker);
    far.stop().await;
    workers_page_until(addr, &cookie, "the stopped replica's worker gone", |body| {
        !body.contains("far-worker") && body.contains("near-worker")
    })
    .await;
    drop(near_worker);
    near.stop().await;
}
