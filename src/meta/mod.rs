//! Everything Meta: the Graph API client, `signed_request` callbacks, and the
//! local fake of the Graph API (`switchboard fake-meta`) that development,
//! tests, the demo and load tests run against.

pub mod fake;
pub mod graph;
pub mod signed_request;
pub mod webhook;

pub use graph::{GraphClient, GraphError};
