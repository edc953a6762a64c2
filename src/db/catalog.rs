//! The seed schema written down, and how far a live database is from it.
//!
//! Why this exists: the service must run on a database that the platform's
//! existing (Prisma-based) backend created. Such a database already holds the
//! seed schema but has no record of our migrations, so running migration 1
//! on it would fail (`type "ModuleStatus" already exists`). Before recording
//! migration 1 as applied without running it ("adopting" the database), we
//! check object by object that the database really holds what migration 1
//! would have created. [`SEED_SCHEMA`] is that schema, [`read_live_catalog`]
//! reads a database's catalog, and [`differences`] compares the two and says,
//! one human-readable line per object, what is missing, extra or different.
//!
//! # What is compared
//! Only the seven seed tables (`users`, `roles`, `user_roles`, `sessions`,
//! `modules`, `jobs`, `audit_logs`) and the seed's enum types, in the
//! database's current schema (where unqualified SQL, and so diesel, creates
//! and finds them). Other tables, such as Prisma's `_prisma_migrations` or the
//! tables of our later migrations, are not looked at. For each seed table:
//! - every column's type (with its precision, e.g. `timestamp(3)`),
//!   nullability, default and identity/generation; column order is not
//!   compared, since nothing reads columns by position;
//! - the primary key (name and columns);
//! - every other index by name: unique or not, and its definition as
//!   PostgreSQL prints it (method, keys, predicate);
//! - every foreign key by name: columns, referenced table and columns, and
//!   its ON DELETE and ON UPDATE rules;
//! - any other constraint (check, unique, exclusion): the seed has none, so
//!   any is a difference.
//!
//! Enum types are compared by their labels, in order (PostgreSQL compares
//! enum values by that order).
//!
//! # Additions made by our own later migrations
//! Later migrations may only add to the seed schema (see the design notes):
//! tables, indexes, columns that are nullable or have a default. A database
//! migrated by this service therefore differs from the seed by those
//! additions. Rather than keep a list of every object each later migration
//! adds (a list every new migration would have to remember to extend), the
//! comparison has two strictnesses, chosen by the caller ([`Comparison`]):
//! - [`Comparison::Exact`], used before adopting a database: anything
//!   missing, different *or extra* on the seed tables is reported. Adoption
//!   claims that the database is exactly what migration 1 creates; an extra
//!   index or column is drift we cannot vouch for (and may clash with what a
//!   later migration of ours creates).
//! - [`Comparison::AllowAdditions`], used to check a database migrated by us:
//!   extra indexes, and extra columns that are nullable or have a default,
//!   are accepted; everything else (missing or changed objects, an extra
//!   column every insert would have to fill, extra foreign keys or
//!   constraints, changed enum labels) is still reported. This is the rule
//!   "later migrations only add, never break" written as a check.
//!
//! # Why the SQL is here
//! All hand-written SQL of schema management (catalog reads, diesel's
//! bookkeeping table, the migration lock) lives in this module, so
//! `migrations.rs` reads as the procedure it is. The catalog is read through
//! `pg_catalog` rather than `information_schema` because only the former
//! shows type modifiers as declared (`timestamp(3)`), index definitions and
//! enum labels. Every query runs on a synchronous diesel connection: schema
//! management runs on a blocking thread, beside diesel's migration harness.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt,
};

use diesel::{
    QueryResult, QueryableByName, RunQueryDsl as _,
    connection::LoadConnection,
    migration::MigrationConnection,
    pg::Pg,
    sql_query,
    sql_types::{Array, BigInt, Bool, Nullable, Text},
};

// ---------------------------------------------------------------------------
// The description of a schema
// ---------------------------------------------------------------------------

/// Tables and enum types a schema must hold.
#[derive(Debug, Clone, Copy)]
pub struct SchemaDescription {
    /// The tables, with everything on them.
    pub tables: &'static [TableDescription],
    /// The enum types, with their labels.
    pub enums: &'static [EnumDescription],
}

/// One table: its columns, keys and indexes.
#[derive(Debug, Clone, Copy)]
pub struct TableDescription {
    /// Table name, as in the database.
    pub name: &'static str,
    /// Every column, in declaration order.
    pub columns: &'static [ColumnDescription],
    /// The primary key.
    pub primary_key: PrimaryKeyDescription,
    /// Indexes other than the primary key's.
    pub indexes: &'static [IndexDescription],
    /// Foreign keys from this table.
    pub foreign_keys: &'static [ForeignKeyDescription],
}

/// One column. Types are spelled as PostgreSQL's `format_type` prints them,
/// so that comparing is string equality and messages show what `psql` shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ColumnDescription {
    /// Column name (the seed's camelCase, as stored).
    pub name: &'static str,
    /// Type as `format_type` prints it, e.g. `timestamp(3) without time zone`.
    pub data_type: &'static str,
    /// Whether NULL is allowed.
    pub nullable: bool,
    /// The default expression as `pg_get_expr` prints it, if any.
    pub default: Option<&'static str>,
}

/// A primary key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PrimaryKeyDescription {
    /// Constraint name.
    pub name: &'static str,
    /// Its columns, in key order.
    pub columns: &'static [&'static str],
}

/// An index (other than a primary key's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexDescription {
    /// Index name.
    pub name: &'static str,
    /// Whether it is UNIQUE.
    pub unique: bool,
    /// Everything after `USING` in `pg_get_indexdef`: method and keys, e.g.
    /// `btree ("userId", "roleId")`. Identifiers are quoted only where
    /// PostgreSQL quotes them (mixed case, keywords).
    pub definition: &'static str,
}

/// A foreign key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForeignKeyDescription {
    /// Constraint name.
    pub name: &'static str,
    /// Referencing columns, in key order.
    pub columns: &'static [&'static str],
    /// Referenced table.
    pub references: &'static str,
    /// Referenced columns, in key order.
    pub referenced_columns: &'static [&'static str],
    /// What deleting the referenced row does.
    pub on_delete: ReferentialAction,
    /// What changing the referenced key does.
    pub on_update: ReferentialAction,
}

/// What a foreign key does when its referenced row goes or changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReferentialAction {
    /// `NO ACTION` (PostgreSQL's default).
    NoAction,
    /// `RESTRICT`.
    Restrict,
    /// `CASCADE`.
    Cascade,
    /// `SET NULL`.
    SetNull,
    /// `SET DEFAULT`.
    SetDefault,
}

impl ReferentialAction {
    /// From `pg_constraint.confdeltype` / `confupdtype`.
    fn from_catalog_code(code: &str) -> Option<Self> {
        Some(match code {
            "a" => Self::NoAction,
            "r" => Self::Restrict,
            "c" => Self::Cascade,
            "n" => Self::SetNull,
            "d" => Self::SetDefault,
            _ => return None,
        })
    }

    fn as_sql(self) -> &'static str {
        match self {
            Self::NoAction => "NO ACTION",
            Self::Restrict => "RESTRICT",
            Self::Cascade => "CASCADE",
            Self::SetNull => "SET NULL",
            Self::SetDefault => "SET DEFAULT",
        }
    }
}

/// An enum type and its labels, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnumDescription {
    /// Type name (the seed's PascalCase, as stored).
    pub name: &'static str,
    /// Labels in sort order.
    pub labels: &'static [&'static str],
}

impl SchemaDescription {
    fn table_names(&self) -> Vec<&'static str> {
        self.tables.iter().map(|t| t.name).collect()
    }

    fn enum_names(&self) -> Vec<&'static str> {
        self.enums.iter().map(|e| e.name).collect()
    }
}

// ---------------------------------------------------------------------------
// The seed schema (migrations/00000000000001_seed_schema/up.sql)
// ---------------------------------------------------------------------------

const UUID: &str = "uuid";
const VARCHAR: &str = "character varying";
const TEXT: &str = "text";
const JSONB: &str = "jsonb";
const BOOLEAN: &str = "boolean";
const INTEGER: &str = "integer";
/// Prisma's `DateTime`: millisecond precision, no time zone (always UTC).
const TIMESTAMP: &str = "timestamp(3) without time zone";
const NOW: &str = "CURRENT_TIMESTAMP";

/// `NOT NULL`, no default.
const fn required(name: &'static str, data_type: &'static str) -> ColumnDescription {
    ColumnDescription {
        name,
        data_type,
        nullable: false,
        default: None,
    }
}

/// Nullable, no default.
const fn optional(name: &'static str, data_type: &'static str) -> ColumnDescription {
    ColumnDescription {
        name,
        data_type,
        nullable: true,
        default: None,
    }
}

/// `NOT NULL` with a default.
const fn defaulted(
    name: &'static str,
    data_type: &'static str,
    default: &'static str,
) -> ColumnDescription {
    ColumnDescription {
        name,
        data_type,
        nullable: false,
        default: Some(default),
    }
}

/// Prisma names a table's primary key `<table>_pkey` and puts it on `id`.
const fn primary_key_on_id(name: &'static str) -> PrimaryKeyDescription {
    PrimaryKeyDescription {
        name,
        columns: &["id"],
    }
}

const fn unique_index(name: &'static str, definition: &'static str) -> IndexDescription {
    IndexDescription {
        name,
        unique: true,
        definition,
    }
}

const fn plain_index(name: &'static str, definition: &'static str) -> IndexDescription {
    IndexDescription {
        name,
        unique: false,
        definition,
    }
}

/// A single-column foreign key to `<table>.id` with ON UPDATE CASCADE, as
/// Prisma creates relations.
const fn foreign_key(
    name: &'static str,
    column: &'static [&'static str],
    references: &'static str,
    on_delete: ReferentialAction,
) -> ForeignKeyDescription {
    ForeignKeyDescription {
        name,
        columns: column,
        references,
        referenced_columns: &["id"],
        on_delete,
        on_update: ReferentialAction::Cascade,
    }
}

/// The schema migration 1 creates, and the platform's existing backend
/// created: the seed document's tables, exactly.
pub const SEED_SCHEMA: SchemaDescription = SchemaDescription {
    tables: &[
        TableDescription {
            name: "users",
            columns: &[
                required("id", UUID),
                required("email", VARCHAR),
                required("username", VARCHAR),
                required("password", VARCHAR),
                optional("firstName", VARCHAR),
                optional("lastName", VARCHAR),
                defaulted("isActive", BOOLEAN, "true"),
                defaulted("createdAt", TIMESTAMP, NOW),
                required("updatedAt", TIMESTAMP),
                optional("lastLogin", TIMESTAMP),
            ],
            primary_key: primary_key_on_id("users_pkey"),
            indexes: &[
                unique_index("users_email_key", "btree (email)"),
                unique_index("users_username_key", "btree (username)"),
            ],
            foreign_keys: &[],
        },
        TableDescription {
            name: "roles",
            columns: &[
                required("id", UUID),
                required("name", VARCHAR),
                required("description", TEXT),
                required("permissions", JSONB),
                defaulted("createdAt", TIMESTAMP, NOW),
                required("updatedAt", TIMESTAMP),
            ],
            primary_key: primary_key_on_id("roles_pkey"),
            indexes: &[unique_index("roles_name_key", "btree (name)")],
            foreign_keys: &[],
        },
        TableDescription {
            name: "user_roles",
            columns: &[
                required("id", UUID),
                required("userId", UUID),
                required("roleId", UUID),
                defaulted("assignedAt", TIMESTAMP, NOW),
                optional("assignedBy", UUID),
            ],
            primary_key: primary_key_on_id("user_roles_pkey"),
            indexes: &[unique_index(
                "user_roles_userId_roleId_key",
                r#"btree ("userId", "roleId")"#,
            )],
            foreign_keys: &[
                foreign_key(
                    "user_roles_userId_fkey",
                    &["userId"],
                    "users",
                    ReferentialAction::Cascade,
                ),
                foreign_key(
                    "user_roles_roleId_fkey",
                    &["roleId"],
                    "roles",
                    ReferentialAction::Cascade,
                ),
            ],
        },
        TableDescription {
            name: "sessions",
            columns: &[
                required("id", UUID),
                required("userId", UUID),
                required("refreshToken", VARCHAR),
                required("userAgent", TEXT),
                required("ipAddress", VARCHAR),
                required("expiresAt", TIMESTAMP),
                defaulted("createdAt", TIMESTAMP, NOW),
                optional("revokedAt", TIMESTAMP),
            ],
            primary_key: primary_key_on_id("sessions_pkey"),
            indexes: &[unique_index(
                "sessions_refreshToken_key",
                r#"btree ("refreshToken")"#,
            )],
            foreign_keys: &[foreign_key(
                "sessions_userId_fkey",
                &["userId"],
                "users",
                ReferentialAction::Cascade,
            )],
        },
        TableDescription {
            name: "modules",
            columns: &[
                required("id", UUID),
                required("name", VARCHAR),
                required("version", VARCHAR),
                required("displayName", VARCHAR),
                required("description", TEXT),
                required("status", r#""ModuleStatus""#),
                required("manifest", JSONB),
                optional("installedAt", TIMESTAMP),
                optional("enabledAt", TIMESTAMP),
                optional("disabledAt", TIMESTAMP),
                required("updatedAt", TIMESTAMP),
                defaulted("createdAt", TIMESTAMP, NOW),
            ],
            primary_key: primary_key_on_id("modules_pkey"),
            indexes: &[unique_index("modules_name_key", "btree (name)")],
            foreign_keys: &[],
        },
        TableDescription {
            name: "jobs",
            columns: &[
                required("id", UUID),
                required("name", VARCHAR),
                optional("moduleName", VARCHAR),
                required("status", r#""JobStatus""#),
                defaulted("priority", INTEGER, "0"),
                required("payload", JSONB),
                optional("result", JSONB),
                optional("error", JSONB),
                defaulted("attempts", INTEGER, "0"),
                defaulted("maxAttempts", INTEGER, "3"),
                required("scheduledAt", TIMESTAMP),
                optional("startedAt", TIMESTAMP),
                optional("completedAt", TIMESTAMP),
                optional("failedAt", TIMESTAMP),
                defaulted("createdAt", TIMESTAMP, NOW),
                required("updatedAt", TIMESTAMP),
            ],
            primary_key: primary_key_on_id("jobs_pkey"),
            indexes: &[
                plain_index("jobs_status_idx", "btree (status)"),
                plain_index("jobs_moduleName_idx", r#"btree ("moduleName")"#),
                plain_index("jobs_scheduledAt_idx", r#"btree ("scheduledAt")"#),
            ],
            foreign_keys: &[],
        },
        TableDescription {
            name: "audit_logs",
            columns: &[
                required("id", UUID),
                optional("userId", UUID),
                required("action", VARCHAR),
                required("resource", VARCHAR),
                required("outcome", VARCHAR),
                required("details", JSONB),
                required("ipAddress", VARCHAR),
                required("userAgent", TEXT),
                defaulted("createdAt", TIMESTAMP, NOW),
            ],
            primary_key: primary_key_on_id("audit_logs_pkey"),
            indexes: &[
                plain_index("audit_logs_userId_idx", r#"btree ("userId")"#),
                plain_index("audit_logs_action_idx", "btree (action)"),
                plain_index("audit_logs_createdAt_idx", r#"btree ("createdAt")"#),
            ],
            foreign_keys: &[foreign_key(
                "audit_logs_userId_fkey",
                &["userId"],
                "users",
                ReferentialAction::SetNull,
            )],
        },
    ],
    enums: &[
        EnumDescription {
            name: "ModuleStatus",
            labels: &[
                "REGISTERED",
                "INSTALLING",
                "ENABLED",
                "DISABLED",
                "UPDATING",
                "REMOVING",
            ],
        },
        EnumDescription {
            name: "JobStatus",
            labels: &["PENDING", "RUNNING", "COMPLETED", "FAILED", "CANCELLED"],
        },
    ],
};

// ---------------------------------------------------------------------------
// Reading a live database
// ---------------------------------------------------------------------------

/// What a database holds of a described schema's tables and enum types.
#[derive(Debug, Default, Clone)]
pub struct LiveCatalog {
    tables: BTreeSet<String>,
    /// Keyed by (table, column).
    columns: BTreeMap<(String, String), LiveColumn>,
    /// Keyed by (table, constraint name).
    constraints: BTreeMap<(String, String), LiveConstraint>,
    /// Keyed by (table, index name).
    indexes: BTreeMap<(String, String), LiveIndex>,
    /// Labels by enum type name.
    enums: BTreeMap<String, Vec<String>>,
}

impl LiveCatalog {
    /// Whether the database holds any of the schema's tables or enum types:
    /// then it is not empty ground for migration 1, and must be compared.
    pub fn holds_any_of(&self, schema: &SchemaDescription) -> bool {
        schema.tables.iter().any(|t| self.tables.contains(t.name))
            || schema.enums.iter().any(|e| self.enums.contains_key(e.name))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveColumn {
    data_type: String,
    nullable: bool,
    default: Option<String>,
    /// `GENERATED … AS IDENTITY` or `GENERATED ALWAYS AS (…) STORED`.
    generated: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveConstraint {
    /// `p` primary key, `f` foreign key, `u` unique, `c` check, `x` exclusion.
    kind: String,
    columns: Vec<String>,
    referenced_table: Option<String>,
    referenced_columns: Vec<String>,
    on_delete: Option<ReferentialAction>,
    on_update: Option<ReferentialAction>,
    /// As `pg_get_constraintdef` prints it, for messages.
    definition: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct LiveIndex {
    unique: bool,
    definition: String,
}

#[derive(QueryableByName)]
struct NameRow {
    #[diesel(sql_type = Text)]
    name: String,
}

#[derive(QueryableByName)]
struct ColumnRow {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    column_name: String,
    #[diesel(sql_type = Text)]
    data_type: String,
    #[diesel(sql_type = Bool)]
    nullable: bool,
    #[diesel(sql_type = Nullable<Text>)]
    default_value: Option<String>,
    #[diesel(sql_type = Nullable<Text>)]
    generated: Option<String>,
}

#[derive(QueryableByName)]
struct ConstraintRow {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    constraint_name: String,
    #[diesel(sql_type = Text)]
    kind: String,
    #[diesel(sql_type = Array<Text>)]
    columns: Vec<String>,
    #[diesel(sql_type = Nullable<Text>)]
    referenced_table: Option<String>,
    #[diesel(sql_type = Array<Text>)]
    referenced_columns: Vec<String>,
    #[diesel(sql_type = Text)]
    on_delete: String,
    #[diesel(sql_type = Text)]
    on_update: String,
    #[diesel(sql_type = Text)]
    definition: String,
}

#[derive(QueryableByName)]
struct IndexRow {
    #[diesel(sql_type = Text)]
    table_name: String,
    #[diesel(sql_type = Text)]
    index_name: String,
    #[diesel(sql_type = Bool)]
    is_unique: bool,
    #[diesel(sql_type = Text)]
    definition: String,
}

#[derive(QueryableByName)]
struct EnumRow {
    #[diesel(sql_type = Text)]
    name: String,
    #[diesel(sql_type = Array<Text>)]
    labels: Vec<String>,
}

/// Ordinary and partitioned tables of the current schema among `$1`.
const TABLES_SQL: &str = "
    SELECT c.relname::text AS name
    FROM pg_class c
    JOIN pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = current_schema()
      AND c.relkind IN ('r', 'p')
      AND c.relname = ANY ($1)";

/// Live columns of the tables `$1`. A generated column keeps its expression
/// where defaults are kept, and an identity column has no default at all;
/// both are read as their generation instead, since inserts treat them
/// differently from a column with a default.
const COLUMNS_SQL: &str = "
    SELECT c.relname::text AS table_name,
           a.attname::text AS column_name,
           format_type(a.atttypid, a.atttypmod) AS data_type,
           NOT a.attnotnull AS nullable,
           CASE WHEN a.attgenerated = '' THEN pg_get_expr(d.adbin, d.adrelid) END AS default_value,
           CASE
               WHEN a.attidentity = 'a' THEN 'GENERATED ALWAYS AS IDENTITY'
               WHEN a.attidentity = 'd' THEN 'GENERATED BY DEFAULT AS IDENTITY'
               WHEN a.attgenerated = 's'
                   THEN 'GENERATED ALWAYS AS (' || pg_get_expr(d.adbin, d.adrelid) || ') STORED'
           END AS generated
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
    WHERE n.nspname = current_schema()
      AND c.relkind IN ('r', 'p')
      AND c.relname = ANY ($1)
      AND a.attnum > 0
      AND NOT a.attisdropped";

/// Every constraint on the tables `$1` except NOT NULL (which PostgreSQL 15
/// keeps on the column): primary and foreign keys with their columns in key
/// order, and anything else with its definition.
const CONSTRAINTS_SQL: &str = "
    SELECT t.relname::text AS table_name,
           k.conname::text AS constraint_name,
           k.contype::text AS kind,
           ARRAY(SELECT a.attname::text
                 FROM unnest(k.conkey) WITH ORDINALITY AS key(attnum, position)
                 JOIN pg_attribute a ON a.attrelid = k.conrelid AND a.attnum = key.attnum
                 ORDER BY key.position) AS columns,
           r.relname::text AS referenced_table,
           ARRAY(SELECT a.attname::text
                 FROM unnest(k.confkey) WITH ORDINALITY AS key(attnum, position)
                 JOIN pg_attribute a ON a.attrelid = k.confrelid AND a.attnum = key.attnum
                 ORDER BY key.position) AS referenced_columns,
           k.confdeltype::text AS on_delete,
           k.confupdtype::text AS on_update,
           pg_get_constraintdef(k.oid) AS definition
    FROM pg_constraint k
    JOIN pg_class t ON t.oid = k.conrelid
    JOIN pg_namespace n ON n.oid = t.relnamespace
    LEFT JOIN pg_class r ON r.oid = k.confrelid
    WHERE n.nspname = current_schema()
      AND t.relname = ANY ($1)";

/// Indexes on the tables `$1`, except those that back a primary key, unique
/// or exclusion constraint (compared as constraints). The definition is what
/// `pg_get_indexdef` prints after `USING`: method, keys, INCLUDE, WHERE.
const INDEXES_SQL: &str = "
    SELECT t.relname::text AS table_name,
           i.relname::text AS index_name,
           x.indisunique AS is_unique,
           substring(pg_get_indexdef(x.indexrelid) FROM ' USING (.*)$') AS definition
    FROM pg_index x
    JOIN pg_class i ON i.oid = x.indexrelid
    JOIN pg_class t ON t.oid = x.indrelid
    JOIN pg_namespace n ON n.oid = t.relnamespace
    WHERE n.nspname = current_schema()
      AND t.relname = ANY ($1)
      AND NOT EXISTS (SELECT 1 FROM pg_constraint k
                      WHERE k.conindid = x.indexrelid
                        AND k.conrelid = x.indrelid
                        AND k.contype IN ('p', 'u', 'x'))";

/// Enum types of the current schema among `$1`, with labels in sort order.
const ENUMS_SQL: &str = "
    SELECT t.typname::text AS name,
           ARRAY(SELECT e.enumlabel::text FROM pg_enum e
                 WHERE e.enumtypid = t.oid
                 ORDER BY e.enumsortorder) AS labels
    FROM pg_type t
    JOIN pg_namespace n ON n.oid = t.typnamespace
    WHERE n.nspname = current_schema()
      AND t.typtype = 'e'
      AND t.typname = ANY ($1)";

/// Reads what the database holds of `schema`'s tables and enum types.
///
/// Synchronous: schema management runs on a blocking thread (diesel's
/// migration harness is synchronous), so it reads on that same connection.
pub fn read_live_catalog<C>(conn: &mut C, schema: &SchemaDescription) -> QueryResult<LiveCatalog>
where
    C: LoadConnection<Backend = Pg>,
{
    let tables = schema.table_names();
    let in_tables = |sql: &'static str| sql_query(sql).bind::<Array<Text>, _>(tables.clone());

    let mut live = LiveCatalog::default();
    for row in in_tables(TABLES_SQL).load::<NameRow>(conn)? {
        live.tables.insert(row.name);
    }
    for row in in_tables(COLUMNS_SQL).load::<ColumnRow>(conn)? {
        live.columns.insert(
            (row.table_name, row.column_name),
            LiveColumn {
                data_type: row.data_type,
                nullable: row.nullable,
                default: row.default_value,
                generated: row.generated,
            },
        );
    }
    for row in in_tables(CONSTRAINTS_SQL).load::<ConstraintRow>(conn)? {
        live.constraints.insert(
            (row.table_name, row.constraint_name),
            LiveConstraint {
                kind: row.kind,
                columns: row.columns,
                referenced_table: row.referenced_table,
                referenced_columns: row.referenced_columns,
                on_delete: ReferentialAction::from_catalog_code(&row.on_delete),
                on_update: ReferentialAction::from_catalog_code(&row.on_update),
                definition: row.definition,
            },
        );
    }
    for row in in_tables(INDEXES_SQL).load::<IndexRow>(conn)? {
        live.indexes.insert(
            (row.table_name, row.index_name),
            LiveIndex {
                unique: row.is_unique,
                definition: row.definition,
            },
        );
    }
    let enums = sql_query(ENUMS_SQL)
        .bind::<Array<Text>, _>(schema.enum_names())
        .load::<EnumRow>(conn)?;
    for row in enums {
        live.enums.insert(row.name, row.labels);
    }
    Ok(live)
}

// ---------------------------------------------------------------------------
// Comparing
// ---------------------------------------------------------------------------

/// How strict [`differences`] is about objects the description lacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    /// Extra columns, indexes and constraints on the described tables are
    /// differences. For adopting a database: it must be exactly the seed.
    Exact,
    /// Extra indexes, and extra columns that are nullable or have a default,
    /// are accepted: the additions our later migrations are allowed to make.
    AllowAdditions,
}

/// How an object differs from its description.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DifferenceKind {
    /// Described but not in the database.
    Missing,
    /// In the database but not described.
    Extra,
    /// In both, not alike.
    Changed,
}

/// One difference between a database and a schema description, shown as one
/// line: `column users.lastLogin: missing (expected timestamp(3) without
/// time zone NULL)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Difference {
    /// The object, e.g. `column users.email` or `index users_email_key on users`.
    pub object: String,
    /// What is wrong with it.
    pub kind: DifferenceKind,
    /// The description's version, if it has one.
    pub expected: Option<String>,
    /// The database's version, if it has one.
    pub found: Option<String>,
}

impl Difference {
    fn missing(object: String, expected: Option<String>) -> Self {
        Self {
            object,
            kind: DifferenceKind::Missing,
            expected,
            found: None,
        }
    }

    fn extra(object: String, found: String) -> Self {
        Self {
            object,
            kind: DifferenceKind::Extra,
            expected: None,
            found: Some(found),
        }
    }

    fn changed(object: String, expected: String, found: String) -> Self {
        Self {
            object,
            kind: DifferenceKind::Changed,
            expected: Some(expected),
            found: Some(found),
        }
    }
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let object = &self.object;
        let expected = self.expected.as_deref().unwrap_or_default();
        let found = self.found.as_deref().unwrap_or_default();
        match self.kind {
            DifferenceKind::Missing if expected.is_empty() => write!(f, "{object}: missing"),
            DifferenceKind::Missing => write!(f, "{object}: missing (expected {expected})"),
            DifferenceKind::Extra => write!(f, "{object}: not in the seed schema (found {found})"),
            DifferenceKind::Changed => write!(f, "{object}: expected {expected}, found {found}"),
        }
    }
}

fn show_column(
    data_type: &str,
    nullable: bool,
    default: Option<&str>,
    generated: Option<&str>,
) -> String {
    let mut shown = format!("{data_type} {}", if nullable { "NULL" } else { "NOT NULL" });
    if let Some(default) = default {
        shown.push_str(&format!(" DEFAULT {default}"));
    }
    if let Some(generated) = generated {
        shown.push_str(&format!(" {generated}"));
    }
    shown
}

fn show_index(unique: bool, definition: &str) -> String {
    if unique {
        format!("UNIQUE {definition}")
    } else {
        definition.to_owned()
    }
}

fn show_key<S: AsRef<str>>(name: &str, columns: &[S]) -> String {
    let columns: Vec<&str> = columns.iter().map(AsRef::as_ref).collect();
    format!("{name} ({})", columns.join(", "))
}

fn show_action(action: Option<ReferentialAction>) -> &'static str {
    action.map_or("?", ReferentialAction::as_sql)
}

fn show_foreign_key<S: AsRef<str>>(
    columns: &[S],
    references: &str,
    referenced_columns: &[S],
    on_delete: Option<ReferentialAction>,
    on_update: Option<ReferentialAction>,
) -> String {
    let list = |names: &[S]| {
        names
            .iter()
            .map(AsRef::as_ref)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "({}) REFERENCES {references} ({}) ON DELETE {} ON UPDATE {}",
        list(columns),
        list(referenced_columns),
        show_action(on_delete),
        show_action(on_update),
    )
}

/// Everything in which `live` differs from `expected`, one entry per object,
/// tables in the description's order, then enum types. Empty when the
/// database holds the described schema (under `comparison`'s strictness).
pub fn differences(
    expected: &SchemaDescription,
    live: &LiveCatalog,
    comparison: Comparison,
) -> Vec<Difference> {
    let mut found = Vec::new();
    for table in expected.tables {
        if live.tables.contains(table.name) {
            compare_columns(table, live, comparison, &mut found);
            compare_constraints(table, live, &mut found);
            compare_indexes(table, live, comparison, &mut found);
        } else {
            found.push(Difference::missing(format!("table {}", table.name), None));
        }
    }
    for enum_type in expected.enums {
        let object = format!("enum type {}", enum_type.name);
        let labels = enum_type.labels.join(", ");
        match live.enums.get(enum_type.name) {
            None => found.push(Difference::missing(
                object,
                Some(format!("labels {labels}")),
            )),
            Some(live_labels) if live_labels != enum_type.labels => found.push(
                Difference::changed(object, format!("labels {labels}"), live_labels.join(", ")),
            ),
            Some(_) => {}
        }
    }
    found
}

/// The live objects of one table in a (table, name)-keyed map.
fn of_table<'a, T>(
    map: &'a BTreeMap<(String, String), T>,
    table: &'a str,
) -> impl Iterator<Item = (&'a str, &'a T)> + 'a {
    map.iter()
        .filter(move |((t, _), _)| t == table)
        .map(|((_, name), value)| (name.as_str(), value))
}

fn compare_columns(
    table: &TableDescription,
    live: &LiveCatalog,
    comparison: Comparison,
    found: &mut Vec<Difference>,
) {
    for column in table.columns {
        let object = format!("column {}.{}", table.name, column.name);
        let expected = show_column(column.data_type, column.nullable, column.default, None);
        match live
            .columns
            .get(&(table.name.to_owned(), column.name.to_owned()))
        {
            None => found.push(Difference::missing(object, Some(expected))),
            Some(actual) => {
                let shown = show_column(
                    &actual.data_type,
                    actual.nullable,
                    actual.default.as_deref(),
                    actual.generated.as_deref(),
                );
                if shown != expected {
                    found.push(Difference::changed(object, expected, shown));
                }
            }
        }
    }
    for (name, actual) in of_table(&live.columns, table.name) {
        if table.columns.iter().any(|c| c.name == name) {
            continue;
        }
        // An insert that does not name the column still works when it is
        // nullable or has a default: the addition breaks no existing writer.
        let harmless = actual.nullable || actual.default.is_some();
        if comparison == Comparison::Exact || !harmless {
            found.push(Difference::extra(
                format!("column {}.{name}", table.name),
                show_column(
                    &actual.data_type,
                    actual.nullable,
                    actual.default.as_deref(),
                    actual.generated.as_deref(),
                ),
            ));
        }
    }
}

/// Primary key, foreign keys, and any other constraint (the seed has none,
/// so any other is extra, in both strictnesses: it restricts writes).
fn compare_constraints(table: &TableDescription, live: &LiveCatalog, found: &mut Vec<Difference>) {
    let primary_key = &table.primary_key;
    let pk_object = format!("primary key of {}", table.name);
    let expected_pk = show_key(primary_key.name, primary_key.columns);
    match of_table(&live.constraints, table.name).find(|(_, c)| c.kind == "p") {
        None => found.push(Difference::missing(pk_object, Some(expected_pk))),
        Some((name, actual)) => {
            let shown = show_key(name, &actual.columns);
            if shown != expected_pk {
                found.push(Difference::changed(pk_object, expected_pk, shown));
            }
        }
    }

    for key in table.foreign_keys {
        let object = format!("foreign key {} on {}", key.name, table.name);
        let expected = show_foreign_key(
            key.columns,
            key.references,
            key.referenced_columns,
            Some(key.on_delete),
            Some(key.on_update),
        );
        match live
            .constraints
            .get(&(table.name.to_owned(), key.name.to_owned()))
        {
            Some(actual) if actual.kind == "f" => {
                let shown = show_foreign_key(
                    &actual.columns,
                    actual.referenced_table.as_deref().unwrap_or("?"),
                    &actual.referenced_columns,
                    actual.on_delete,
                    actual.on_update,
                );
                if shown != expected {
                    found.push(Difference::changed(object, expected, shown));
                }
            }
            _ => found.push(Difference::missing(object, Some(expected))),
        }
    }

    for (name, actual) in of_table(&live.constraints, table.name) {
        let described = match actual.kind.as_str() {
            "p" => true,
            "f" => table.foreign_keys.iter().any(|k| k.name == name),
            _ => false,
        };
        if !described {
            let kind = if actual.kind == "f" {
                "foreign key"
            } else {
                "constraint"
            };
            found.push(Difference::extra(
                format!("{kind} {name} on {}", table.name),
                actual.definition.clone(),
            ));
        }
    }
}

fn compare_indexes(
    table: &TableDescription,
    live: &LiveCatalog,
    comparison: Comparison,
    found: &mut Vec<Difference>,
) {
    for index in table.indexes {
        let object = format!("index {} on {}", index.name, table.name);
        let expected = show_index(index.unique, index.definition);
        match live
            .indexes
            .get(&(table.name.to_owned(), index.name.to_owned()))
        {
            None => found.push(Difference::missing(object, Some(expected))),
            Some(actual) => {
                let shown = show_index(actual.unique, &actual.definition);
                if shown != expected {
                    found.push(Difference::changed(object, expected, shown));
                }
            }
        }
    }
    if comparison == Comparison::Exact {
        for (name, actual) in of_table(&live.indexes, table.name) {
            if !table.indexes.iter().any(|i| i.name == name) {
                found.push(Difference::extra(
                    format!("index {name} on {}", table.name),
                    show_index(actual.unique, &actual.definition),
                ));
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Migration bookkeeping
// ---------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;

    /// A live catalog holding exactly the seed schema, built from the
    /// description itself.
    fn seed_as_live() -> LiveCatalog {
        let mut live = LiveCatalog::default();
        for table in SEED_SCHEMA.tables {
            let name = table.name.to_owned();
            live.tables.insert(name.clone());
            for column in table.columns {
                live.columns.insert(
                    (name.clone(), column.name.to_owned()),
                    LiveColumn {
                        data_type: column.data_type.to_owned(),
                        nullable: column.nullable,
                        default: column.default.map(str::to_owned),
                        generated: None,
                    },
                );
            }
            live.constraints.insert(
                (name.clone(), table.primary_key.name.to_owned()),
                LiveConstraint {
                    kind: "p".into(),
                    columns: table
                        .primary_key
                        .columns
                        .iter()
                        .map(|c| c.to_string())
                        .collect(),
                    referenced_table: None,
                    referenced_columns: vec![],
                    on_delete: None,
                    on_update: None,
                    definition: "PRIMARY KEY (id)".into(),
                },
            );
            for key in table.foreign_keys {
                live.constraints.insert(
                    (name.clone(), key.name.to_owned()),
                    LiveConstraint {
                        kind: "f".into(),
                        columns: key.columns.iter().map(|c| c.to_string()).collect(),
                        referenced_table: Some(key.references.to_owned()),
                        referenced_columns: key
                            .referenced_columns
                            .iter()
                            .map(|c| c.to_string())
                            .collect(),
                        on_delete: Some(key.on_delete),
                        on_update: Some(key.on_update),
                        definition: String::new(),
                    },
                );
            }
            for index in table.indexes {
                live.indexes.insert(
                    (name.clone(), index.name.to_owned()),
                    LiveIndex {
                        unique: index.unique,
                        definition: index.definition.to_owned(),
                    },
                );
            }
        }
        for enum_type in SEED_SCHEMA.enums {
            live.enums.insert(
                enum_type.name.to_owned(),
                enum_type.labels.iter().map(|l| l.to_string()).collect(),
            );
        }
        live
    }

    fn lines(live: &LiveCatalog, comparison: Comparison) -> Vec<String> {
        differences(&SEED_SCHEMA, live, comparison)
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn the_seed_matches_itself() {
        let live = seed_as_live();
        assert!(live.holds_any_of(&SEED_SCHEMA));
        assert_eq!(lines(&live, Comparison::Exact), Vec::<String>::new());
    }

    #[test]
    fn an_empty_database_lacks_every_table_and_type() {
        let live = LiveCatalog::default();
        assert!(!live.holds_any_of(&SEED_SCHEMA));
        let found = lines(&live, Comparison::Exact);
        assert_eq!(
            found.len(),
            SEED_SCHEMA.tables.len() + SEED_SCHEMA.enums.len()
        );
        assert_eq!(found[0], "table users: missing");
    }

    #[test]
    fn changes_are_named_with_expected_and_found() {
        let mut live = seed_as_live();
        live.columns
            .get_mut(&("users".to_owned(), "email".to_owned()))
            .unwrap()
            .data_type = "text".into();
        live.enums.get_mut("JobStatus").unwrap().pop();
        live.constraints
            .get_mut(&("audit_logs".to_owned(), "audit_logs_userId_fkey".to_owned()))
            .unwrap()
            .on_delete = Some(ReferentialAction::Cascade);
        assert_eq!(
            lines(&live, Comparison::Exact),
            [
                "column users.email: expected character varying NOT NULL, found text NOT NULL",
                "foreign key audit_logs_userId_fkey on audit_logs: expected (userId) REFERENCES \
                 users (id) ON DELETE SET NULL ON UPDATE CASCADE, found (userId) REFERENCES users \
                 (id) ON DELETE CASCADE ON UPDATE CASCADE",
                "enum type JobStatus: expected labels PENDING, RUNNING, COMPLETED, FAILED, \
                 CANCELLED, found PENDING, RUNNING, COMPLETED, FAILED",
            ]
        );
    }

    #[test]
    fn additions_are_accepted_only_when_asked_and_harmless() {
        let mut live = seed_as_live();
        live.indexes.insert(
            ("sessions".into(), "sessions_userId_idx".into()),
            LiveIndex {
                unique: false,
                definition: r#"btree ("userId")"#.into(),
            },
        );
        let column = |nullable| LiveColumn {
            data_type: "text".into(),
            nullable,
            default: None,
            generated: None,
        };
        live.columns
            .insert(("jobs".into(), "note".into()), column(true));
        assert_eq!(
            lines(&live, Comparison::Exact),
            [
                r#"index sessions_userId_idx on sessions: not in the seed schema (found btree ("userId"))"#,
                "column jobs.note: not in the seed schema (found text NULL)",
            ]
        );
        assert!(lines(&live, Comparison::AllowAdditions).is_empty());

        live.columns
            .insert(("jobs".into(), "owner".into()), column(false));
        assert_eq!(
            lines(&live, Comparison::AllowAdditions),
            ["column jobs.owner: not in the seed schema (found text NOT NULL)"]
        );
    }
}
