//! The `modules` table: the registry of automation modules. Every state
//! change is a compare-and-swap (`UPDATE … WHERE status = from`), so of two
//! concurrent transitions of one module exactly one matches the row.

use chrono::NaiveDateTime;
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::schema::{modules, sql_types};

super::pg_enum! {
    /// A module's lifecycle state, as the seed's `"ModuleStatus"` enum.
    ModuleStatus => sql_types::ModuleStatus {
        Registered = "REGISTERED",
        Installing = "INSTALLING",
        Enabled = "ENABLED",
        Disabled = "DISABLED",
        Updating = "UPDATING",
        Removing = "REMOVING",
    }
}

/// A `modules` row.
#[derive(Debug, Clone, PartialEq, Queryable, Selectable, Identifiable)]
#[diesel(table_name = modules, check_for_backend(diesel::pg::Pg))]
pub struct ModuleRow {
    pub id: Uuid,
    pub name: String,
    pub version: String,
    pub display_name: String,
    pub description: String,
    pub status: ModuleStatus,
    pub manifest: serde_json::Value,
    pub installed_at: Option<NaiveDateTime>,
    pub enabled_at: Option<NaiveDateTime>,
    pub disabled_at: Option<NaiveDateTime>,
    pub updated_at: NaiveDateTime,
    pub created_at: NaiveDateTime,
    pub last_error: Option<serde_json::Value>,
    pub hook_job_id: Option<Uuid>,
    pub rollback: Option<serde_json::Value>,
}

/// An insert into `modules`.
#[derive(Debug, Insertable)]
#[diesel(table_name = modules)]
pub struct NewModule<'a> {
    pub id: Uuid,
    pub name: &'a str,
    pub version: &'a str,
    pub display_name: &'a str,
    pub description: &'a str,
    pub status: ModuleStatus,
    pub manifest: serde_json::Value,
    pub updated_at: NaiveDateTime,
    pub created_at: NaiveDateTime,
}

/// Column changes; `None` leaves a column alone (`Some(None)` clears a
/// nullable one).
#[derive(Debug, Clone, Default, AsChangeset)]
#[diesel(table_name = modules)]
pub struct ModuleChanges {
    pub status: Option<ModuleStatus>,
    pub version: Option<String>,
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub manifest: Option<serde_json::Value>,
    pub installed_at: Option<Option<NaiveDateTime>>,
    pub enabled_at: Option<Option<NaiveDateTime>>,
    pub disabled_at: Option<Option<NaiveDateTime>>,
    pub updated_at: Option<NaiveDateTime>,
    pub last_error: Option<Option<serde_json::Value>>,
    pub hook_job_id: Option<Option<Uuid>>,
    pub rollback: Option<Option<serde_json::Value>>,
}

/// Registers a module.
pub async fn insert(
    conn: &mut AsyncPgConnection,
    module: &NewModule<'_>,
) -> QueryResult<ModuleRow> {
    diesel::insert_into(modules::table)
        .values(module)
        .returning(ModuleRow::as_returning())
        .get_result(conn)
        .await
}

/// A module by id, or by name when `key` is not a UUID.
pub async fn find(conn: &mut AsyncPgConnection, key: &str) -> QueryResult<Option<ModuleRow>> {
    let query = modules::table.select(ModuleRow::as_select());
    match key.parse::<Uuid>() {
        Ok(id) => query.filter(modules::id.eq(id)).first(conn).await,
        Err(_) => query.filter(modules::name.eq(key)).first(conn).await,
    }
    .optional()
}

/// A module by id or name, locked until the transaction ends: every change
/// of a module reads it this way first, so changes of one module queue up
/// and each decides on the state the previous one left.
pub async fn find_for_update(
    conn: &mut AsyncPgConnection,
    key: &str,
) -> QueryResult<Option<ModuleRow>> {
    let query = modules::table.select(ModuleRow::as_select()).for_update();
    match key.parse::<Uuid>() {
        Ok(id) => query.filter(modules::id.eq(id)).first(conn).await,
        Err(_) => query.filter(modules::name.eq(key)).first(conn).await,
    }
    .optional()
}

/// The module whose transition the hook job `job` carries out, locked;
/// `None` when no module waits for that job (any more).
pub async fn find_by_hook_job_for_update(
    conn: &mut AsyncPgConnection,
    job: Uuid,
) -> QueryResult<Option<ModuleRow>> {
    modules::table
        .filter(modules::hook_job_id.eq(job))
        .select(ModuleRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// Modules by name, after `after_name`, only in `status` when given.
pub async fn list(
    conn: &mut AsyncPgConnection,
    status: Option<ModuleStatus>,
    after_name: Option<&str>,
    limit: i64,
) -> QueryResult<Vec<ModuleRow>> {
    let mut query = modules::table.select(ModuleRow::as_select()).into_boxed();
    if let Some(status) = status {
        query = query.filter(modules::status.eq(status));
    }
    if let Some(name) = after_name {
        query = query.filter(modules::name.gt(name.to_owned()));
    }
    query
        .order(modules::name.asc())
        .limit(limit)
        .load(conn)
        .await
}

/// Applies `changes` only if the module is still in `from`; `None` when it
/// is not (another transition got there first).
pub async fn compare_and_set(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    from: ModuleStatus,
    changes: &ModuleChanges,
) -> QueryResult<Option<ModuleRow>> {
    diesel::update(
        modules::table
            .filter(modules::id.eq(id))
            .filter(modules::status.eq(from)),
    )
    .set(changes)
    .returning(ModuleRow::as_returning())
    .get_result(conn)
    .await
    .optional()
}

/// Deletes a module only if it is still in `from`; false when it is not.
pub async fn delete_if(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    from: ModuleStatus,
) -> QueryResult<bool> {
    let deleted = diesel::delete(
        modules::table
            .filter(modules::id.eq(id))
            .filter(modules::status.eq(from)),
    )
    .execute(conn)
    .await?;
    Ok(deleted == 1)
}

/// The fields of a module that job creation needs.
#[derive(Debug, Clone, PartialEq)]
pub struct ModuleGate {
    /// The lifecycle state.
    pub status: ModuleStatus,
    /// The manifest.
    pub manifest: serde_json::Value,
}

/// A module's state and manifest by name, share-locked so that it cannot
/// change state until the transaction ends.
pub async fn gate(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<Option<ModuleGate>> {
    modules::table
        .filter(modules::name.eq(name))
        .select((modules::status, modules::manifest))
        .for_share()
        .first::<(ModuleStatus, serde_json::Value)>(conn)
        .await
        .optional()
        .map(|row| row.map(|(status, manifest)| ModuleGate { status, manifest }))
}
