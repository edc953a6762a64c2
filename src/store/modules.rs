//! The `modules` table: the registry of automation modules.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};

use crate::schema::modules;

/// The fields of a module that job creation needs.
#[derive(Debug, Clone, PartialEq, Queryable)]
pub struct ModuleGate {
    /// The lifecycle state's label (`ENABLED`, …).
    pub status: String,
    /// The manifest.
    pub manifest: serde_json::Value,
}

/// A module's state and manifest by name, share-locked so that it cannot
/// change state until the transaction ends.
pub async fn gate(conn: &mut AsyncPgConnection, name: &str) -> QueryResult<Option<ModuleGate>> {
    modules::table
        .filter(modules::name.eq(name))
        .select((
            diesel::dsl::sql::<diesel::sql_types::Text>("status::text"),
            modules::manifest,
        ))
        .for_share()
        .first::<(String, serde_json::Value)>(conn)
        .await
        .optional()
        .map(|row| row.map(|(status, manifest)| ModuleGate { status, manifest }))
}
