//! Everything Meta: the Graph API client, `signed_request` callbacks, and the
//! local fake of the Graph API (`switchboard fake-meta`) that development,
//! tests, the demo and load tests run against.

pub mod fake;
pub mod graph;
pub mod signed_request;
pub mod variants;
pub mod webhook;

pub use graph::{GraphClient, GraphError};

/// A file of the shared Meta fixtures (`../shared/fixtures/meta`). Found
/// from the checkout `cargo test` runs in (its `CARGO_MANIFEST_DIR` at run
/// time), not the one the test binary was compiled in: a binary reused
/// from another checkout through a shared target directory still reads
/// this one's fixtures.
#[cfg(test)]
pub(crate) fn fixture_path(name: &str) -> std::path::PathBuf {
    let root = std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_else(|| env!("CARGO_MANIFEST_DIR").into());
    std::path::Path::new(&root).join("../shared/fixtures/meta").join(name)
}
