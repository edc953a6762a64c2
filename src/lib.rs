//! The control plane of the automation platform: a gRPC service that owns
//! identity, the module registry and the job queue, all kept in PostgreSQL.
//!
//! Data flows one way: `api` (transport) → `domain` (rules and
//! transactions) → `store` (the only SQL) → PostgreSQL. `auth` holds
//! credentials and the layer that checks every call.

pub mod api;
pub mod auth;
pub mod config;
pub mod db;
pub mod dispatch;
pub mod domain;
pub mod error;
pub mod health;
pub mod maintenance;
pub mod proto;
pub mod reflection;
pub mod schema;
pub mod seed;
pub mod server;
pub mod store;

pub use error::AppError;
