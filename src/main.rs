use clap::Parser;
use std::process::ExitCode;

use switchboard::cli::{Cli, Command};
use switchboard::config::ServerConfig;
use switchboard::ops;

fn main() -> ExitCode {
    switchboard::db::tls_exit::keep_tls_state_through_exit();
    // A `.env` file is optional; the environment wins over it.
    let _ = dotenvy::dotenv();
    // Before any thread: it may set an environment variable.
    switchboard::db::tls_exit::skip_gss_unless_asked();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve => match ServerConfig::from_env() {
            Ok(cfg) => ops::serve(cfg),
            Err(e) => Err(e.into()),
        },
        Command::Migrate { jobs } => ops::migrate(jobs),
        Command::Demo => switchboard::demo::run(),
        Command::Tenant(cmd) => ops::tenant(cmd),
        Command::User(cmd) => ops::user(cmd),
        Command::FakeMeta { bind, webhook_url, disable_after } => ops::fake_meta(&bind, webhook_url, disable_after),
        Command::Keys(cmd) => ops::keys(cmd),
        Command::Webhooks(cmd) => ops::webhooks(cmd),
        Command::Simulate(args) => switchboard::simulate::run_cli(args),
        Command::Bench(args) => switchboard::bench::run(args),
        Command::Mail(cmd) => ops::mail(cmd),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchboard: {}", ops::failure_line(&e));
            ExitCode::FAILURE
        }
    }
}
