//! Switchboard: a schema-per-tenant social inbox backend.
//!
//! The folders are the architecture: `db` (pool, tenant-scoped connections,
//! migrations), `tenancy` (tenants and their schemas), `auth` (users,
//! passwords, tokens, roles), `http` (routes and thin handlers). Domain
//! functions take plain values and a connection so they are testable without
//! HTTP.

pub mod app;
pub mod audit;
pub mod auth;
pub mod bench;
pub mod byte_range;
pub mod channels;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod db;
pub mod demo;
pub mod error;
pub mod http;
pub mod ids;
pub mod inbox;
pub mod integrations;
pub mod mail;
pub mod meta;
pub mod metrics;
pub mod ops;
pub mod patch;
pub mod realtime;
pub mod secret;
pub mod signed;
pub mod simulate;
pub mod telemetry;
pub mod tenancy;
pub mod web;

pub use error::{AppError, AppResult};
