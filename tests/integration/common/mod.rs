//! The test harness: a real server over loopback on a database of its own.

pub mod browser;
pub mod certs;
pub mod cluster;
pub mod pgbouncer;
pub mod proxy;
pub mod raw_codec;
pub mod worker;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use automation_control_plane::{
    auth::{AuthSettings, passwords::PasswordHasher, tokens::TokenKeys},
    config::{AuthArgs, PasswordArgs},
    db::{self, DbPool, PoolSettings},
    domain::jobs::JobSettings,
    proto::automation_v1 as pb,
    seed::{self, AdminPassword},
    server::{self, AppState, ServerOptions},
};
use tokio::sync::oneshot;
use tonic::{
    Request,
    metadata::MetadataValue,
    transport::{Channel, ClientTlsConfig, Endpoint},
};

pub use cluster::{TestDatabase, TestServer};
pub use pb::{
    audit_service_client::AuditServiceClient, auth_service_client::AuthServiceClient,
    job_service_client::JobServiceClient, module_service_client::ModuleServiceClient,
    role_service_client::RoleServiceClient, user_service_client::UserServiceClient,
};

/// Password of the seeded admin in tests.
pub const ADMIN_PASSWORD: &str = "admin-password-1";
/// Secret of the test servers' access tokens.
pub const JWT_SECRET: &str = "Vh3kQ9zLx2Rm7TbW0pYc5NfJ8dGs1AuE4iKo6MqXyZtBnHrP";
/// Issuer and audience of the test servers' tokens.
pub const ISSUER: &str = "automation-control-plane";
pub const AUDIENCE: &str = "automation-platform";

/// Knobs of a test server.
#[derive(Clone)]
pub struct TestOptions {
    /// Connect the server to its database through a [`proxy::DbProxy`]
    /// that the test can cut.
    pub through_proxy: bool,
    /// Latency the proxy adds in each direction (a database on another
    /// host); a non-zero latency implies the proxy.
    pub db_latency: Duration,
    /// Acquire timeout of the pool.
    pub acquire_timeout: Duration,
    /// Connections of the server's pool (the service's default is 16).
    pub pool_size: usize,
    /// Auth settings.
    pub auth: AuthArgs,
    /// Password settings of the server (the seeded admin is hashed at cost 4
    /// always).
    pub passwords: PasswordArgs,
    /// The job queue.
    pub jobs: JobSettings,
    /// Graceful shutdown, keepalive and message size.
    pub server: ServerOptions,
    /// How the harness's clients speak TLS to a server whose
    /// `server.tls` is set (`None`: plaintext).
    pub tls_client: Option<ClientTlsConfig>,
    /// A transaction pooler (PgBouncer, `pool_mode = transaction`) in front
    /// of the test cluster: the server's pool goes through it in
    /// `DATABASE_POOL_MODE=transaction`, its LISTEN connection and claim
    /// loop go to the database directly.
    pub pooler: Option<SocketAddr>,
}

impl Default for TestOptions {
    fn default() -> Self {
        Self {
            through_proxy: false,
            db_latency: Duration::ZERO,
            acquire_timeout: Duration::from_secs(10),
            pool_size: 8,
            auth: AuthArgs {
                jwt_secret: None,
                jwt_issuer: ISSUER.into(),
                jwt_audience: AUDIENCE.into(),
                access_token_ttl_secs: 900,
                refresh_token_ttl_secs: 3600,
                session_max_lifetime_secs: 30 * 24 * 3600,
                login_max_failures: 5,
                login_max_failures_per_account: 100,
                login_max_failures_per_ip: 1000,
                login_lockout_secs: 30,
                trusted_proxies: vec![],
                caller_cache_size: 10_000,
                account_cache_size: 10_000,
            },
            passwords: PasswordArgs {
                bcrypt_cost: 4,
                password_min_length: 8,
                password_queue_max: 0,
                password_queue_wait_ms: 5_000,
            },
            jobs: JobSettings {
                retry_base: Duration::from_millis(100),
                poll_interval: Duration::from_secs(1),
                ..JobSettings::default()
            },
            server: ServerOptions {
                health_check_interval: Duration::from_millis(100),
                shutdown_grace: Duration::from_millis(200),
                ..ServerOptions::default()
            },
            tls_client: None,
            pooler: None,
        }
    }
}

/// A server on 127.0.0.1 with a seeded database of its own.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// Its database (shared with replicas started by [`TestApp::replica`]).
    pub db: Arc<TestDatabase>,
    /// A pool on the same database, for checks behind the API's back.
    pub pool: DbPool,
    /// The server's token keys, to forge tokens in attack tests.
    pub keys: TokenKeys,
    /// The proxy between server and database, when asked for.
    pub proxy: Option<proxy::DbProxy>,
    /// TLS of the harness's clients, when the server speaks it.
    pub tls_client: Option<ClientTlsConfig>,
    /// The server's cache of callers and accounts (to check that it served).
    pub callers: automation_control_plane::auth::callers::CallerCache,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// A small pool on `url`.
pub fn pool(url: &str, acquire_timeout: Duration) -> DbPool {
    pool_with(url, acquire_timeout, 8, db::PoolMode::Session)
}

/// A pool of `max_size` connections on `url`, pooled as `mode` says.
pub fn pool_with(
    url: &str,
    acquire_timeout: Duration,
    max_size: usize,
    mode: db::PoolMode,
) -> DbPool {
    db::build_pool(&PoolSettings {
        url: url.to_owned(),
        max_size,
        acquire_timeout,
        statement_timeout: Duration::from_secs(30),
        application_name: "control-plane-test".into(),
        mode,
    })
    .expect("pool")
}

impl TestApp {
    /// A server with default options.
    pub async fn spawn() -> Self {
        Self::spawn_with(TestOptions::default()).await
    }

    /// A server with `options`.
    pub async fn spawn_with(options: TestOptions) -> Self {
        // Server logs show up with a failing test's output.
        let _ = tracing_subscriber::fmt()
            .with_test_writer()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .try_init();
        let server = TestServer::get().await;
        let db = Arc::new(server.create_database(true).await);
        let check_pool = pool(&db.url(), Duration::from_secs(10));
        let hasher = PasswordHasher::new(4);
        seed::run(
            &check_pool,
            &hasher,
            AdminPassword::Given(ADMIN_PASSWORD.into()),
        )
        .await
        .expect("seeding");
        Self::serve_on(db, options).await
    }

    /// Another server (a replica) on this one's database.
    pub async fn replica(&self, options: TestOptions) -> Self {
        Self::serve_on(self.db.clone(), options).await
    }

    /// A server on `db` as it is (not seeded: a restored database, say).
    pub async fn on_database(db: Arc<TestDatabase>, options: TestOptions) -> Self {
        Self::serve_on(db, options).await
    }

    async fn serve_on(db: Arc<TestDatabase>, options: TestOptions) -> Self {
        let check_pool = pool(&db.url(), Duration::from_secs(10));
        let (url, proxy) = if options.through_proxy || !options.db_latency.is_zero() {
            let mut url = url::Url::parse(&db.url()).expect("database URL");
            let target = format!("127.0.0.1:{}", url.port().expect("port"));
            let proxy = proxy::DbProxy::start_with_latency(
                target.parse().expect("address"),
                options.db_latency,
            )
            .await;
            url.set_port(Some(proxy.addr.port())).expect("port");
            (url.to_string(), Some(proxy))
        } else {
            (db.url(), None)
        };
        let auth = AuthSettings::from_args(&options.auth, &options.passwords, JWT_SECRET)
            .expect("auth settings");
        let keys = auth.tokens.clone();
        let callers = auth.callers.clone();
        let (pool_url, mode) = match options.pooler {
            Some(pooler) => {
                let mut through = url::Url::parse(&url).expect("database URL");
                through
                    .set_host(Some(&pooler.ip().to_string()))
                    .expect("host");
                through.set_port(Some(pooler.port())).expect("port");
                (through.to_string(), db::PoolMode::Transaction)
            }
            None => (url.clone(), db::PoolMode::Session),
        };
        let state = AppState {
            pool: pool_with(&pool_url, options.acquire_timeout, options.pool_size, mode),
            database_url: url,
            auth: Arc::new(auth),
            jobs: options.jobs,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        // The console (plain HTTP only) answers 503 until the server's
        // services exist: tests start talking to it once it is up.
        let console_addr = options
            .server
            .http_listener
            .as_ref()
            .filter(|_| options.server.console && options.server.tls.is_none())
            .map(|listener| listener.local_addr());
        let server_options = options.server.clone();
        let tls_client = options.tls_client.clone();
        let task = tokio::spawn(async move {
            server::serve(state, listener, server_options, async {
                let _ = shutdown_rx.await;
            })
            .await
            .expect("server");
        });
        if let Some(http) = console_addr {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
            while browser::request(http, "GET", "/console/login", None, None)
                .await
                .status
                == 503
                && tokio::time::Instant::now() < deadline
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Self {
            addr,
            db,
            pool: check_pool,
            keys,
            proxy,
            tls_client,
            callers,
            shutdown: Some(shutdown),
            task: Some(task),
        }
    }

    /// A channel to the server.
    pub async fn channel(&self) -> Channel {
        let endpoint = match &self.tls_client {
            Some(tls) => Endpoint::from_shared(format!("https://localhost:{}", self.addr.port()))
                .expect("endpoint")
                .tls_config(tls.clone())
                .expect("TLS config"),
            None => Endpoint::from_shared(format!("http://{}", self.addr)).expect("endpoint"),
        };
        endpoint
            .user_agent("control-plane-tests/1.0")
            .expect("user agent")
            .connect()
            .await
            .expect("connect")
    }

    /// Logs in and returns the whole answer.
    pub async fn login(
        &self,
        login: &str,
        password: &str,
    ) -> Result<pb::LoginResponse, tonic::Status> {
        AuthServiceClient::new(self.channel().await)
            .login(pb::LoginRequest {
                login: login.into(),
                password: password.into(),
            })
            .await
            .map(|r| r.into_inner())
    }

    /// The seeded admin's access token.
    pub async fn admin_token(&self) -> String {
        self.login(seed::ADMIN_EMAIL, ADMIN_PASSWORD)
            .await
            .expect("admin login")
            .access_token
    }

    /// The user a token belongs to (panics if the token does not work).
    pub async fn current_user(&self, token: &str) -> pb::User {
        AuthServiceClient::new(self.channel().await)
            .get_current_user(authed(token, pb::GetCurrentUserRequest {}))
            .await
            .expect("GetCurrentUser")
            .into_inner()
            .user
            .expect("user")
    }

    /// Creates a user holding `roles` and returns (user id, access token).
    pub async fn user_with_roles(&self, username: &str, roles: &[&str]) -> (String, String) {
        let admin = self.admin_token().await;
        let password = "user-password-1";
        let user = UserServiceClient::new(self.channel().await)
            .create_user(authed(
                &admin,
                pb::CreateUserRequest {
                    email: format!("{username}@example.test"),
                    username: username.into(),
                    password: password.into(),
                    roles: roles.iter().map(|r| r.to_string()).collect(),
                    ..Default::default()
                },
            ))
            .await
            .expect("create user")
            .into_inner()
            .user
            .expect("user");
        let token = self
            .login(username, password)
            .await
            .expect("user login")
            .access_token;
        (user.id, token)
    }

    /// Stops the server and waits for it; the database stays until `self`
    /// drops.
    pub async fn shutdown(&mut self) {
        if let Some(shutdown) = self.shutdown.take() {
            let _ = shutdown.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Stops the server and waits for it.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }
}

/// An update mask naming `paths`.
pub fn mask(paths: &[&str]) -> Option<prost_types::FieldMask> {
    Some(prost_types::FieldMask {
        paths: paths.iter().map(|p| p.to_string()).collect(),
    })
}

/// A valid CreateUser request for `name` (password `long-enough-1`).
pub fn new_user(name: &str) -> pb::CreateUserRequest {
    pb::CreateUserRequest {
        email: format!("{name}@example.test"),
        username: name.into(),
        password: "long-enough-1".into(),
        first_name: "First".into(),
        last_name: "Last".into(),
        roles: vec![],
    }
}

/// A request carrying `authorization: Bearer <token>`.
pub fn authed<T>(token: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.metadata_mut().insert(
        "authorization",
        MetadataValue::try_from(format!("Bearer {token}")).expect("header"),
    );
    request
}

#[derive(diesel::QueryableByName)]
struct Text {
    #[diesel(sql_type = diesel::sql_types::Text)]
    value: String,
}

#[derive(diesel::QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    count: i64,
}

async fn query_count(app: &TestApp, sql: &str, binds: (&str, &str)) -> i64 {
    use diesel_async::RunQueryDsl as _;
    let mut conn = app.pool.get().await.expect("connection");
    diesel::sql_query(sql)
        .bind::<diesel::sql_types::Text, _>(binds.0)
        .bind::<diesel::sql_types::Text, _>(binds.1)
        .get_result::<Count>(&mut conn)
        .await
        .expect("count")
        .count
}

/// What `sessions.refreshToken` holds, read behind the API's back.
pub async fn stored_refresh_tokens(app: &TestApp) -> Vec<String> {
    use diesel_async::RunQueryDsl as _;
    let mut conn = app.pool.get().await.expect("connection");
    diesel::sql_query("SELECT \"refreshToken\" AS value FROM sessions")
        .load::<Text>(&mut conn)
        .await
        .expect("sessions")
        .into_iter()
        .map(|t| t.value)
        .collect()
}

/// Audit rows of `action` with `outcome`.
pub async fn audit_count(app: &TestApp, action: &str, outcome: &str) -> i64 {
    query_count(
        app,
        "SELECT count(*) AS count FROM audit_logs WHERE action = $1 AND outcome = $2",
        (action, outcome),
    )
    .await
}

/// Audit rows of `action` whose user is gone.
pub async fn audit_rows_without_user(app: &TestApp, action: &str) -> i64 {
    query_count(
        app,
        "SELECT count(*) AS count FROM audit_logs WHERE action = $1 AND \"userId\" IS NULL \
         AND outcome = $2",
        (action, "success"),
    )
    .await
}

/// A CreateJob request for `name` with `payload`.
pub fn new_job(name: &str, payload: serde_json::Value) -> pb::CreateJobRequest {
    pb::CreateJobRequest {
        name: name.into(),
        payload: Some(worker::json_struct(payload)),
        ..Default::default()
    }
}

impl TestApp {
    /// Creates a job (as `token`'s caller) and returns it.
    pub async fn create_job(&self, token: &str, request: pb::CreateJobRequest) -> pb::Job {
        JobServiceClient::new(self.channel().await)
            .create_job(authed(token, request))
            .await
            .expect("create job")
            .into_inner()
            .job
            .expect("job")
    }

    /// Reads a job.
    pub async fn job(&self, token: &str, id: &str) -> pb::Job {
        JobServiceClient::new(self.channel().await)
            .get_job(authed(token, pb::GetJobRequest { id: id.into() }))
            .await
            .expect("get job")
            .into_inner()
            .job
            .expect("job")
    }

    /// A worker connected with the admin's token.
    pub async fn worker(&self, max_concurrency: i32) -> worker::TestWorker {
        let token = self.admin_token().await;
        worker::TestWorker::connect(self.channel().await, &token, worker::hello(max_concurrency))
            .await
            .expect("worker connects")
    }
}

/// Creates a role holding `permissions` (as the seeded admin); returns its id.
pub async fn role(app: &TestApp, name: &str, permissions: &[&str]) -> String {
    RoleServiceClient::new(app.channel().await)
        .create_role(authed(
            &app.admin_token().await,
            pb::CreateRoleRequest {
                name: name.into(),
                description: String::new(),
                permissions: permissions.iter().map(|p| p.to_string()).collect(),
            },
        ))
        .await
        .unwrap_or_else(|e| panic!("role {name}: {e:?}"))
        .into_inner()
        .role
        .expect("the created role")
        .id
}

/// A user holding exactly `permissions` (through a role of its own, or the
/// built-in admin role for `*:*`); returns (id, token).
pub async fn account(app: &TestApp, name: &str, permissions: &[&str]) -> (String, String) {
    let roles: Vec<String> = if permissions == ["*:*"] {
        vec!["admin".into()]
    } else if permissions.is_empty() {
        vec![]
    } else {
        let role_name = format!("{name}-role");
        role(app, &role_name, permissions).await;
        vec![role_name]
    };
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    app.user_with_roles(name, &roles).await
}
