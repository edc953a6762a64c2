//! The control plane of the automation platform: a gRPC service that owns
//! identity, the module registry and the job queue, all kept in PostgreSQL.
//!
//! Data flows one way: `api` (gRPC handlers) and `dispatch` (the Work and
//! Watch streams) → `wire` (protobuf ⇄ domain) → `domain` (rules and
//! transactions) → `store` (the only SQL) → `db` → PostgreSQL. `auth`
//! (credentials, permissions) and `config` sit below the domain. No module
//! names one above it.

pub mod api;
pub mod auth;
pub mod config;
pub mod console;
pub mod db;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod health;
pub mod http;
pub mod maintenance;
pub mod proto;
pub mod reflection;
pub mod schema;
pub mod seed;
pub mod server;
pub mod store;
pub mod sync;
pub mod telemetry;
pub mod tls;
pub mod wire;

pub use error::AppError;
