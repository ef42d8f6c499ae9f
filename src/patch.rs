//! Reading a change's body (`PATCH`): a field may be left out (nothing
//! changes), `null` (taken away), or given.

use serde::Deserialize;

/// A field that is there, `null` or not: `Some`; left out: `None` (with
/// `#[serde(default, deserialize_with = "crate::patch::present")]` on an
/// `Option<Option<T>>`).
pub fn present<'de, D: serde::Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}
