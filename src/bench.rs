//! `switchboard bench`: figures measured on this machine (filled in below).
use crate::cli::BenchArgs;

pub fn run(_args: BenchArgs) -> anyhow::Result<()> {
    anyhow::bail!("not yet")
}
