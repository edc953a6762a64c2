//! A worker built with the SDK: runs `example.echo` and `example.sleep` jobs
//! (which reports its progress) until Ctrl-C, then finishes what it holds and
//! exits.
//!
//! ```sh
//! API_KEY=acp_… cargo run --example worker
//! # elsewhere:
//! grpcurl -plaintext -H "authorization: Bearer $TOKEN" \
//!   -d '{"name":"example.sleep","payload":{"seconds":2}}' \
//!   127.0.0.1:50051 automation.v1.JobService/CreateJob
//! ```
//!
//! `CONTROL_PLANE_URL` (default `http://127.0.0.1:50051`) names the server;
//! `API_KEY` is a key holding `jobs:execute` (ApiKeyService/CreateApiKey).
//! Over TLS (`https://…`): `CONTROL_PLANE_CA_FILE` is the CA to trust (else
//! the system's roots); `CONTROL_PLANE_CLIENT_CERT_FILE` and
//! `CONTROL_PLANE_CLIENT_KEY_FILE` are presented to a server that requires
//! mutual TLS.

use std::time::Duration;

use automation_worker::{JobError, Progress, Worker};
use serde_json::json;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let url =
        std::env::var("CONTROL_PLANE_URL").unwrap_or_else(|_| "http://127.0.0.1:50051".into());
    let key = std::env::var("API_KEY").map_err(|_| "set API_KEY to a key holding jobs:execute")?;
    let mut builder = Worker::builder(url, key);
    if let Ok(path) = std::env::var("CONTROL_PLANE_CA_FILE") {
        builder = builder.ca_certificate_pem(tokio::fs::read(&path).await?);
    }
    if let (Ok(cert), Ok(key)) = (
        std::env::var("CONTROL_PLANE_CLIENT_CERT_FILE"),
        std::env::var("CONTROL_PLANE_CLIENT_KEY_FILE"),
    ) {
        builder =
            builder.client_identity_pem(tokio::fs::read(cert).await?, tokio::fs::read(key).await?);
    }
    let worker = builder
        .worker_id("example-worker")
        .concurrency(4)
        .handle("example.echo", |job| async move { Ok(job.payload) })
        .handle("example.sleep", |job| async move {
            let seconds = job.payload["seconds"].as_f64().unwrap_or(1.0);
            if !(0.0..=3600.0).contains(&seconds) {
                return Err(JobError::permanent("seconds must be within 0..3600")
                    .with_details(json!({ "seconds": seconds })));
            }
            // Sleeps in tenths, reporting progress after each: GetJob and
            // WatchJob show it (the SDK sends only the latest, never
            // waiting; the server stores it at most once a second).
            let step = Duration::from_secs_f64(seconds / 10.0);
            for tenth in 1..=10 {
                tokio::select! {
                    () = tokio::time::sleep(step) => {}
                    // Cancelled (CancelJob, lease lost, module removed): stop.
                    () = job.cancelled() => return Err(JobError::retry("cancelled")),
                }
                job.report_progress(
                    Progress::new()
                        .percent(f64::from(tenth) * 10.0)
                        .message(format!(
                            "slept {:.1} of {seconds} s",
                            seconds * f64::from(tenth) / 10.0
                        ))
                        .details(json!({ "tenths": tenth })),
                );
            }
            Ok(json!({ "slept": seconds, "attempt": job.attempt }))
        })
        .build();
    worker
        .run(async {
            let _ = tokio::signal::ctrl_c().await;
            tracing::info!("Ctrl-C: finishing held jobs");
        })
        .await?;
    Ok(())
}
