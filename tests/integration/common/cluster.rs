//! One throwaway PostgreSQL per test process, a migrated template database in
//! it, and one database per test cloned from that template, so tests run in
//! parallel and share nothing. `TEST_DATABASE_URL` (a superuser URL of an
//! existing server) replaces the throwaway cluster.

use std::{path::PathBuf, time::Duration};

use automation_control_plane::db::{
    embedded::{EmbeddedPostgres, EmbeddedPostgresOptions},
    migrations,
};
use diesel::sql_query;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use tokio::sync::OnceCell;
use uuid::Uuid;

/// The server all tests of this process use.
pub struct TestServer {
    /// `postgres://…/` of the server, with no database name.
    base_url: String,
    /// Name of the migrated template.
    template: String,
    /// Kept alive for the whole process; the kernel stops it when we exit.
    _cluster: Option<EmbeddedPostgres>,
}

static SERVER: OnceCell<TestServer> = OnceCell::const_new();

fn cluster_dir_prefix() -> &'static str {
    "automation-cp-test-"
}

/// Removes clusters left by test processes that are gone.
fn sweep_stale_clusters() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(cluster_dir_prefix())
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let alive = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), None).is_ok();
        if !alive {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

async fn execute(url: &str, sql: &str) {
    let mut conn = AsyncPgConnection::establish(url)
        .await
        .unwrap_or_else(|e| panic!("connecting to the test server: {e}"));
    sql_query(sql)
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
}

impl TestServer {
    /// The shared server, started (and its template migrated) on first use.
    pub async fn get() -> &'static TestServer {
        SERVER.get_or_init(Self::start).await
    }

    async fn start() -> TestServer {
        let (base_url, cluster) = match std::env::var("TEST_DATABASE_URL") {
            Ok(url) => {
                let mut parsed = url::Url::parse(&url).expect("TEST_DATABASE_URL is a URL");
                parsed.set_path("/");
                (parsed.to_string(), None)
            }
            Err(_) => {
                sweep_stale_clusters();
                let root: PathBuf = std::env::temp_dir().join(format!(
                    "{}{}",
                    cluster_dir_prefix(),
                    std::process::id()
                ));
                let cluster = EmbeddedPostgres::start(EmbeddedPostgresOptions {
                    root_dir: root,
                    port: 0,
                    durable: false,
                    max_connections: 500,
                    startup_timeout: Duration::from_secs(60),
                    settings: Vec::new(),
                })
                .await
                .unwrap_or_else(|e| panic!("{e}"));
                (cluster.url(""), Some(cluster))
            }
        };
        let template = format!("cp_template_{}", Uuid::new_v4().simple());
        execute(
            &format!("{base_url}postgres"),
            &format!("CREATE DATABASE {template}"),
        )
        .await;
        migrations::run_pending(&format!("{base_url}{template}"))
            .await
            .expect("migrating the template");
        TestServer {
            base_url,
            template,
            _cluster: cluster,
        }
    }

    /// URL of `database` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("{}{database}", self.base_url)
    }

    /// A fresh database: migrated (a clone of the template) or empty.
    pub async fn create_database(&'static self, migrated: bool) -> TestDatabase {
        let name = format!("cp_test_{}", Uuid::new_v4().simple());
        let sql = if migrated {
            format!("CREATE DATABASE {name} TEMPLATE {}", self.template)
        } else {
            format!("CREATE DATABASE {name}")
        };
        execute(&self.url("postgres"), &sql).await;
        TestDatabase { server: self, name }
    }
}

/// A database of one test, dropped when the test ends.
pub struct TestDatabase {
    server: &'static TestServer,
    /// Its name.
    pub name: String,
}

impl TestDatabase {
    /// Its URL.
    pub fn url(&self) -> String {
        self.server.url(&self.name)
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let admin_url = self.server.url("postgres");
        let sql = format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name);
        // Drop may run on an async runtime thread: do the work on a thread
        // of its own with a runtime of its own.
        let worker = std::thread::spawn(move || {
            if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                runtime.block_on(async {
                    if let Ok(mut conn) = AsyncPgConnection::establish(&admin_url).await {
                        let _ = sql_query(sql).execute(&mut conn).await;
                    }
                });
            }
        });
        let _ = worker.join();
    }
}
