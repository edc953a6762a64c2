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

/// Serialises, for the rest of the transaction, the changes of which module
/// a job name belongs to (`exclusive`: registering a module, changing its
/// manifest) against the creates that rely on it (shared). A create that
/// finds no module for a name therefore commits its job before a module
/// taking that name is registered (whose registration then finds the job
/// and takes it back), or runs after and sees the module. Taken before any
/// row lock, so creates and registrations queue instead of deadlocking.
pub async fn lock_job_names(conn: &mut AsyncPgConnection, exclusive: bool) -> QueryResult<()> {
    /// The lock's key: "ctlpjobn" in ASCII.
    const JOB_NAMES: i64 = 0x6374_6c70_6a6f_626e;
    let statement = if exclusive {
        "SELECT pg_advisory_xact_lock($1)"
    } else {
        "SELECT pg_advisory_xact_lock_shared($1)"
    };
    diesel::sql_query(statement)
        .bind::<diesel::sql_types::BigInt, _>(JOB_NAMES)
        .execute(conn)
        .await
        .map(drop)
}

/// A module a job name may belong to, as job creation reads it.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct JobNameOwner {
    #[diesel(sql_type = diesel::sql_types::Uuid)]
    pub id: Uuid,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub name: String,
    #[diesel(sql_type = sql_types::ModuleStatus)]
    pub status: ModuleStatus,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub version: String,
    /// The row's version (`xmin`): every write of the row changes it.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub row_version: i64,
    /// One of the asked job names that the module declares; `None` on the
    /// row that matched by module name.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub declares: Option<String>,
}

/// The modules named `modules` and those declaring any of `job_names` (one
/// row per declared name), share-locked so that none changes state until
/// the transaction ends. Index probes only: no manifest is read.
pub async fn job_name_owners(
    conn: &mut AsyncPgConnection,
    modules: &[String],
    job_names: &[String],
) -> QueryResult<Vec<JobNameOwner>> {
    use diesel::sql_types::{Array, Text};
    diesel::sql_query(
        r#"WITH candidates AS (
               SELECT id AS module, NULL::text AS job FROM modules WHERE name = ANY($1)
               UNION ALL
               SELECT "moduleId", name::text FROM module_job_types WHERE name = ANY($2)
           )
           SELECT m.id, m.name::text AS name, m.status, m.version::text AS version,
                  m.xmin::text::bigint AS row_version, c.job AS declares
           FROM candidates c JOIN modules m ON m.id = c.module
           FOR SHARE OF m"#,
    )
    .bind::<Array<Text>, _>(modules)
    .bind::<Array<Text>, _>(job_names)
    .load(conn)
    .await
}

/// The stored manifests of modules `ids`.
pub async fn manifests(
    conn: &mut AsyncPgConnection,
    ids: &[Uuid],
) -> QueryResult<Vec<(Uuid, serde_json::Value)>> {
    modules::table
        .filter(modules::id.eq_any(ids))
        .select((modules::id, modules::manifest))
        .load(conn)
        .await
}

/// Which of `names` name modules other than `except`.
pub async fn other_modules_named(
    conn: &mut AsyncPgConnection,
    names: &[String],
    except: Uuid,
) -> QueryResult<Vec<String>> {
    modules::table
        .filter(modules::name.eq_any(names))
        .filter(modules::id.ne(except))
        .select(modules::name)
        .load(conn)
        .await
}

/// A job type and the module declaring it.
#[derive(Debug, Clone, PartialEq, QueryableByName)]
pub struct DeclaredJobType {
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub job: String,
    #[diesel(sql_type = diesel::sql_types::Text)]
    pub module: String,
}

/// Which of `job_names` modules other than `except` declare.
pub async fn declared_by_others(
    conn: &mut AsyncPgConnection,
    job_names: &[String],
    except: Uuid,
) -> QueryResult<Vec<DeclaredJobType>> {
    diesel::sql_query(
        r#"SELECT t.name::text AS job, m.name::text AS module
           FROM module_job_types t JOIN modules m ON m.id = t."moduleId"
           WHERE t.name = ANY($1) AND t."moduleId" <> $2"#,
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(job_names)
    .bind::<diesel::sql_types::Uuid, _>(except)
    .load(conn)
    .await
}

/// A job type in the namespace of module `name` (`<name>.…`) that a module
/// other than `except` declares, if any.
pub async fn declared_in_namespace(
    conn: &mut AsyncPgConnection,
    name: &str,
    except: Uuid,
) -> QueryResult<Option<DeclaredJobType>> {
    diesel::sql_query(
        r#"SELECT t.name::text AS job, m.name::text AS module
           FROM module_job_types t JOIN modules m ON m.id = t."moduleId"
           WHERE left(t.name, length($1) + 1) = $1 || '.' AND t."moduleId" <> $2
           LIMIT 1"#,
    )
    .bind::<diesel::sql_types::Text, _>(name)
    .bind::<diesel::sql_types::Uuid, _>(except)
    .get_result(conn)
    .await
    .optional()
}

/// Records that module `id` declares `job_names` (on top of what it
/// declared).
pub async fn add_job_types(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    job_names: &[String],
) -> QueryResult<()> {
    diesel::sql_query(
        r#"INSERT INTO module_job_types (name, "moduleId")
           SELECT DISTINCT n, $2 FROM unnest($1::text[]) AS n
           ON CONFLICT DO NOTHING"#,
    )
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(job_names)
    .bind::<diesel::sql_types::Uuid, _>(id)
    .execute(conn)
    .await
    .map(drop)
}

/// Forgets the job types module `id` declared other than `job_names`.
pub async fn keep_job_types(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    job_names: &[String],
) -> QueryResult<()> {
    diesel::sql_query(
        r#"DELETE FROM module_job_types WHERE "moduleId" = $1 AND NOT (name = ANY($2))"#,
    )
    .bind::<diesel::sql_types::Uuid, _>(id)
    .bind::<diesel::sql_types::Array<diesel::sql_types::Text>, _>(job_names)
    .execute(conn)
    .await
    .map(drop)
}
