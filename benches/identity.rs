//! Latency and throughput of the identity hot paths, over loopback gRPC
//! against the same throwaway PostgreSQL the tests use:
//! - an authorized call (`GetCurrentUser`): JWT check plus the per-call
//!   session/permission query;
//! - `ListUsers` (a page of 50 with roles, two queries);
//! - `Login` at bcrypt cost 12 (the production default).
//!
//! Run: `cargo bench --bench identity`. Results go in BENCHMARKS.md.

#[allow(
    dead_code,
    unused_imports,
    reason = "a bench uses a part of the tests' harness"
)]
#[path = "../tests/integration/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use automation_control_plane::proto::automation_v1 as pb;
use common::{AuthServiceClient, TestApp, UserServiceClient, authed};
use futures::future::join_all;

struct Report {
    name: &'static str,
    calls: usize,
    concurrency: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Report {
    fn print(mut self) {
        self.latencies.sort();
        let pct = |p: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
            self.latencies[i].as_secs_f64() * 1000.0
        };
        println!(
            "{:<32} calls {:>6}  concurrency {:>3}  {:>8.0} calls/s  p50 {:>7.2} ms  p99 {:>7.2} ms",
            self.name,
            self.calls,
            self.concurrency,
            self.calls as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
        );
    }
}

/// Runs `calls` calls of `call`, `concurrency` at a time.
async fn measure<F, Fut>(name: &'static str, calls: usize, concurrency: usize, call: F) -> Report
where
    F: Fn() -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let per_worker = calls / concurrency;
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let call = call.clone();
        tokio::spawn(async move {
            let mut latencies = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let t = Instant::now();
                call().await;
                latencies.push(t.elapsed());
            }
            latencies
        })
    });
    let latencies: Vec<Duration> = join_all(workers)
        .await
        .into_iter()
        .flat_map(|r| r.expect("worker"))
        .collect();
    Report {
        name,
        calls: latencies.len(),
        concurrency,
        elapsed: started.elapsed(),
        latencies,
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let app = TestApp::spawn().await;
    let token = app.admin_token().await;
    let channel = app.channel().await;
    for i in 0..60 {
        app.user_with_roles(&format!("bench-user-{i:02}"), &["viewer"])
            .await;
    }

    for concurrency in [1, 16] {
        let (channel, token) = (channel.clone(), token.clone());
        measure(
            "GetCurrentUser (authorized)",
            4000,
            concurrency,
            move || {
                let mut client = AuthServiceClient::new(channel.clone());
                let token = token.clone();
                async move {
                    client
                        .get_current_user(authed(&token, pb::GetCurrentUserRequest {}))
                        .await
                        .expect("call");
                }
            },
        )
        .await
        .print();
    }

    {
        let (channel, token) = (channel.clone(), token.clone());
        measure("ListUsers (page of 50)", 2000, 16, move || {
            let mut client = UserServiceClient::new(channel.clone());
            let token = token.clone();
            async move {
                let page = client
                    .list_users(authed(&token, pb::ListUsersRequest::default()))
                    .await
                    .expect("call")
                    .into_inner();
                assert_eq!(page.users.len(), 50);
            }
        })
        .await
        .print();
    }
    app.stop().await;

    // Logins at the production bcrypt cost.
    let app = TestApp::spawn_with(common::TestOptions {
        passwords: automation_control_plane::config::PasswordArgs {
            bcrypt_cost: 12,
            ..common::TestOptions::default().passwords
        },
        ..Default::default()
    })
    .await;
    // Created through the API, so hashed at the server's cost.
    app.user_with_roles("bench-login", &["viewer"]).await;
    let channel = app.channel().await;
    measure("Login (bcrypt cost 12)", 32, 8, move || {
        let mut client = AuthServiceClient::new(channel.clone());
        async move {
            client
                .login(pb::LoginRequest {
                    login: "bench-login".into(),
                    password: "user-password-1".into(),
                })
                .await
                .expect("login");
        }
    })
    .await
    .print();
    app.stop().await;
}
