//! Command line and environment. Every flag has an environment variable of the
//! same meaning; units are in the names (`_ms`, `_secs`).
//!
//! Architecture invariant: configuration is at the bottom of the layers. It
//! parses flags into plain values and imports nothing of the crate; the
//! layer that owns a settings type builds it from these arguments (e.g.
//! `JobSettings::from_args`, `AuthSettings` in `auth`).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};
use ipnet::IpNet;

/// The control plane of the automation platform.
#[derive(Debug, Parser)]
#[command(name = "control-plane", version, about, long_about = None)]
pub struct Cli {
    /// Where the data lives.
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Log lines as `text` (for people) or `json` (one object per line,
    /// for log pipelines).
    #[arg(long, env = "LOG_FORMAT", default_value = "text", global = true,
          value_parser = ["text", "json"])]
    pub log_format: String,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the gRPC API (migrating and seeding an empty database first).
    Serve(Box<ServeArgs>),
    /// Apply pending schema migrations and report applied/pending ones.
    Migrate(MigrateArgs),
    /// Create the default roles and admin user if missing (idempotent).
    Seed(SeedArgs),
    /// Ask a running server's gRPC health service; exit 0 when SERVING
    /// (for container health checks and scripts).
    Health(HealthArgs),
}

/// `health`.
#[derive(Debug, Clone, Args)]
pub struct HealthArgs {
    /// Address of the server to ask.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub addr: String,
    /// Service to ask about; empty means the whole server.
    #[arg(long, default_value = "")]
    pub service: String,
    /// Give up after this many milliseconds.
    #[arg(long, default_value_t = 3_000)]
    pub timeout_ms: u64,
    /// How to reach a server that speaks TLS.
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// A client's TLS: used when the address is `https://…` or a CA file is
/// given.
#[derive(Debug, Clone, Args)]
pub struct ClientTlsArgs {
    /// PEM CA certificates that the server's certificate must chain to
    /// (implies TLS). Unset with an `https://` address: the system's roots.
    #[arg(long, env = "TLS_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Name the server's certificate must carry, when it is not the host of
    /// the address (e.g. asking 127.0.0.1 inside the container).
    #[arg(long, env = "TLS_SERVER_NAME")]
    pub server_name: Option<String>,
    /// PEM certificate presented to a server that requires mutual TLS.
    #[arg(long, env = "TLS_CLIENT_CERT_FILE", requires = "client_key_file")]
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key of --client-cert-file.
    #[arg(long, env = "TLS_CLIENT_KEY_FILE", requires = "client_cert_file")]
    pub client_key_file: Option<PathBuf>,
}

/// Which PostgreSQL to use and how to pool connections to it.
#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// PostgreSQL URL (postgres://user:password@host:port/database). Unset:
    /// start a private cluster from the machine's PostgreSQL binaries, with
    /// its data under --data-dir.
    #[arg(long, env = "DATABASE_URL", global = true, hide_env_values = true)]
    pub database_url: Option<String>,
    /// Directory for the embedded cluster and development secrets.
    #[arg(long, env = "DATA_DIR", default_value = ".data", global = true)]
    pub data_dir: PathBuf,
    /// Port of the embedded cluster on 127.0.0.1 (away from a system
    /// PostgreSQL's 5432); 0 picks a free one.
    #[arg(long, env = "EMBEDDED_PG_PORT", default_value_t = 54329, global = true)]
    pub embedded_pg_port: u16,
    /// Most database connections the pool keeps open.
    #[arg(long, env = "DB_POOL_SIZE", default_value_t = 16, global = true,
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub db_pool_size: u32,
    /// How long a request waits for a database connection before it fails
    /// with UNAVAILABLE, in milliseconds.
    #[arg(
        long,
        env = "DB_ACQUIRE_TIMEOUT_MS",
        default_value_t = 10_000,
        global = true
    )]
    pub db_acquire_timeout_ms: u64,
    /// Longest any one SQL statement may run, in milliseconds.
    #[arg(
        long,
        env = "DB_STATEMENT_TIMEOUT_MS",
        default_value_t = 30_000,
        global = true
    )]
    pub db_statement_timeout_ms: u64,
    /// How DATABASE_URL's connections are pooled on the way to PostgreSQL:
    /// `session` (a direct connection, or PgBouncer's session mode) or
    /// `transaction` (PgBouncer's `pool_mode = transaction`: no prepared
    /// statement or setting outlives a transaction; LISTEN_DATABASE_URL is
    /// then required).
    #[arg(
        long,
        env = "DATABASE_POOL_MODE",
        value_enum,
        default_value_t = DatabasePoolMode::Session,
        global = true
    )]
    pub database_pool_mode: DatabasePoolMode,
    /// A direct PostgreSQL URL (never through a transaction pooler) for what
    /// needs a session of its own: each replica's LISTEN connection and
    /// claim loop, and migrations with their lock. Unset: DATABASE_URL.
    #[arg(
        long,
        env = "LISTEN_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub listen_database_url: Option<String>,
}

/// How the pool's connections reach PostgreSQL (`DATABASE_POOL_MODE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DatabasePoolMode {
    /// Each pooled connection is a PostgreSQL session of its own.
    #[default]
    Session,
    /// Behind PgBouncer in transaction mode: consecutive transactions of one
    /// connection may run on different server sessions.
    Transaction,
}

impl ServeArgs {
    /// The HTTP port's address; `None` when it is off.
    pub fn http_addr(&self) -> Result<Option<SocketAddr>, String> {
        let text = self.http_addr.trim();
        if text.is_empty() || text.eq_ignore_ascii_case("off") {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|e| {
            format!("HTTP_ADDR '{text}' is not an address like 127.0.0.1:9090 (or `off`): {e}")
        })
    }
}

impl DatabaseArgs {
    /// The pool's acquire timeout.
    pub fn acquire_timeout(&self) -> Duration {
        Duration::from_millis(self.db_acquire_timeout_ms)
    }

    /// The statement timeout.
    pub fn statement_timeout(&self) -> Duration {
        Duration::from_millis(self.db_statement_timeout_ms)
    }
}

/// `serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "LISTEN_ADDR", default_value = "127.0.0.1:50051")]
    pub listen_addr: SocketAddr,
    /// Address of the HTTP port serving /health/live, /health/ready and
    /// /metrics; `off` (or empty) disables it.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:9090")]
    pub http_addr: String,
    /// Serve the web console under /console/ on the HTTP port (`on` or
    /// `off`).
    #[arg(long, env = "CONSOLE", default_value = "on", value_parser = parse_on_off)]
    pub console: bool,
    /// How often the metrics that need a database query (jobs by name and
    /// status, table and index statistics, lock waits) are sampled, in
    /// milliseconds.
    #[arg(long, env = "METRICS_SAMPLE_INTERVAL_MS", default_value_t = 15_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub metrics_sample_interval_ms: u64,
    /// How late a schedule's fire time may still be acted on, in
    /// milliseconds; a later one (no server ran, or the schedule's module
    /// was not ENABLED) is missed and follows the schedule's missed-fire
    /// policy.
    #[arg(long, env = "SCHEDULE_MISFIRE_GRACE_MS", default_value_t = 60_000,
          value_parser = clap::value_parser!(u64).range(1_000..=86_400_000))]
    pub schedule_misfire_grace_ms: u64,
    /// Shortest time between two fire times of a schedule's expression, in
    /// seconds: a schedule written with a closer one is refused (every
    /// schedule is a standing rate of job creation).
    #[arg(long, env = "SCHEDULE_MIN_INTERVAL_SECS", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub schedule_min_interval_secs: u64,
    /// Most schedules one account may have created; CreateSchedule past it
    /// is refused (LIMIT_EXCEEDED).
    #[arg(long, env = "SCHEDULES_MAX", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub schedules_max: u64,
    /// Do not apply pending migrations on start.
    #[arg(long, env = "SKIP_MIGRATIONS")]
    pub skip_migrations: bool,
    /// How often the database is probed for the health service, in
    /// milliseconds.
    #[arg(long, env = "HEALTH_CHECK_INTERVAL_MS", default_value_t = 1_000)]
    pub health_check_interval_ms: u64,
    /// After SIGINT/SIGTERM, how long open calls and connections get to
    /// finish before they are closed, in milliseconds. Workers get three
    /// quarters of it to finish or release their jobs.
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 10_000)]
    pub shutdown_grace_ms: u64,
    /// How often the server pings each connection (HTTP/2 PING), in
    /// seconds, so that a worker host that vanished without closing TCP is
    /// noticed.
    #[arg(long, env = "KEEPALIVE_INTERVAL_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub keepalive_interval_secs: u64,
    /// How long a ping may go unanswered before the connection is closed
    /// (and the leases of its streams go back to the queue), in seconds.
    #[arg(long, env = "KEEPALIVE_TIMEOUT_SECS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub keepalive_timeout_secs: u64,
    /// Outer bound on any gRPC message the server accepts, in bytes. Each
    /// method's own cap follows from its largest legal request (CreateJob:
    /// 5.5 × JOB_PAYLOAD_MAX_BYTES + 64 KiB); this lowers the caps above it.
    #[arg(long, env = "GRPC_MAX_MESSAGE_BYTES", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(4096..=1_073_741_824))]
    pub grpc_max_message_bytes: u64,
    /// Largest BatchCreateJobs message, in bytes: the budget of all of a
    /// batch's jobs together (at most 1,000), as sent.
    #[arg(long, env = "JOB_BATCH_MAX_BYTES", default_value_t = 8 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(65_536..=1_073_741_824))]
    pub job_batch_max_bytes: u64,
    /// Memory that requests carrying JSON documents (CreateJob,
    /// BatchCreateJobs, RegisterModule, UpdateModule, large Work reports)
    /// may hold at once on this replica, in bytes, as estimated from each
    /// message before it is decoded; more waits up to 5 s, then is answered
    /// RESOURCE_EXHAUSTED. The default holds one CreateJob of the costliest
    /// 1 MiB payload (~400 MiB).
    #[arg(long, env = "REQUEST_MEMORY_BUDGET_BYTES", default_value_t = 512 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(16_777_216..=1_099_511_627_776))]
    pub request_memory_budget_bytes: u64,
    /// The job queue.
    #[command(flatten)]
    pub jobs: JobArgs,
    /// Seeding an empty database.
    #[command(flatten)]
    pub seed: SeedArgs,
    /// Tokens, passwords and login throttling.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// TLS on the gRPC port.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// How long finished jobs, audit rows and ended sessions are kept.
    #[command(flatten)]
    pub retention: RetentionArgs,
}

/// TLS on the gRPC port.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// PEM certificate chain the server presents (its own certificate
    /// first). Set: gRPC is served over TLS only.
    #[arg(long, env = "TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of TLS_CERT_FILE (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, env = "TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// PEM CA certificates: when set, every client must present a
    /// certificate that chains to one of them (mutual TLS; the token or API
    /// key is still required).
    #[arg(long, env = "TLS_CLIENT_CA_FILE", requires = "tls_cert_file")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// How often the TLS files are re-read, in seconds; changed files are
    /// served to the next connection, open ones keep theirs.
    #[arg(long, env = "TLS_RELOAD_INTERVAL_SECS", default_value_t = 10,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub tls_reload_interval_secs: u64,
    /// Serve plaintext gRPC on a non-loopback LISTEN_ADDR (tokens and API
    /// keys then cross the network in clear): for a TLS-terminating proxy
    /// or mesh in front. Without it, and without TLS_CERT_FILE, serve
    /// refuses such an address.
    #[arg(long, env = "ALLOW_PLAINTEXT")]
    pub allow_plaintext: bool,
}

/// Retention: what the pruner deletes, and how often it looks.
#[derive(Debug, Clone, Args)]
pub struct RetentionArgs {
    /// Days a COMPLETED job is kept after it completed; 0 keeps them for
    /// ever.
    #[arg(long, env = "JOB_RETENTION_COMPLETED_DAYS", default_value_t = 7,
          value_parser = clap::value_parser!(u64).range(0..=36_500))]
    pub job_retention_completed_days: u64,
    /// Days a FAILED or CANCELLED job is kept after it ended; 0 keeps them
    /// for ever.
    #[arg(long, env = "JOB_RETENTION_FAILED_DAYS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(0..=36_500))]
    pub job_retention_failed_days: u64,
    /// Days an audit row is kept; 0 (the default) keeps them for ever.
    #[arg(long, env = "AUDIT_RETENTION_DAYS", default_value_t = 0,
          value_parser = clap::value_parser!(u64).range(0..=36_500))]
    pub audit_retention_days: u64,
    /// Seconds between two pruning passes.
    #[arg(long, env = "RETENTION_INTERVAL_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub retention_interval_secs: u64,
}

/// The job queue.
#[derive(Debug, Clone, Args)]
pub struct JobArgs {
    /// How long a job's lease lasts without a heartbeat, in seconds; workers
    /// are asked to heartbeat every third of it.
    #[arg(long, env = "JOB_LEASE_SECS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub job_lease_secs: u64,
    /// Largest job payload, result or error, encoded as JSON, in bytes.
    #[arg(long, env = "JOB_PAYLOAD_MAX_BYTES", default_value_t = 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1024..=268_435_456))]
    pub job_payload_max_bytes: u64,
    /// First retry delay after a failed attempt, in milliseconds; it doubles
    /// with each attempt (±25 % jitter).
    #[arg(long, env = "JOB_RETRY_BASE_MS", default_value_t = 1_000)]
    pub job_retry_base_ms: u64,
    /// Longest retry delay, in seconds.
    #[arg(long, env = "JOB_RETRY_CAP_SECS", default_value_t = 3_600)]
    pub job_retry_cap_secs: u64,
    /// Delay after a job's first hand-back (a worker's release, a drain),
    /// in milliseconds; it doubles with each further one.
    #[arg(long, env = "JOB_RELEASE_DELAY_BASE_MS", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=3_600_000))]
    pub job_release_delay_base_ms: u64,
    /// Longest delay after a hand-back, in milliseconds.
    #[arg(long, env = "JOB_RELEASE_DELAY_CAP_MS", default_value_t = 30_000,
          value_parser = clap::value_parser!(u64).range(1..=86_400_000))]
    pub job_release_delay_cap_ms: u64,
    /// How often dispatch looks for work without being told, in
    /// milliseconds (a safety net: notifications wake it at once).
    #[arg(long, env = "JOB_POLL_INTERVAL_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(10..=600_000))]
    pub job_poll_interval_ms: u64,
    /// Pending jobs one transaction of a pause's or a resume's walk over
    /// its queue updates (short transactions: no statement timeout, no
    /// long row locks).
    #[arg(long, env = "QUEUE_WALK_BATCH", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub queue_walk_batch: u64,
    /// Most queue pauses stored at once (PauseQueue answers
    /// RESOURCE_EXHAUSTED, reason LIMIT_EXCEEDED, beyond).
    #[arg(long, env = "QUEUE_PAUSES_MAX", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub queue_pauses_max: u64,
    /// Work streams one caller (an account; its API keys count as it) may
    /// hold open on one replica.
    #[arg(long, env = "WORK_STREAMS_PER_CALLER", default_value_t = 256,
          value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub work_streams_per_caller: u64,
    /// Jobs one Work stream may hold at once, whatever it asks for.
    #[arg(long, env = "WORK_CAPACITY_PER_STREAM", default_value_t = 1_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub work_capacity_per_stream: u64,
    /// Jobs all Work streams of one caller may hold at once on one replica.
    #[arg(long, env = "WORK_CAPACITY_PER_CALLER", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub work_capacity_per_caller: u64,
    /// Jobs all Work streams of one replica may hold at once.
    #[arg(long, env = "WORK_CAPACITY_PER_REPLICA", default_value_t = 50_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub work_capacity_per_replica: u64,
    /// WatchJob and WatchModule streams one caller may hold open on one
    /// replica.
    #[arg(long, env = "WATCHES_PER_CALLER", default_value_t = 100,
          value_parser = clap::value_parser!(u64).range(1..=1_000_000))]
    pub watches_per_caller: u64,
    /// WatchJob and WatchModule streams of everyone on one replica.
    #[arg(long, env = "WATCHES_PER_REPLICA", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(1..=10_000_000))]
    pub watches_per_replica: u64,
    /// Longest a stream's message waits for a peer that stopped reading
    /// before the stream is ended, in milliseconds (at most a third of the
    /// lease is used).
    #[arg(long, env = "STREAM_SEND_TIMEOUT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub stream_send_timeout_ms: u64,
    /// Messages per second one Work stream may send, sustained (twice that
    /// in a burst); past it the stream ends with RESOURCE_EXHAUSTED.
    #[arg(long, env = "WORK_INBOUND_MESSAGES_PER_SEC", default_value_t = 1_000,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub work_inbound_messages_per_sec: u32,
}

/// `migrate`.
#[derive(Debug, Clone, Args)]
pub struct MigrateArgs {
    /// Only report applied and pending migrations; change nothing.
    #[arg(long)]
    pub status: bool,
}

/// `seed` (and the seeding `serve` does on an empty database).
#[derive(Debug, Clone, Args)]
pub struct SeedArgs {
    /// Password of the seeded admin user. Unset: `admin123` on the embedded
    /// development database (with a warning), a random one printed once
    /// otherwise.
    #[arg(long, env = "ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// Password hashing and rules.
    #[command(flatten)]
    pub passwords: PasswordArgs,
}

/// How passwords are hashed and what they must look like.
#[derive(Debug, Clone, Args)]
pub struct PasswordArgs {
    /// bcrypt cost for password hashes (4-31; each step doubles the work).
    #[arg(long, env = "BCRYPT_COST", default_value_t = 12,
          value_parser = clap::value_parser!(u32).range(4..=31))]
    pub bcrypt_cost: u32,
    /// Shortest password accepted, in characters (the longest is 72 bytes).
    #[arg(long, env = "PASSWORD_MIN_LENGTH", default_value_t = 8,
          value_parser = clap::value_parser!(u32).range(1..=72))]
    pub password_min_length: u32,
    /// Most password checks running or waiting for a free core at once;
    /// more are answered RESOURCE_EXHAUSTED. 0: 16 per core.
    #[arg(long, env = "PASSWORD_QUEUE_MAX", default_value_t = 0)]
    pub password_queue_max: usize,
    /// Longest a password check waits for a free core before it is answered
    /// RESOURCE_EXHAUSTED, in milliseconds.
    #[arg(long, env = "PASSWORD_QUEUE_WAIT_MS", default_value_t = 5_000)]
    pub password_queue_wait_ms: u64,
}

/// Authentication settings.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// HMAC secret (HS256) signing access tokens; at least 32 bytes. Required
    /// with DATABASE_URL; with the embedded database one is generated and
    /// kept in --data-dir.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,
    /// `iss` claim of issued tokens, checked on every call.
    #[arg(long, env = "JWT_ISSUER", default_value = "automation-control-plane")]
    pub jwt_issuer: String,
    /// `aud` claim of issued tokens, checked on every call.
    #[arg(long, env = "JWT_AUDIENCE", default_value = "automation-platform")]
    pub jwt_audience: String,
    /// Lifetime of access tokens, in seconds.
    #[arg(long, env = "ACCESS_TOKEN_TTL_SECS", default_value_t = 900)]
    pub access_token_ttl_secs: u64,
    /// Lifetime of refresh tokens (and so of an idle session), in seconds.
    #[arg(long, env = "REFRESH_TOKEN_TTL_SECS", default_value_t = 604_800)]
    pub refresh_token_ttl_secs: u64,
    /// Longest a session lives however often it is refreshed, in seconds
    /// (30 days); then its owner logs in again.
    #[arg(long, env = "SESSION_MAX_LIFETIME_SECS", default_value_t = 2_592_000)]
    pub session_max_lifetime_secs: u64,
    /// Failed logins of one account from one client before that client is
    /// locked out of that account for a while; each further failure doubles
    /// the lock.
    #[arg(long, env = "LOGIN_MAX_FAILURES", default_value_t = 5)]
    pub login_max_failures: i32,
    /// Failed logins of one account from all clients together before the
    /// account is under attack: then only clients that have not failed on it
    /// may try, once each, until the lock ends.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_ACCOUNT", default_value_t = 100)]
    pub login_max_failures_per_account: i32,
    /// Failed logins from one client (an IPv4 address or an IPv6 /64),
    /// whatever the account, before the client is locked for a while.
    #[arg(long, env = "LOGIN_MAX_FAILURES_PER_IP", default_value_t = 50)]
    pub login_max_failures_per_ip: i32,
    /// First lock after too many failures, in seconds (doubles each failure
    /// beyond the limit, up to 15 minutes).
    #[arg(long, env = "LOGIN_LOCKOUT_SECS", default_value_t = 30)]
    pub login_lockout_secs: u64,
    /// Proxies whose `x-forwarded-for` is believed: comma-separated IP
    /// addresses or CIDR ranges (`10.0.0.0/8,fd00::/8`). Others' headers are
    /// ignored and the peer address is used.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',',
          value_parser = proxy_entry)]
    pub trusted_proxies: Vec<IpNet>,
    /// Most callers (sessions and API keys) each replica keeps resolved, so
    /// that an authorized call needs no database read for its caller; 0
    /// turns the cache off. Changes still apply on the next call on every
    /// replica (see the README).
    #[arg(long, env = "CALLER_CACHE_SIZE", default_value_t = 10_000)]
    pub caller_cache_size: usize,
    /// Most accounts each replica keeps as GetUser and GetCurrentUser show
    /// them (the row with its roles), so that those reads need no database
    /// read; 0 turns it off. Kept current like the caller cache.
    #[arg(long, env = "ACCOUNT_CACHE_SIZE", default_value_t = 10_000)]
    pub account_cache_size: usize,
}

/// Parses one `TRUSTED_PROXIES` entry: `10.0.0.0/8`, `fd00::/8`, `10.0.0.2`
/// or `::1` (an address is the range of that one address; IPv4-mapped IPv6
/// addresses count as IPv4).
pub fn proxy_entry(text: &str) -> Result<IpNet, String> {
    use std::{net::IpAddr, str::FromStr as _};
    let text = text.trim();
    IpNet::from_str(text)
        .map(|net| net.trunc())
        .or_else(|_| IpAddr::from_str(text).map(|ip| IpNet::from(ip.to_canonical())))
        .map_err(|_| format!("'{text}' is neither an IP address nor a CIDR range"))
}

/// `on` or `off` (also true/false, 1/0, yes/no).
fn parse_on_off(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "1" | "yes" => Ok(true),
        "off" | "false" | "0" | "no" => Ok(false),
        other => Err(format!("'{other}' is neither on nor off")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_is_on_or_off() {
        assert_eq!(parse_on_off(" ON "), Ok(true));
        assert_eq!(parse_on_off("off"), Ok(false));
        assert!(parse_on_off("maybe").is_err());
    }

    #[test]
    fn proxy_entries_are_ranges_or_addresses() {
        assert_eq!(
            proxy_entry(" 10.1.2.3/8 ").unwrap().to_string(),
            "10.0.0.0/8"
        );
        assert_eq!(proxy_entry("::1").unwrap().to_string(), "::1/128");
        assert_eq!(
            proxy_entry("::ffff:10.0.0.2").unwrap().to_string(),
            "10.0.0.2/32"
        );
        assert_eq!(
            proxy_entry("proxy").unwrap_err(),
            "'proxy' is neither an IP address nor a CIDR range"
        );
    }
}
