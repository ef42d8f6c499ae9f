//! Everything Meta: the Graph API client, `signed_request` callbacks, and the
//! local fake of the Graph API (`switchboard fake-meta`) that development,
//! tests, the demo and load tests run against.

pub mod fake;
pub mod graph;
pub mod signed_request;
pub mod variants;
pub mod webhook;

pub use graph::{GraphClient, GraphError, WhatsappMarks};

/// Removes U+0000 from every string of a webhook or a Graph answer:
/// PostgreSQL cannot store it in text, and Meta means nothing by it.
pub(crate) fn strip_nul(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('\0') => s.retain(|c| c != '\0'),
        Value::Array(items) => items.iter_mut().for_each(strip_nul),
        Value::Object(fields) => fields.values_mut().for_each(strip_nul),
        _ => {}
    }
}

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
