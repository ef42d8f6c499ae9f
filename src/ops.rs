//! Operators' commands: `serve`, `migrate`, `tenant …`, `user …`. Each reads
//! the configuration it needs and prints a short, human answer.

use anyhow::{bail, Context};
use diesel::prelude::*;
use std::sync::Arc;

use crate::app::AppState;
use crate::auth::members::{self, Member, NewMember};
use crate::auth::users::{self, Email};
use crate::auth::Role;
use crate::cli::{KeysCommand, MailCommand, TenantCommand, UserCommand, WebhooksCommand};
use crate::config::{DbConfig, ServerConfig};
use crate::db::migrate::{migrate_all, run_public_migrations, Migrations};
use crate::db::{connect_pool, ensure_database, with_tenant, Db, PgPool, PoolOptions, TenantScope};
use crate::error::AppError;
use crate::ids::TenantId;
use crate::inbox::events::EventLog;
use crate::meta::fake::{FakeConfig, FakeMeta};
use crate::tenancy::{self, NewTenant, TenantSlug, TenantStatus};

fn pool_for(cfg: &DbConfig, size: u32) -> anyhow::Result<PgPool> {
    ensure_database(cfg.database_url.expose()).context("cannot prepare the database")?;
    // Every connection is opened up front, so none is still being opened by
    // an r2d2 thread when the command exits (libpq/OpenSSL crash in their
    // exit handlers when a thread is connecting meanwhile).
    let opts = PoolOptions { max_size: size, min_idle: Some(size), ..Default::default() };
    connect_pool(cfg.database_url.expose(), opts).context("cannot connect to DATABASE_URL")
}

/// `switchboard mail test --to ADDRESS`: one mail now, with `serve`'s
/// settings; a refusal is a failure, with the server's answer.
pub fn mail(cmd: MailCommand) -> anyhow::Result<()> {
    let MailCommand::Test { to } = cmd;
    let public_url = crate::config::public_url_from_env()?;
    let Some(cfg) = crate::config::mail_from_env(&public_url)? else {
        bail!("mail is off: set SWITCHBOARD_SMTP_URL (and SWITCHBOARD_MAIL_FROM)")
    };
    let mailer = crate::mail::Mailer::new(&cfg)?;
    let body = format!(
        "This mail checks the mail settings of the Switchboard server at {public_url}.\n\
         It arrived, so invitations, password resets and members' notices will too.\n"
    );
    let sent = actix_web::rt::System::new()
        .block_on(async move { mailer.send_now(&to, "Switchboard mail test", &body).await });
    match sent {
        crate::mail::Sent::Sent => {
            println!("sent, from {} (the SMTP server took it; look in the mailbox)", cfg.from);
            Ok(())
        }
        crate::mail::Sent::Refused(why) => bail!("refused for good: {why}"),
        crate::mail::Sent::NotNow(why) => bail!("not sent (the server would be tried again later): {why}"),
    }
}

/// Domain errors carry a clear message; show it as one line.
fn user_error(e: AppError) -> anyhow::Error {
    anyhow::anyhow!("{}", e.message)
}

pub fn serve(config: ServerConfig) -> anyhow::Result<()> {
    crate::telemetry::init(config.json_logs);
    let pool = pool_for(&config.db, config.db.pool_size)?;
    {
        let mut conn = pool.get()?;
        let applied = run_public_migrations(&mut conn)?;
        if !applied.is_empty() {
            tracing::info!(?applied, "public migrations applied");
        }
    }
    // Tenant schemas are brought up to date in the background; until then
    // the guard refuses the tenants that are behind (503 tenant_not_ready).
    {
        let pool = pool.clone();
        std::thread::spawn(move || match migrate_all(&pool, &Migrations::tenant(), 2) {
            Ok(r) => {
                for (slug, e) in r.failures() {
                    tracing::error!(tenant = slug, error = e, "tenant migration failed");
                }
                if r.applied_count() > 0 {
                    tracing::info!(migrated = r.applied_count(), "tenant schemas migrated at start-up");
                }
            }
            Err(e) => tracing::error!(error = %e, "start-up migration failed"),
        });
    }
    let listener =
        std::net::TcpListener::bind(config.bind).with_context(|| format!("cannot listen on {}", config.bind))?;
    tracing::info!(bind = %config.bind, public_url = %config.public_url, "serving");
    let config = Arc::new(config);
    actix_web::rt::System::new().block_on(async move {
        let state = actix_web::web::Data::new(AppState::new(config, Db::new(pool)));
        let watched = state.clone();
        crate::app::supervise("channel watchdog", move || crate::channels::reconcile::run(watched.clone()));
        crate::app::spawn_workers(&state);
        let server = crate::http::build_server(state, listener)?;
        server.await
    })?;
    Ok(())
}

pub fn fake_meta(bind: &str, webhook_url: Option<String>, disable_after: Option<u32>) -> anyhow::Result<()> {
    crate::telemetry::init(false);
    let mut cfg = FakeConfig::default();
    if let Ok(id) = std::env::var("META_APP_ID") {
        cfg.app_id = id;
    }
    if let Ok(secret) = std::env::var("META_APP_SECRET") {
        cfg.app_secret = secret;
    }
    let listener = std::net::TcpListener::bind(bind).with_context(|| format!("cannot listen on {bind}"))?;
    println!("fake Meta Graph API on http://{bind} (app id {}); control API under /_fake", cfg.app_id);
    let fake = FakeMeta::new(cfg);
    fake.set_webhook_target(webhook_url);
    fake.set_disable_after(disable_after);
    actix_web::rt::System::new().block_on(async move { fake.build_server(listener)?.await })?;
    Ok(())
}

pub fn keys(cmd: KeysCommand) -> anyhow::Result<()> {
    let KeysCommand::Rotate = cmd;
    let cfg = DbConfig::from_env()?;
    let raw = std::env::var("SWITCHBOARD_ENCRYPTION_KEYS").unwrap_or_default();
    let keys = crate::config::parse_encryption_keys(&raw)
        .map_err(|p| anyhow::anyhow!("configuration error: SWITCHBOARD_ENCRYPTION_KEYS {p}"))?;
    let keyring = crate::crypto::Keyring::new(&keys);
    let pool = pool_for(&cfg, 2)?;
    let mut conn = pool.get()?;
    let report = rotate_keys(&mut conn, &keyring)?;
    for (slug, n) in &report {
        println!("{slug}: {n} value(s) re-encrypted");
    }
    println!("all tokens are now sealed with key {:?}", keyring.current_key_id());
    Ok(())
}

/// Re-seals every stored token of every tenant with the current key.
pub fn rotate_keys(
    conn: &mut diesel::PgConnection,
    keyring: &crate::crypto::Keyring,
) -> anyhow::Result<Vec<(String, usize)>> {
    let mut out = Vec::new();
    for t in tenancy::list(conn)? {
        let scope = crate::db::TenantScope::maintenance(t.tenant_id());
        let n = crate::db::with_tenant(conn, &scope, |tc| {
            Ok::<_, AppError>(
                crate::channels::reencrypt_tokens(tc, keyring)?
                    + crate::integrations::webhooks::reencrypt_secrets(tc, keyring)?,
            )
        })
        .map_err(|e| anyhow::anyhow!("{}: {e}", t.slug))?;
        out.push((t.slug, n));
    }
    let people = crate::auth::mfa::reencrypt_secrets(conn, keyring).map_err(|e| anyhow::anyhow!("people: {e}"))?;
    out.push(("(people's authenticator secrets)".to_string(), people));
    Ok(out)
}

pub fn migrate(jobs: usize) -> anyhow::Result<()> {
    let cfg = DbConfig::from_env()?;
    let jobs = jobs.clamp(1, 64);
    let pool = pool_for(&cfg, jobs as u32 + 1)?;
    let report = migrate_all(&pool, &Migrations::tenant(), jobs)?;
    if !report.public_applied.is_empty() {
        println!("public: applied {}", report.public_applied.join(", "));
    }
    for (slug, outcome) in &report.results {
        match outcome {
            crate::db::migrate::TenantOutcome::Applied(v) => {
                println!("{slug}: applied {}", v.join(", "))
            }
            crate::db::migrate::TenantOutcome::AlreadyCurrent => println!("{slug}: current"),
            crate::db::migrate::TenantOutcome::Failed(e) => println!("{slug}: FAILED: {e}"),
        }
    }
    let failed: Vec<_> = report.failures().collect();
    println!(
        "{} tenant(s): {} already current, {} migrated, {} failed, in {:.2?}",
        report.tenants_total,
        report.skipped_current
            + report
                .results
                .iter()
                .filter(|(_, o)| matches!(o, crate::db::migrate::TenantOutcome::AlreadyCurrent))
                .count(),
        report.applied_count(),
        failed.len(),
        report.elapsed
    );
    if !failed.is_empty() {
        for (slug, e) in &failed {
            eprintln!("failed: {slug}: {e}");
        }
        bail!("{} tenant schema(s) failed to migrate", failed.len());
    }
    Ok(())
}

pub fn tenant(cmd: TenantCommand) -> anyhow::Result<()> {
    let cfg = DbConfig::from_env()?;
    let pool = pool_for(&cfg, 2)?;
    let mut conn = pool.get()?;
    run_public_migrations(&mut conn)?;
    match cmd {
        TenantCommand::Create { slug, name, owner_email, owner_password, owner_name } => {
            let new = NewTenant {
                slug: TenantSlug::parse(&slug).map_err(user_error)?,
                name,
                owner_email: Email::parse(&owner_email).map_err(user_error)?,
                owner_name,
                owner_password,
            };
            let (t, owner) = tenancy::create_tenant(&mut conn, new).map_err(user_error)?;
            println!("created tenant {} (id {}, schema {}) owned by {}", t.slug, t.id, t.schema_name, owner.email);
        }
        TenantCommand::List => {
            println!("{:<8} {:<24} {:<10} {:<16} name", "id", "slug", "status", "schema_version");
            for t in tenancy::list(&mut conn)? {
                println!(
                    "{:<8} {:<24} {:<10} {:<16} {}",
                    t.id,
                    t.slug,
                    t.status,
                    t.schema_version.as_deref().unwrap_or("-"),
                    t.name
                );
            }
        }
        TenantCommand::Suspend { slug } => {
            tenancy::set_status(&mut conn, &slug, TenantStatus::Suspended).map_err(user_error)?;
            println!("suspended {slug}");
        }
        TenantCommand::Resume { slug } => {
            tenancy::set_status(&mut conn, &slug, TenantStatus::Active).map_err(user_error)?;
            println!("resumed {slug}");
        }
        TenantCommand::Drop { slug, yes } => {
            if !yes {
                bail!("dropping {slug} deletes all of its data; add --yes to confirm");
            }
            let t = tenancy::drop_tenant(&mut conn, &slug).map_err(user_error)?;
            println!("dropped tenant {} and schema {}", t.slug, t.schema_name);
        }
    }
    Ok(())
}

pub fn user(cmd: UserCommand) -> anyhow::Result<()> {
    let cfg = DbConfig::from_env()?;
    let pool = pool_for(&cfg, 2)?;
    let mut conn = pool.get()?;
    run_public_migrations(&mut conn)?;
    match cmd {
        UserCommand::Create { email, password, name, tenant, role } => {
            let email = Email::parse(&email).map_err(user_error)?;
            let membership = match (tenant, role) {
                (Some(slug), Some(role)) => {
                    let role = Role::parse(&role)
                        .ok_or_else(|| anyhow::anyhow!("role must be owner, admin, agent or viewer"))?;
                    let t = tenancy::find_by_slug(&mut conn, &slug)?
                        .ok_or_else(|| anyhow::anyhow!("no tenant {slug:?}"))?;
                    Some((t, role))
                }
                _ => None,
            };
            // Someone who exists keeps their password: a membership or a
            // role is no reason to change it (`user password` does, and ends
            // their logins). Said, rather than silently passed over.
            let exists = users::find_by_email(&mut conn, &email)?.is_some();
            let password = match password {
                Some(_) if exists && membership.is_some() => {
                    eprintln!(
                        "note: {} already has an account; the password given was not used \
                         (`switchboard user password` sets it)",
                        email.as_str()
                    );
                    None
                }
                p => p,
            };
            // Hashed (slowly) only when given: it is needed for someone new.
            let hash = match password {
                Some(p) => Some(crate::auth::password::PasswordHash::create(&p).map_err(user_error)?),
                None => None,
            };
            match membership {
                None => {
                    let hash = hash.context("--password is needed to create a user")?;
                    let user = conn.transaction(|conn| -> Result<_, AppError> {
                        if users::find_by_email(conn, &email)?.is_some() {
                            return Err(AppError::conflict("email_taken", "a user with this email already exists"));
                        }
                        users::insert(conn, &email, &name, &hash)
                    });
                    let user = user.map_err(user_error)?;
                    println!("created user {} (id {})", user.email, user.id);
                }
                Some((t, role)) => {
                    let member = member_by_operator(&mut conn, &t, email, name, role, hash).map_err(|e| {
                        // Said to a server's client as "retry shortly"; an
                        // operator is the one to bring the schema up.
                        if e.code == "tenant_not_ready" {
                            anyhow::anyhow!(
                                "the tenant's schema is behind this release; run `switchboard migrate` first"
                            )
                        } else {
                            user_error(e)
                        }
                    })?;
                    println!("user {} (id {}) is {} of {}", member.email, member.user_id, member.role, t.slug);
                }
            }
        }
        UserCommand::Password { email, password } => {
            let email = Email::parse(&email).map_err(user_error)?;
            let hash = crate::auth::password::PasswordHash::create(&password).map_err(user_error)?;
            let ended = crate::auth::account::set_password(&mut conn, &email, &hash).map_err(user_error)?;
            println!("set the password of {}; ended {ended} login(s)", email.as_str());
        }
        UserCommand::MfaOff { email } => {
            let email = Email::parse(&email).map_err(user_error)?;
            let was_on = crate::auth::mfa::turn_off_for(&mut conn, &email).map_err(user_error)?;
            let what = if was_on { "turned off" } else { "was not on" };
            println!("two-step sign-in of {}: {what}", email.as_str());
        }
    }
    Ok(())
}

/// `user create --tenant --role`: adds the user (created if need be) as a
/// member, or changes an existing member's role, with an owner's powers and
/// the API's rules (`auth::members`): the last owner stays one, a changed
/// role ends the member's tokens and sockets and hands back what they may no
/// longer answer, and either is audited with no actor. Reaches a suspended
/// tenant too: an operator may be setting it up again.
fn member_by_operator(
    conn: &mut diesel::PgConnection,
    tenant: &tenancy::Tenant,
    email: Email,
    name: String,
    role: Role,
    hash: Option<crate::auth::password::PasswordHash>,
) -> Result<Member, AppError> {
    let scope = TenantScope::maintenance(TenantId(tenant.id));
    with_tenant(conn, &scope, |tc| {
        let existing = match users::find_by_email(tc.pg(), &email)? {
            Some(user) => members::role_of(tc, user.user_id())?.map(|_| user.user_id()),
            None => None,
        };
        let Some(user) = existing else {
            let new = NewMember { email, name, role, password_hash: hash };
            return members::add(tc, None, Role::Owner, new);
        };
        // Nobody is online for a command: what is handed back waits in the
        // queue, or for the hand-out of whoever connects.
        let mut log = EventLog::new();
        let member = members::change_role(tc, &mut log, None, Role::Owner, user, role, &[])?;
        let notices = log.member_notices();
        crate::inbox::notifications::keep(tc, &mut log, &notices)?;
        log.write(tc)?;
        Ok(member)
    })
}

pub fn webhooks(cmd: WebhooksCommand) -> anyhow::Result<()> {
    let cfg = DbConfig::from_env()?;
    let pool = pool_for(&cfg, 1)?;
    let mut conn = pool.get()?;
    run_public_migrations(&mut conn)?;
    match cmd {
        WebhooksCommand::DeadLetters { limit } => {
            let items =
                crate::inbox::processor::dead_letters(&mut conn, None, limit.clamp(1, 1000)).map_err(user_error)?;
            for d in &items {
                println!(
                    "{}  {}  attempts={}  {}",
                    d.id,
                    d.received_at.format("%Y-%m-%d %H:%M:%S"),
                    d.attempts,
                    d.last_error.as_deref().unwrap_or("")
                );
            }
            println!("{} dead letter(s)", items.len());
        }
        WebhooksCommand::Replay { ids, all } => {
            if ids.is_empty() && !all {
                bail!("name the dead letters to replay, or pass --all");
            }
            let n = crate::inbox::processor::replay(&mut conn, &ids).map_err(user_error)?;
            println!("{n} webhook(s) queued again");
        }
    }
    Ok(())
}

/// A command's failure as one line for the terminal: each cause once (an
/// error that shows its source in its own text, as `DbError` does, is not
/// followed by it again), libpq's multi-line messages joined.
pub fn failure_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(text.trim()) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_failure_is_one_line_with_each_cause_once() {
        let libpq =
            "connection to server at \"127.0.0.1\", port 1 failed: Connection refused\n\tIs the server running?\n";
        let inner = anyhow::anyhow!(libpq.to_string());
        let db = inner.context(format!("cannot connect: {libpq}"));
        let e = db.context("cannot prepare the database");
        assert_eq!(
            super::failure_line(&e),
            "cannot prepare the database: cannot connect: connection to server at \"127.0.0.1\", port 1 failed: \
             Connection refused Is the server running?"
        );
        let plain = anyhow::anyhow!("DATABASE_URL is not set").context("configuration error");
        assert_eq!(super::failure_line(&plain), "configuration error: DATABASE_URL is not set");
    }
}
