//! Comparing a live catalog with a schema description: one
//! [`Difference`] per object missing, extra or changed, under the
//! strictness the caller chooses ([`Comparison`]).

use std::{collections::BTreeMap, fmt};

use super::{
    description::{ReferentialAction, SchemaDescription, TableDescription},
    live::LiveCatalog,
};

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::catalog::{
        SEED_SCHEMA,
        live::{LiveColumn, LiveConstraint, LiveIndex},
    };

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
