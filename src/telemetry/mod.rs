//! Metrics and logs: the process-wide Prometheus recorder, the RPC layer
//! (one metric set and one log line per call), the sampler of database and
//! queue statistics, and the log subscriber.
//!
//! The recorder is global to the process (the `metrics` facade has one
//! slot): [`install`] is idempotent, so that several servers in one process
//! (the tests) share it.

pub mod logs;
pub mod names;
pub mod rpc;
pub mod sampler;

use std::sync::OnceLock;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Latency buckets, in seconds: 0.5 ms to 10 s.
const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];
/// Queue waits, in seconds: 10 ms to an hour.
const QUEUE_BUCKETS: &[f64] = &[
    0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];
/// Reports per group commit.
const BATCH_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process (later calls return
/// the same handle) and publishes `build_info`. `None` if another recorder
/// was installed first (metrics then go there, and `/metrics` is empty).
pub fn install() -> Option<PrometheusHandle> {
    HANDLE.get_or_init(build_and_install).clone()
}

fn build_and_install() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets(SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Prefix("queue_job_".into()), QUEUE_BUCKETS))
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(names::REPORTS_PER_BATCH.into()),
                BATCH_BUCKETS,
            )
        });
    let recorder = match builder {
        Ok(builder) => builder.build_recorder(),
        Err(error) => {
            tracing::error!(%error, "cannot build the Prometheus recorder");
            return None;
        }
    };
    let handle = recorder.handle();
    if let Err(error) = metrics::set_global_recorder(recorder) {
        tracing::error!(%error, "another metrics recorder is installed; /metrics stays empty");
        return None;
    }
    metrics::gauge!(
        names::BUILD_INFO,
        "version" => env!("CARGO_PKG_VERSION"),
        "commit" => option_env!("GIT_COMMIT").unwrap_or("unknown"),
    )
    .set(1.0);
    Some(handle)
}
