//! Integration tests against a real PostgreSQL (see `common`). One test
//! binary keeps link time down; each test makes its own database.

mod attributes;
mod auth;
mod auto_resolve;
mod broadcasts;
mod channels;
mod choices;
mod cli;
mod common;
mod contact_import;
mod events;
mod fake_meta;
mod graph;
mod housekeeping;
mod inbox;
mod integrations;
mod invitations;
mod licences;
mod locks;
mod mail;
mod mfa;
mod migrate;
mod notifications;
mod openapi;
mod realtime;
mod retention;
mod scheduled;
mod search;
mod signatures;
mod teams;
mod teardown;
mod template_authoring;
mod tenancy;
