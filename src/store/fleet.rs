//! Every replica's published Work streams (`replica_workers`). Times are the
//! database's, so that replicas with skewed clocks agree on what is fresh.

use diesel::{
    QueryResult, QueryableByName,
    sql_types::{BigInt, Double, Integer, Jsonb, Text, Uuid as SqlUuid},
};
use diesel_async::{AsyncPgConnection, RunQueryDsl as _};
use uuid::Uuid;

/// One replica's row.
#[derive(Debug, Clone, QueryableByName)]
pub struct PublishedRow {
    #[diesel(sql_type = SqlUuid)]
    pub replica: Uuid,
    #[diesel(sql_type = Text)]
    pub label: String,
    #[diesel(sql_type = Jsonb)]
    pub streams: serde_json::Value,
    #[diesel(sql_type = Integer, column_name = "streamCount")]
    pub stream_count: i32,
    /// Seconds since it was published, by the database's clock.
    #[diesel(sql_type = Double)]
    pub age_secs: f64,
}

/// Writes (or rewrites) `replica`'s row.
pub async fn publish(
    conn: &mut AsyncPgConnection,
    replica: Uuid,
    label: &str,
    streams: &serde_json::Value,
    stream_count: i32,
) -> QueryResult<usize> {
    diesel::sql_query(
        r#"INSERT INTO replica_workers (replica, label, streams, "streamCount", "publishedAt")
           VALUES ($1, $2, $3, $4, now() AT TIME ZONE 'UTC')
           ON CONFLICT (replica) DO UPDATE SET label = EXCLUDED.label,
               streams = EXCLUDED.streams, "streamCount" = EXCLUDED."streamCount",
               "publishedAt" = EXCLUDED."publishedAt""#,
    )
    .bind::<SqlUuid, _>(replica)
    .bind::<Text, _>(label)
    .bind::<Jsonb, _>(streams)
    .bind::<Integer, _>(stream_count)
    .execute(conn)
    .await
}

/// The rows of replicas other than `except` published within `fresh_ms`.
pub async fn fresh(
    conn: &mut AsyncPgConnection,
    except: Uuid,
    fresh_ms: i64,
) -> QueryResult<Vec<PublishedRow>> {
    diesel::sql_query(
        r#"SELECT replica, label, streams, "streamCount",
                  extract(epoch FROM (now() AT TIME ZONE 'UTC') - "publishedAt")::float8 AS age_secs
           FROM replica_workers
           WHERE replica <> $1
             AND "publishedAt" > (now() AT TIME ZONE 'UTC') - $2 * interval '1 millisecond'
           ORDER BY label, replica"#,
    )
    .bind::<SqlUuid, _>(except)
    .bind::<BigInt, _>(fresh_ms)
    .load(conn)
    .await
}

/// Deletes `replica`'s row (it stops), and the rows of replicas gone for
/// longer than `gone_ms` (killed ones never delete their own).
pub async fn forget(
    conn: &mut AsyncPgConnection,
    replica: Option<Uuid>,
    gone_ms: i64,
) -> QueryResult<usize> {
    diesel::sql_query(
        r#"DELETE FROM replica_workers
           WHERE replica = $1
              OR "publishedAt" < (now() AT TIME ZONE 'UTC') - $2 * interval '1 millisecond'"#,
    )
    .bind::<diesel::sql_types::Nullable<SqlUuid>, _>(replica)
    .bind::<BigInt, _>(gone_ms)
    .execute(conn)
    .await
}
