//! The integration tests: one binary, one module per area, one throwaway
//! PostgreSQL cluster shared by all (each test gets a database of its own,
//! cloned from a migrated template). `tests/watch_counters.rs` is the one
//! other binary: its tests read counters of the whole process.

mod common;

mod account_cache;
mod api_keys;
mod attempts;
mod audit;
mod auth;
mod backup;
mod caller_cache;
mod claim_limits;
mod claim_plans;
mod console;
mod database;
mod escalation;
mod examples;
mod fencing;
mod fleet;
mod job_rules;
mod jobs;
mod key_counts;
mod lease_loss;
mod limits;
mod lockout;
mod message_caps;
mod modules;
mod observability;
mod pgbouncer;
mod platform;
mod progress;
mod queue_control;
mod rate_limits;
mod rbac;
mod reflection;
mod replicas;
mod restart;
mod retention;
mod roles;
mod schedules;
mod server_process;
mod tls;
mod users;
mod work;
mod work_abuse;
mod worker_sdk;
