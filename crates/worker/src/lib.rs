//! A worker SDK: run jobs of this control plane from Rust with a handful of
//! lines. It holds one `Work` stream, says hello with the job types it has
//! handlers for, runs up to `concurrency` jobs at once, heartbeats for them,
//! reports each result exactly once, tells a handler when its job is
//! cancelled (a token it can await), reconnects with exponential backoff and
//! jitter when the stream or the server goes away, and drains on shutdown:
//! it takes nothing new and finishes what it holds.
//!
//! ```no_run
//! use automation_worker::{JobError, Worker};
//!
//! # async fn run() -> Result<(), automation_worker::WorkerError> {
//! let worker = Worker::builder("http://127.0.0.1:50051", std::env::var("API_KEY").unwrap())
//!     .concurrency(8)
//!     .handle("backup.run", |job| async move {
//!         let target = job.payload["target"].as_str().unwrap_or("db").to_owned();
//!         job.progress(0.0, format!("backing up {target}"));
//!         tokio::select! {
//!             () = job.cancelled() => Err(JobError::permanent("cancelled")),
//!             () = tokio::time::sleep(std::time::Duration::from_secs(1)) => {
//!                 Ok(serde_json::json!({ "backed_up": target }))
//!             }
//!         }
//!     })
//!     .build();
//! worker.run(async { tokio::signal::ctrl_c().await.ok(); }).await
//! # }
//! ```
//!
//! A handler reports how far it has got with [`Job::progress`] (coalesced:
//! only the latest report is sent, never waiting).
//!
//! Over TLS, give an `https://` endpoint; the server's certificate is checked
//! against the system's roots, or against [`WorkerBuilder::ca_certificate_pem`]
//! when given, and [`WorkerBuilder::client_identity_pem`] presents a client
//! certificate to a server that requires mutual TLS.

mod progress;
mod session;

pub use progress::Progress;

use std::{collections::HashMap, future::Future, pin::Pin, sync::Arc, time::Duration};

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// What a handler returns for a job it could not do.
#[derive(Debug, Clone, PartialEq)]
pub struct JobError {
    /// For people.
    pub message: String,
    /// Free-form details (a JSON object), kept with the job's error.
    pub details: serde_json::Value,
    /// Fail at once rather than retry.
    pub permanent: bool,
}

impl JobError {
    /// A failure the queue retries (with backoff) while attempts remain.
    pub fn retry(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            details: serde_json::json!({}),
            permanent: false,
        }
    }

    /// A failure that fails the job for good.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            permanent: true,
            ..Self::retry(message)
        }
    }

    /// The same error with details.
    pub fn with_details(mut self, details: serde_json::Value) -> Self {
        self.details = details;
        self
    }
}

/// One job, as its handler sees it.
#[derive(Debug, Clone)]
pub struct Job {
    /// The job's id.
    pub id: Uuid,
    /// Its type.
    pub name: String,
    /// Which attempt this is (1 for the first).
    pub attempt: i32,
    /// Its module, if any.
    pub module: Option<String>,
    /// Its input.
    pub payload: serde_json::Value,
    /// The W3C `traceparent` of the call that created the job, if it came
    /// with one: continue that trace while running the job.
    pub traceparent: Option<String>,
    cancel: CancellationToken,
    progress: progress::ProgressSlot,
}

impl Job {
    /// Completes when the job is cancelled (by a caller, because the lease
    /// was lost, or because its module is removed): stop, and return; the
    /// result of a cancelled job is not reported.
    pub async fn cancelled(&self) {
        self.cancel.cancelled().await;
    }

    /// Whether the job was cancelled.
    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Reports how far the job has got: `percent` (0 to 100) and a short
    /// message. Never waits: the latest report is sent in the background
    /// (see [`Job::report_progress`]).
    pub fn progress(&self, percent: f64, message: impl Into<String>) {
        self.report_progress(Progress::new().percent(percent).message(message));
    }

    /// Reports progress, with details if wanted. Never waits and never
    /// fails: only the latest report of the job is kept and sent, a few
    /// times a second at most, and the one still waiting when the handler
    /// returns goes just before its result (so the finished job keeps it).
    /// GetJob and WatchJob show it as the job's `progress`. A report is
    /// bounded to what the server takes first (see [`Progress`]).
    pub fn report_progress(&self, progress: Progress) {
        self.progress.set(progress.bounded());
    }
}

/// The result of a handler.
pub type JobResult = Result<serde_json::Value, JobError>;

type BoxedHandler =
    Arc<dyn Fn(Job) -> Pin<Box<dyn Future<Output = JobResult> + Send>> + Send + Sync>;

/// Why [`Worker::run`] stopped other than by its shutdown.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The endpoint is not a valid URI, or its TLS settings do not apply.
    #[error("invalid endpoint: {0}")]
    Endpoint(String),
    /// The credential or the hello is refused (revoked, expired, lacking
    /// `jobs:execute`, a concurrency above the server's maximum):
    /// reconnecting would not help.
    #[error("the server refused the worker: {0}")]
    Refused(tonic::Status),
    /// No handler was registered: the worker would take jobs it cannot run.
    #[error("a worker needs at least one handler (WorkerBuilder::handle)")]
    NoHandlers,
}

/// How reconnection waits: `base · 2^n`, at most `cap`, with ±50 % jitter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first wait.
    pub base: Duration,
    /// The longest wait.
    pub cap: Duration,
}

impl Backoff {
    fn delay(&self, failures: u32) -> Duration {
        let exponential = self
            .base
            .saturating_mul(2u32.saturating_pow(failures.min(16)))
            .min(self.cap);
        exponential.mul_f64(0.5 + rand::random::<f64>())
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(200),
            cap: Duration::from_secs(30),
        }
    }
}

/// How the worker speaks TLS to an `https://` endpoint.
#[derive(Debug, Clone, Default)]
struct TlsOptions {
    /// PEM CA certificates the server's must chain to (else the system's
    /// roots).
    ca_pem: Option<Vec<u8>>,
    /// PEM client certificate and key, for mutual TLS.
    identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must carry, when not the
    /// endpoint's host.
    server_name: Option<String>,
}

impl TlsOptions {
    fn is_set(&self) -> bool {
        self.ca_pem.is_some() || self.identity.is_some() || self.server_name.is_some()
    }

    /// The endpoint for `url`, with TLS when the URL is `https://`.
    fn endpoint(&self, url: &str) -> Result<tonic::transport::Endpoint, WorkerError> {
        use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};
        let endpoint = Endpoint::from_shared(url.to_owned())
            .map_err(|e| WorkerError::Endpoint(e.to_string()))?;
        if !url.starts_with("https://") {
            if self.is_set() {
                return Err(WorkerError::Endpoint(format!(
                    "{url}: TLS settings need an https:// endpoint"
                )));
            }
            return Ok(endpoint);
        }
        let mut config = match &self.ca_pem {
            Some(pem) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)),
            None => ClientTlsConfig::new().with_native_roots(),
        };
        if let Some((cert, key)) = &self.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        if let Some(name) = &self.server_name {
            config = config.domain_name(name.clone());
        }
        endpoint
            .tls_config(config)
            .map_err(|e| WorkerError::Endpoint(format!("{url}: {e}")))
    }
}

/// Builds a [`Worker`].
pub struct WorkerBuilder {
    tls: TlsOptions,
    endpoint: String,
    credential: String,
    worker_id: String,
    concurrency: i32,
    backoff: Backoff,
    drain_timeout: Duration,
    handlers: HashMap<String, BoxedHandler>,
}

impl WorkerBuilder {
    /// The name the server shows for this worker (default: host name and
    /// process id).
    pub fn worker_id(mut self, worker_id: impl Into<String>) -> Self {
        self.worker_id = worker_id.into();
        self
    }

    /// Jobs run at once (default 1).
    pub fn concurrency(mut self, concurrency: i32) -> Self {
        self.concurrency = concurrency.max(1);
        self
    }

    /// How reconnection waits.
    pub fn reconnect_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// How long a shutdown waits for running jobs (default 60 s); then
    /// their handlers are cancelled and the jobs released to other workers
    /// (not counted as failures).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// Trusts these PEM CA certificates (instead of the system's roots) for
    /// the server's certificate; the endpoint must be `https://`.
    pub fn ca_certificate_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls.ca_pem = Some(pem.into());
        self
    }

    /// Presents this PEM certificate and key to a server that requires
    /// mutual TLS.
    pub fn client_identity_pem(
        mut self,
        cert: impl Into<Vec<u8>>,
        key: impl Into<Vec<u8>>,
    ) -> Self {
        self.tls.identity = Some((cert.into(), key.into()));
        self
    }

    /// The name the server's certificate must carry, when it is not the
    /// endpoint's host (an address, say).
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.tls.server_name = Some(name.into());
        self
    }

    /// Runs jobs of type `name` with `handler`.
    pub fn handle<F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        F: Fn(Job) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = JobResult> + Send + 'static,
    {
        let handler: BoxedHandler = Arc::new(move |job| Box::pin(handler(job)));
        self.handlers.insert(name.into(), handler);
        self
    }

    /// The worker.
    pub fn build(self) -> Worker {
        Worker {
            tls: self.tls,
            endpoint: self.endpoint,
            credential: self.credential,
            worker_id: self.worker_id,
            concurrency: self.concurrency,
            backoff: self.backoff,
            drain_timeout: self.drain_timeout,
            handlers: Arc::new(self.handlers),
        }
    }
}

/// A worker; [`Worker::run`] runs it.
pub struct Worker {
    tls: TlsOptions,
    endpoint: String,
    credential: String,
    worker_id: String,
    concurrency: i32,
    backoff: Backoff,
    drain_timeout: Duration,
    handlers: Arc<HashMap<String, BoxedHandler>>,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("endpoint", &self.endpoint)
            .field("worker_id", &self.worker_id)
            .field("concurrency", &self.concurrency)
            .field("job_types", &self.handlers.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker of the server at `endpoint` (`http://host:port`, or `https://host:port` for TLS) with
    /// `credential`: an API key (`acp_…`) holding `jobs:execute`, or an
    /// access token.
    pub fn builder(endpoint: impl Into<String>, credential: impl Into<String>) -> WorkerBuilder {
        WorkerBuilder {
            tls: TlsOptions::default(),
            endpoint: endpoint.into(),
            credential: credential.into(),
            worker_id: format!(
                "{}-{}",
                std::env::var("HOSTNAME").unwrap_or_else(|_| "worker".into()),
                std::process::id()
            ),
            concurrency: 1,
            backoff: Backoff::default(),
            drain_timeout: Duration::from_secs(60),
            handlers: HashMap::new(),
        }
    }

    /// Runs until `shutdown` completes (then drains: takes nothing new,
    /// finishes the jobs it holds, and returns) or the credential is
    /// refused. Lost connections and draining servers are reconnected to.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), WorkerError> {
        if self.handlers.is_empty() {
            return Err(WorkerError::NoHandlers);
        }
        let endpoint = self
            .tls
            .endpoint(&self.endpoint)?
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(10));
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        let mut shutdown = std::pin::pin!(shutdown);
        let run = async {
            let mut failures = 0u32;
            loop {
                let started = std::time::Instant::now();
                let connected = tokio::select! {
                    connected = endpoint.connect() => connected,
                    // A blackholed host must not hold up a shutdown.
                    () = stop.cancelled() => return Ok(()),
                };
                let outcome = match connected {
                    Ok(channel) => session::run(&self, channel, &stop).await,
                    Err(error) => {
                        session::Outcome::Lost(tonic::Status::unavailable(error.to_string()))
                    }
                };
                let status = match outcome {
                    session::Outcome::Stopped => return Ok(()),
                    session::Outcome::Refused(status) => return Err(WorkerError::Refused(status)),
                    session::Outcome::Lost(status) => status,
                    session::Outcome::Served => tonic::Status::unavailable("the stream ended"),
                };
                if stop.is_cancelled() {
                    return Ok(());
                }
                // A stream that served for a while starts the backoff over;
                // one that keeps ending quickly (a result the server refuses
                // to decode, say) backs off like a failed connection.
                if started.elapsed() >= Duration::from_secs(30) {
                    failures = 0;
                }
                let delay = self.backoff.delay(failures);
                failures = failures.saturating_add(1);
                tracing::warn!(%status, ?delay, "work stream ended; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return Ok(()),
                }
            }
        };
        let mut run = std::pin::pin!(run);
        tokio::select! {
            result = &mut run => result,
            () = &mut shutdown => {
                stopper.cancel();
                run.await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_with_jitter_around_it() {
        let backoff = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
        };
        for (failures, nominal) in [(0, 100), (1, 200), (3, 800), (4, 1000), (40, 1000)] {
            let nominal = Duration::from_millis(nominal);
            for _ in 0..20 {
                let delay = backoff.delay(failures);
                assert!(
                    delay >= nominal / 2 && delay <= nominal * 3 / 2,
                    "{failures} failures: {delay:?} is not within ±50 % of {nominal:?}"
                );
            }
        }
    }

    #[test]
    fn the_builder_keeps_at_least_one_slot() {
        let worker = Worker::builder("http://127.0.0.1:1", "acp_x")
            .concurrency(0)
            .build();
        assert_eq!(worker.concurrency, 1);
    }
}
