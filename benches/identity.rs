//! Latency and throughput of the identity hot paths, over loopback gRPC
//! against the same throwaway PostgreSQL the tests use:
//! - authorized reads (`GetUser`) at 16 connections × 32 concurrent streams,
//!   driven by h2load (when installed, as the issue measured) and by tonic
//!   clients in this process, printed beside PostgreSQL's own `pgbench -S -M
//!   prepared -c16 -j2 -T10` on the same cluster in the same run, with their
//!   ratio (the target is ≥ 0.5), the floor of each client (grpc.health
//!   Check: no auth, no database) and the database round trips per call;
//!   with h2load also on a second replica whose account cache is off (one
//!   statement per call), and the gRPC codes h2load's calls were answered
//!   with (h2load counts HTTP responses, not gRPC statuses);
//! - an authorized call (`GetCurrentUser`): JWT check, the caller (cached
//!   per replica) and the account read;
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

use std::{
    collections::BTreeMap,
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use automation_control_plane::proto::automation_v1 as pb;
use common::{AuthServiceClient, TestApp, UserServiceClient, authed};
use futures::future::join_all;
use tonic::transport::Channel;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

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

/// PostgreSQL's own read rate on the tests' cluster: `pgbench -S -M
/// prepared -c16 -j2 -T10` on a database of its own (scale 10). `None` when
/// pgbench is not installed.
async fn pgbench_select_tps() -> Option<f64> {
    if Command::new("pgbench").arg("--version").output().is_err() {
        println!("pgbench not found (Debian: postgresql-client): no reference figure");
        return None;
    }
    let db = common::TestServer::get().await.create_database(false).await;
    let url = db.url();
    let run = |args: &[&str]| {
        let output = Command::new("pgbench")
            .args(args)
            .arg(&url)
            .output()
            .expect("pgbench runs");
        assert!(
            output.status.success(),
            "pgbench {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    run(&["-i", "-s", "10", "-q"]);
    let report = run(&["-S", "-M", "prepared", "-c16", "-j2", "-T10"]);
    // "tps = 49912.3 (without initial connection time)"
    report
        .lines()
        .find(|l| l.starts_with("tps = ") && l.contains("without initial connection"))
        .and_then(|l| l.split_whitespace().nth(2))
        .and_then(|tps| tps.parse().ok())
}

/// Calls per second of h2load (the client: nghttp2's C load
/// generator, a process of its own) at 16 connections × 32 streams for 10 s
/// on `path`, posting the gRPC frame of `message`; `None` when h2load is not
/// installed (Debian: nghttp2-client).
async fn h2load_rate(
    app: &TestApp,
    path: &str,
    token: Option<&str>,
    message: &[u8],
) -> Option<f64> {
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(message.len() as u32).to_be_bytes());
    frame.extend_from_slice(message);
    let body = std::env::temp_dir().join(format!("identity-bench-{}.bin", std::process::id()));
    std::fs::write(&body, &frame).expect("body file");
    let mut command = tokio::process::Command::new("h2load");
    command
        .args(["-c16", "-m32", "-t1", "-D", "10", "--warm-up-time=1"])
        .arg("-d")
        .arg(&body)
        .args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
    if let Some(token) = token {
        command
            .arg("-H")
            .arg(format!("authorization: Bearer {token}"));
    }
    let output = command
        .arg(format!("http://{}{path}", app.addr))
        .output()
        .await
        .ok()?;
    let _ = std::fs::remove_file(&body);
    let report = String::from_utf8_lossy(&output.stdout);
    // "finished in 10.00s, 23456.70 req/s, 3.40MB/s"
    report
        .lines()
        .find(|l| l.starts_with("finished in"))
        .and_then(|l| l.split(", ").nth(1))
        .and_then(|r| r.trim_end_matches(" req/s").parse().ok())
}

/// Calls per second for `duration` over `connections` HTTP/2 connections
/// with `streams` calls in flight on each (h2load's -c/-m); `call` makes
/// one call on a channel.
async fn rate<F, Fut>(
    app: &TestApp,
    connections: usize,
    streams: usize,
    duration: Duration,
    call: F,
) -> Rate
where
    F: Fn(Channel) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    let calls = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let channel = app.channel().await;
        for _ in 0..streams {
            let (channel, call) = (channel.clone(), call.clone());
            let (calls, stop) = (calls.clone(), stop.clone());
            tasks.push(tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    call(channel.clone()).await;
                    calls.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    // Warm up (connections, prepared statements, the caller cache), then
    // count.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = calls.load(Ordering::Relaxed);
    let started = Instant::now();
    tokio::time::sleep(duration).await;
    let counted = calls.load(Ordering::Relaxed) - before;
    let elapsed = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    join_all(tasks).await;
    Rate {
        per_second: counted as f64 / elapsed.as_secs_f64(),
        calls: calls.load(Ordering::Relaxed),
    }
}

/// What [`rate`] measured.
struct Rate {
    /// Calls per second, after the warm-up.
    per_second: f64,
    /// Every call made, warm-up included.
    calls: usize,
}

/// `GetUser` calls answered so far by this process's servers, by gRPC code
/// (the RPC layer's `grpc_server_handled_total`).
fn get_user_answers() -> BTreeMap<String, f64> {
    let mut codes = BTreeMap::new();
    let Some(handle) = automation_control_plane::telemetry::install() else {
        return codes;
    };
    for line in handle.render().lines() {
        if !line.starts_with("grpc_server_handled_total{")
            || !line.contains("grpc_method=\"GetUser\"")
        {
            continue;
        }
        let code = line
            .split("grpc_code=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default();
        let n: f64 = line
            .rsplit(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0.0);
        *codes.entry(code.to_owned()).or_default() += n;
    }
    codes
}

/// What `GetUser` answered between two [`get_user_answers`]: `code count`
/// for each code.
fn answered(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> String {
    after
        .iter()
        .map(|(code, n)| (code, n - before.get(code).copied().unwrap_or(0.0)))
        .filter(|(_, n)| *n > 0.0)
        .map(|(code, n)| format!("{code} {n:.0}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Transactions committed in the app's database so far.
async fn transactions(app: &TestApp) -> i64 {
    use diesel_async::RunQueryDsl as _;
    #[derive(diesel::QueryableByName)]
    struct Count {
        #[diesel(sql_type = diesel::sql_types::BigInt)]
        n: i64,
    }
    let mut conn = app.pool.get().await.expect("connection");
    diesel::sql_query(
        "SELECT xact_commit AS n FROM pg_stat_database WHERE datname = current_database()",
    )
    .get_result::<Count>(&mut conn)
    .await
    .expect("stats")
    .n
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let reference = pgbench_select_tps().await;
    // The service's default pool (DB_POOL_SIZE), as pgbench's 16 clients;
    // BENCH_POOL_SIZE tries another.
    let pool_size = std::env::var("BENCH_POOL_SIZE")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(16);
    let app = TestApp::spawn_with(common::TestOptions {
        pool_size,
        ..Default::default()
    })
    .await;
    let token = app.admin_token().await;
    let channel = app.channel().await;
    for i in 0..60 {
        app.user_with_roles(&format!("bench-user-{i:02}"), &["viewer"])
            .await;
    }
    let target = app.current_user(&token).await.id;
    let transactions_before = transactions(&app).await;
    let get_user = {
        let (token, target) = (token.clone(), target.clone());
        rate(&app, 16, 32, Duration::from_secs(10), move |channel| {
            let request = authed(&token, pb::GetUserRequest { id: target.clone() });
            async move {
                UserServiceClient::new(channel)
                    .get_user(request)
                    .await
                    .expect("GetUser");
            }
        })
        .await
    };
    // Statement-level transactions the server ran per call: round trips.
    // (PostgreSQL publishes these counters within a second or so.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let per_call = (transactions(&app).await - transactions_before) as f64 / get_user.calls as f64;
    let get_user = get_user.per_second;
    println!("GetUser: {per_call:.2} database round trips per call (warm-up included)");
    // The floor of this harness: the same client and server with no
    // authorization and no database (grpc.health Check).
    let health = rate(&app, 16, 32, Duration::from_secs(5), |channel| async move {
        HealthClient::new(channel)
            .check(HealthCheckRequest::default())
            .await
            .expect("Check");
    })
    .await
    .per_second;
    println!(
        "grpc.health Check (no auth, no database) 16 conn x 32 streams: {health:>8.0} calls/s"
    );
    let rate = get_user;
    // The same with h2load as the client, as the issue measured; the round
    // trips per call show that its calls were authorized (a refused call
    // reads nothing).
    let before = transactions(&app).await;
    let answers_before = get_user_answers();
    let request = prost::Message::encode_to_vec(&pb::GetUserRequest { id: target.clone() });
    let ratio = |rate: f64| {
        reference
            .map(|tps| format!("   ratio to pgbench -S {:.2}", rate / tps))
            .unwrap_or_default()
    };
    let path = "/automation.v1.UserService/GetUser";
    if let Some(h2load) = h2load_rate(&app, path, Some(&token), &request).await {
        let answers = answered(&answers_before, &get_user_answers());
        let health = h2load_rate(&app, "/grpc.health.v1.Health/Check", None, &[])
            .await
            .unwrap_or_default();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let per_call = (transactions(&app).await - before) as f64 / (h2load * 11.0);
        println!(
            "h2load -c16 -m32: GetUser (authorized) {h2load:>8.0} calls/s ({per_call:.2} round \
             trips per call; answered: {answers}){}   grpc.health Check {health:>8.0} calls/s",
            ratio(h2load),
        );
        // The same on a replica whose account cache is off: one statement
        // (the account joined with its roles) per call, as before.
        let uncached = app
            .replica(common::TestOptions {
                pool_size,
                auth: automation_control_plane::config::AuthArgs {
                    account_cache_size: 0,
                    ..common::TestOptions::default().auth
                },
                ..Default::default()
            })
            .await;
        let token = uncached.admin_token().await;
        let answers_before = get_user_answers();
        if let Some(rate) = h2load_rate(&uncached, path, Some(&token), &request).await {
            let answers = answered(&answers_before, &get_user_answers());
            println!(
                "h2load -c16 -m32: GetUser, account cache off (second replica) {rate:>8.0} \
                 calls/s (answered: {answers}){}",
                ratio(rate),
            );
        }
        uncached.stop().await;
    } else {
        println!("h2load not found (Debian: nghttp2-client): GetUser measured with tonic only");
    }
    match reference {
        Some(tps) => println!(
            "GetUser (authorized) 16 conn x 32 streams: {rate:>8.0} calls/s   \
             pgbench -S -M prepared -c16 -j2 -T10: {tps:>8.0} tps   ratio {:.2}",
            rate / tps
        ),
        None => println!("GetUser (authorized) 16 conn x 32 streams: {rate:>8.0} calls/s"),
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
            // A loaded machine can fill the password queue: that answer
            // says when to come back, as a client would.
            loop {
                let answer = client
                    .login(pb::LoginRequest {
                        login: "bench-login".into(),
                        password: "user-password-1".into(),
                    })
                    .await;
                match answer {
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    answer => {
                        answer.expect("login");
                        break;
                    }
                }
            }
        }
    })
    .await
    .print();
    app.stop().await;
}
