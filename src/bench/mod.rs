//! `switchboard bench`: figures measured on this machine, printed, never
//! asserted (shared machines are noisy). Each benchmark works in a scratch
//! database it creates next to `DATABASE_URL`'s and drops at the end.

mod ingest;
mod probe;
mod realtime;
mod search;
mod sends;
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
    /// Also drops the scratch databases of benchmarks whose process is gone
    /// from this machine (one stopped with Ctrl-C runs no `Drop`), as the
    /// tests sweep theirs.
    pub fn create(base_url: &str, purpose: &str) -> anyhow::Result<ScratchDb> {
        let (admin_url, _) = maintenance_url(base_url).context("DATABASE_URL names no database")?;
        let name = format!("{SCRATCH_PREFIX}{purpose}_{}", std::process::id());
        let mut admin = PgConnection::establish(&admin_url).context("cannot reach the maintenance database")?;
        // Not this benchmark's business to fail over (another role's
        // leftovers, say).
        if let Err(e) = sweep_leftovers(&mut admin) {
            tracing::warn!(error = %e, "could not drop the scratch databases of stopped benchmarks");
        }
        admin.batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))?;
        admin.batch_execute(&format!("CREATE DATABASE \"{name}\""))?;
        let url = url_with_database(&admin_url, &name).context("bad DATABASE_URL")?;
        Ok(ScratchDb { admin_url, name, url })
    }
}

/// What every scratch database's name starts with; the process id ends it.
pub const SCRATCH_PREFIX: &str = "switchboard_bench_";

/// Drops the scratch databases whose benchmark process no longer runs here.
fn sweep_leftovers(admin: &mut PgConnection) -> anyhow::Result<()> {
    // Without a /proc to tell (not Linux), every benchmark would look gone.
    if !std::path::Path::new("/proc/self").exists() {
        return Ok(());
    }
    #[derive(QueryableByName)]
    struct Row {
        #[diesel(sql_type = diesel::sql_types::Text)]
        datname: String,
    }
    let rows: Vec<Row> = diesel::sql_query("SELECT datname FROM pg_database WHERE starts_with(datname, $1)")
        .bind::<diesel::sql_types::Text, _>(SCRATCH_PREFIX)
        .load(admin)?;
    for Row { datname } in rows {
        let pid = datname.rsplit('_').next().and_then(|p| p.parse::<u32>().ok());
        if pid.is_some_and(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists()) {
            let quoted = datname.replace('"', "\"\"");
            admin
                .batch_execute(&format!("DROP DATABASE IF EXISTS \"{quoted}\" WITH (FORCE)"))
                .with_context(|| format!("dropping {datname}"))?;
        }
    }
    Ok(())
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
        "sends" => sends::run(&args),
        other => anyhow::bail!("unknown benchmark {other:?}; known: tenancy, ingest, realtime, search, sends"),
    }
}
