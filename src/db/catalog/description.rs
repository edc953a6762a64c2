//! The description of a schema: the tables (columns, keys, indexes) and enum
//! types a database must hold, as `'static` data so that a whole schema can
//! be written down as one constant ([`super::SEED_SCHEMA`]).

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
    pub(super) fn from_catalog_code(code: &str) -> Option<Self> {
        Some(match code {
            "a" => Self::NoAction,
            "r" => Self::Restrict,
            "c" => Self::Cascade,
            "n" => Self::SetNull,
            "d" => Self::SetDefault,
            _ => return None,
        })
    }

    pub(super) fn as_sql(self) -> &'static str {
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
    pub(super) fn table_names(&self) -> Vec<&'static str> {
        self.tables.iter().map(|t| t.name).collect()
    }

    pub(super) fn enum_names(&self) -> Vec<&'static str> {
        self.enums.iter().map(|e| e.name).collect()
    }
}
