//! The fleet of workers across replicas. A Work stream lives in the memory
//! of the replica it connected to; each replica publishes its streams every
//! [`PUBLISH_INTERVAL`] (`replica_workers`), so that whichever replica a
//! person's browser reaches, the console shows every connected worker and
//! where it is connected.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::{
    db::{self, DbPool},
    error::AppError,
    store::fleet,
};

/// How often a replica publishes its streams.
pub const PUBLISH_INTERVAL: Duration = Duration::from_secs(5);

/// A replica's row counts as current for this long: three publications
/// missed, and the replica is taken for gone (its workers reconnect
/// elsewhere).
pub const FRESH_FOR: Duration = Duration::from_secs(15);

/// Rows older than this are deleted by the replicas still running (a
/// replica killed with SIGKILL never deletes its own).
pub const FORGOTTEN_AFTER: Duration = Duration::from_secs(3600);

/// Most streams a replica publishes, and most job and module names
/// published per stream (the rest summed up in one last entry): a row stays
/// about a megabyte at worst (500 streams × 20 names of up to 128 bytes),
/// however many streams a replica holds and whatever their hellos say; the
/// count of all the streams is published beside.
pub const MOST_PUBLISHED: usize = 500;

/// See [`MOST_PUBLISHED`].
pub const NAMES_PUBLISHED: usize = 10;

/// One connected Work stream, as the console shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStream {
    /// The stream (time-ordered: when it connected).
    pub stream: Uuid,
    /// The account it works for.
    pub caller: Uuid,
    /// The API key it connected with, if any.
    pub api_key: Option<Uuid>,
    /// What the worker calls itself.
    pub worker_id: String,
    /// Job names it takes; empty: any.
    pub names: Vec<String>,
    /// Module names it takes; empty: any.
    pub modules: Vec<String>,
    /// Jobs it may hold at once.
    pub capacity: usize,
    /// Leases it holds.
    pub held: usize,
    /// False once it said it drains.
    pub accepting: bool,
    /// When it last sent a heartbeat.
    pub last_heartbeat: Option<SystemTime>,
}

impl WorkerStream {
    /// This stream with at most [`NAMES_PUBLISHED`] job and module names,
    /// the rest counted in a last entry.
    fn abridged(&self) -> Self {
        let cut = |names: &[String]| -> Vec<String> {
            let mut kept: Vec<String> = names.iter().take(NAMES_PUBLISHED).cloned().collect();
            if names.len() > NAMES_PUBLISHED {
                kept.push(format!("… and {} more", names.len() - NAMES_PUBLISHED));
            }
            kept
        };
        Self {
            names: cut(&self.names),
            modules: cut(&self.modules),
            ..self.clone()
        }
    }
}

/// One replica and its streams.
#[derive(Debug, Clone)]
pub struct ReplicaWorkers {
    /// The replica (a process).
    pub replica: Uuid,
    /// Host name and gRPC address.
    pub label: String,
    /// Its streams, at most [`MOST_PUBLISHED`].
    pub streams: Vec<WorkerStream>,
    /// How many it has in all.
    pub total: usize,
    /// Seconds since it published them (0 for this replica: read live).
    pub age_secs: f64,
}

/// This replica's place in the fleet.
#[derive(Clone)]
pub struct Fleet {
    pool: DbPool,
    replica: Uuid,
    label: String,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field("replica", &self.replica)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

impl Fleet {
    /// A new replica (a new id at every start) named `label`.
    pub fn new(pool: DbPool, label: String) -> Self {
        Self {
            pool,
            replica: Uuid::now_v7(),
            label,
        }
    }

    /// This replica's id.
    pub fn replica(&self) -> Uuid {
        self.replica
    }

    /// This replica's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// Publishes this replica's streams (the first [`MOST_PUBLISHED`]), and
    /// deletes the rows of replicas long gone.
    pub async fn publish(&self, streams: &[WorkerStream]) -> Result<(), AppError> {
        let shown: Vec<WorkerStream> = streams
            .iter()
            .take(MOST_PUBLISHED)
            .map(WorkerStream::abridged)
            .collect();
        let json = serde_json::to_value(&shown)
            .map_err(|e| AppError::internal(format!("publishing streams: {e}")))?;
        let total = i32::try_from(streams.len()).unwrap_or(i32::MAX);
        let gone_ms = millis(FORGOTTEN_AFTER);
        db::with_connection(&self.pool, "fleet.publish", async |conn| {
            fleet::publish(conn, self.replica, &self.label, &json, total).await?;
            fleet::forget(conn, None, gone_ms).await?;
            Ok(())
        })
        .await
    }

    /// The other replicas that published within [`FRESH_FOR`]. A row that
    /// does not read (written by a newer version, say) shows as a replica
    /// with its count and no streams, rather than failing the page.
    pub async fn others(&self) -> Result<Vec<ReplicaWorkers>, AppError> {
        let fresh_ms = millis(FRESH_FOR);
        let rows = db::with_connection(&self.pool, "fleet.others", async |conn| {
            Ok(fleet::fresh(conn, self.replica, fresh_ms).await?)
        })
        .await?;
        Ok(rows
            .into_iter()
            .map(|row| ReplicaWorkers {
                replica: row.replica,
                label: row.label,
                streams: serde_json::from_value(row.streams).unwrap_or_default(),
                total: usize::try_from(row.stream_count).unwrap_or_default(),
                age_secs: row.age_secs.max(0.0),
            })
            .collect())
    }

    /// Deletes this replica's row: it stops, and its workers with it.
    pub async fn leave(&self) -> Result<(), AppError> {
        let gone_ms = millis(FORGOTTEN_AFTER);
        db::with_connection(&self.pool, "fleet.leave", async |conn| {
            fleet::forget(conn, Some(self.replica), gone_ms).await?;
            Ok(())
        })
        .await
    }
}

fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}
