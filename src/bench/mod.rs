//! `switchboard bench`: figures measured on this machine, printed, never
//! asserted (shared machines are noisy). Each benchmark works in a scratch
//! database it creates next to `DATABASE_URL`'s and drops at the end.

mod ingest;
mod probe;
mod realtime;
mod search;
mod tenancy;

use anyhow::Context;
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use std::time::Duration;

use crate::cli::BenchArgs;
use crate::db::pool::{maintenance_url, url_with_database};

/// A database that exists for the length of a benchmark.
pub struct ScratchDb {
    admin_url: String,
    name: String,
    pub url: String,
}

impl ScratchDb {
    pub fn create(base_url: &str, purpose: &str) -> anyhow::Result<ScratchDb> {
        let (admin_url, _) = maintenance_url(base_url).context("DATABASE_URL names no database")?;
        let name = format!("switchboard_bench_{purpose}_{}", std::process::id());
        let mut admin = PgConnection::establish(&admin_url).context("cannot reach the maintenance database")?;
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))?;
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\""))?;
        let url = url_with_database(&admin_url, &name).context("bad DATABASE_URL")?;
        Ok(ScratchDb { admin_url, name, url })
    }
}

impl Drop for ScratchDb {
    fn drop(&mut self) {
        if let Ok(mut admin) = PgConnection::establish(&self.admin_url) {
            let _ = admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name));
        }
    }
}

pub(crate) fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

pub(crate) fn percentile(v: &[Duration], p: f64) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

pub fn run(args: BenchArgs) -> anyhow::Result<()> {
    match args.which.as_str() {
        "tenancy" => tenancy::run(&args),
        "ingest" => ingest::run(&args),
        "realtime" => realtime::run(&args),
        "search" => search::run(&args),
        other => anyhow::bail!("unknown benchmark {other:?}; known: tenancy, ingest, realtime, search"),
    }
}
