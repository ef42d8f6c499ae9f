//! Integration tests against a real PostgreSQL (see `common`). One test
//! binary keeps link time down; each test makes its own database.

mod auth;
mod channels;
mod cli;
mod graph;
mod common;
mod migrate;
mod tenancy;
mod inbox;
