//! The seed schema (`migrations/00000000000001_seed_schema/up.sql`) written
//! down as a [`SchemaDescription`].
//!
//! Long, and only data: one literal listing the seven seed tables and the
//! seed's enum types object by object, with the few `const fn` shorthands
//! it is written with. Nothing here decides anything; splitting it would
//! only scatter one table's description over files.

use super::description::{
    ColumnDescription, EnumDescription, ForeignKeyDescription, IndexDescription,
    PrimaryKeyDescription, ReferentialAction, SchemaDescription, TableDescription,
};

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
