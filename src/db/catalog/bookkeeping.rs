//! Migration bookkeeping: the advisory lock that serialises schema changes,
//! and diesel's table of applied migrations (read, and written when a seed
//! database is adopted). Kept here so that all hand-written SQL of schema
//! management is in one module.

use diesel::{
    QueryResult, QueryableByName, RunQueryDsl as _,
    connection::LoadConnection,
    migration::MigrationConnection,
    pg::Pg,
    sql_query,
    sql_types::{BigInt, Bool, Nullable, Text},
};

/// Key of the session-level advisory lock that serialises schema changes
/// between processes (replicas starting at once, `migrate` run beside a
/// server). Any fixed number works as long as every version of the service
/// uses the same one; this is the ASCII of `ctlplmig` ("control plane
/// migrations"), unlikely to collide with another application's lock.
pub const MIGRATION_LOCK_KEY: i64 = 0x6374_6c70_6c6d_6967;

#[derive(QueryableByName)]
struct FlagRow {
    #[diesel(sql_type = Bool)]
    flag: bool,
}

/// Takes the migration lock if it is free; `false` when another session
/// holds it (so the caller can say it is waiting).
pub fn try_lock_migrations<C>(conn: &mut C) -> QueryResult<bool>
where
    C: LoadConnection<Backend = Pg>,
{
    sql_query("SELECT pg_try_advisory_lock($1) AS flag")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .get_result::<FlagRow>(conn)
        .map(|row| row.flag)
}

/// Waits for the migration lock. Session-level, not transaction-level:
/// diesel runs each migration in a transaction of its own, and the lock
/// must span the check and all of them. Closing the session releases it, so
/// a process that dies while migrating cannot leave it held.
pub fn lock_migrations<C>(conn: &mut C) -> QueryResult<()>
where
    C: LoadConnection<Backend = Pg>,
{
    sql_query("SELECT pg_advisory_lock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(conn)
        .map(drop)
}

/// Releases the migration lock taken by this session.
pub fn unlock_migrations<C>(conn: &mut C) -> QueryResult<()>
where
    C: LoadConnection<Backend = Pg>,
{
    sql_query("SELECT pg_advisory_unlock($1)")
        .bind::<BigInt, _>(MIGRATION_LOCK_KEY)
        .execute(conn)
        .map(drop)
}

#[derive(QueryableByName)]
struct TableNameRow {
    #[diesel(sql_type = Nullable<Text>)]
    table_name: Option<String>,
}

/// Whether diesel has recorded any migration. Diesel's table is named
/// unqualified, so it is looked up through the search path, as diesel does.
pub fn migrations_recorded<C>(conn: &mut C) -> QueryResult<bool>
where
    C: LoadConnection<Backend = Pg>,
{
    let table = sql_query("SELECT to_regclass('__diesel_schema_migrations')::text AS table_name")
        .get_result::<TableNameRow>(conn)?
        .table_name;
    if table.is_none() {
        return Ok(false);
    }
    sql_query("SELECT EXISTS (SELECT 1 FROM __diesel_schema_migrations) AS flag")
        .get_result::<FlagRow>(conn)
        .map(|row| row.flag)
}

#[derive(QueryableByName)]
struct EmailRow {
    #[diesel(sql_type = Text)]
    email: String,
}

/// Emails (lowercased) that more than one account holds in different
/// letter case; at most 20, for the refusal message.
pub fn emails_equal_but_for_case<C>(conn: &mut C) -> QueryResult<Vec<String>>
where
    C: diesel::Connection<Backend = diesel::pg::Pg> + diesel::connection::LoadConnection,
{
    sql_query(
        r#"SELECT lower(email) AS email FROM users GROUP BY lower(email)
           HAVING count(*) > 1 ORDER BY 1 LIMIT 20"#,
    )
    .load::<EmailRow>(conn)
    .map(|rows| rows.into_iter().map(|r| r.email).collect())
}

/// Records `version` as applied without running it, in one transaction.
/// diesel's table is created by diesel itself (`MigrationConnection::setup`,
/// `version VARCHAR(50) PRIMARY KEY NOT NULL, run_on TIMESTAMP NOT NULL
/// DEFAULT CURRENT_TIMESTAMP`), so diesel's harness and CLI read it as their own.
pub fn record_applied<C>(conn: &mut C, version: &str) -> QueryResult<()>
where
    C: LoadConnection<Backend = Pg> + MigrationConnection,
{
    conn.transaction(|conn| {
        conn.setup()?;
        sql_query("INSERT INTO __diesel_schema_migrations (version) VALUES ($1)")
            .bind::<Text, _>(version)
            .execute(conn)
            .map(drop)
    })
}
