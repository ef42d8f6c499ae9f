//! The licence gate: no dependency under a GPL-family licence (ours is
//! AGPL; a GPL crate would bind every deployment's terms), and none without
//! a licence. Read from `cargo metadata` for the platform being built,
//! offline: the build has fetched exactly those crates.

use std::process::Command;

#[test]
fn no_dependency_is_gpl_or_unlicensed() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(rustc).arg("-vV").output().expect("rustc -vV");
    let host = String::from_utf8_lossy(&version.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_string))
        .expect("rustc names its host");
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--locked", "--offline", "--filter-platform", &host])
        .current_dir(crate::common::project_dir())
        .output()
        .expect("cargo metadata");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata JSON");
    let packages = meta["packages"].as_array().expect("packages");
    assert!(packages.len() > 100, "the whole graph is listed");
    let offending: Vec<String> = packages
        .iter()
        .filter(|p| p["name"] != env!("CARGO_PKG_NAME"))
        .filter_map(|p| {
            let licence = p["license"].as_str().unwrap_or("");
            let bad = (licence.is_empty() && p["license_file"].is_null()) || licence.contains("GPL");
            bad.then(|| format!("{} {}: {licence:?}", p["name"], p["version"]))
        })
        .collect();
    assert!(offending.is_empty(), "{offending:?}");
}
