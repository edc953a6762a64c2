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
//!
//! # Where things are
//! - `description`: the types a schema is described with;
//! - `seed`: [`SEED_SCHEMA`], the seed schema written down (data only);
//! - `live`: reading a database's catalog ([`read_live_catalog`]);
//! - `diff`: comparing the two ([`differences`]);
//! - `bookkeeping`: the migration lock and diesel's table of applied
//!   migrations.

mod bookkeeping;
mod description;
mod diff;
mod live;
mod seed;

pub use self::{
    bookkeeping::{
        MIGRATION_LOCK_KEY, emails_equal_but_for_case, lock_migrations, migrations_recorded,
        record_applied, try_lock_migrations, unlock_migrations,
    },
    description::{
        ColumnDescription, EnumDescription, ForeignKeyDescription, IndexDescription,
        PrimaryKeyDescription, ReferentialAction, SchemaDescription, TableDescription,
    },
    diff::{Comparison, Difference, DifferenceKind, differences},
    live::{LiveCatalog, read_live_catalog},
    seed::SEED_SCHEMA,
};
