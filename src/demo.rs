//! `switchboard demo`: everything at once on this machine — a database
//! (`switchboard_demo` on the server of `DATABASE_URL`, else on a local
//! PostgreSQL, else on a throwaway cluster started from the installed
//! PostgreSQL binaries), the fake Meta, the
//! server with its workers, and a seeded tenant whose Facebook Page,
//! Instagram account and WhatsApp number receive a simulated customer
//! message every few seconds. The Page and the Instagram account greet a
//! new customer by name (`inbox::variables`), and once the simulated
//! customers have written on all three, each one's contacts are linked as
//! one person (`inbox::contact_links`), as a team would.
//!
//! The demo's secrets and its tenant's password are fixed and public, so it
//! never uses the database `DATABASE_URL` names (a `.env` made for `serve`
//! would otherwise get a tenant anyone can log in to), only its own
//! `switchboard_demo` beside it.

use anyhow::Context;
use diesel::prelude::*;
use serde_json::{json, Value};
use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::users::Email;
use crate::auth::Role;
use crate::channels::{NewChannel, Platform};
use crate::config::{DbConfig, EncryptionKey, ServerConfig, Signup};
use crate::db::migrate::{migrate_all, run_public_migrations, Migrations};
use crate::db::{connect_pool, ensure_database, with_tenant, Db, PoolOptions, TenantScope};
use crate::error::AppError;
use crate::meta::fake::{FakeConfig, FakeMeta};
use crate::secret::Secret;
use crate::tenancy::{self, NewTenant, TenantSlug};

pub const DEMO_EMAIL: &str = "demo@switchboard.test";
pub const DEMO_PASSWORD: &str = "demo-password";

fn find_pg_bin(name: &str) -> Option<std::path::PathBuf> {
    let mut dirs: Vec<_> = std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path()).collect();
    dirs.sort();
    let installed = dirs.into_iter().rev().map(|d| d.join("bin").join(name)).find(|p| p.exists());
    installed.or_else(|| {
        std::env::var_os("PATH")?.to_str()?.split(':').map(|d| std::path::Path::new(d).join(name)).find(|p| p.exists())
    })
}

const DEMO_DATABASE: &str = "switchboard_demo";

/// The demo's database: `switchboard_demo` on the server of `DATABASE_URL`,
/// on a local server, or on a new cluster under the system's temp folder
/// (kept between runs).
fn database_url() -> anyhow::Result<String> {
    // Empty counts as unset, as everywhere in the configuration (an
    // `.env` or compose file often lists it blank).
    if let Some(url) = std::env::var("DATABASE_URL").ok().filter(|u| !u.trim().is_empty()) {
        return beside(&url);
    }
    let local = format!("postgres://postgres@127.0.0.1:5432/{DEMO_DATABASE}");
    if PgConnection::establish("postgres://postgres@127.0.0.1:5432/postgres").is_ok() {
        return Ok(local);
    }
    let initdb = find_pg_bin("initdb")
        .context("no PostgreSQL found: set DATABASE_URL, or install PostgreSQL (Debian: apt-get install postgresql)")?;
    let pg_ctl = find_pg_bin("pg_ctl").context("pg_ctl not found next to initdb")?;
    let dir = std::env::temp_dir().join("switchboard-demo-pg");
    let data = dir.join("data");
    let port = 55432;
    let root = is_root();
    let run = |bin: &std::path::Path, args: &[&str]| -> anyhow::Result<()> {
        let mut cmd = if root {
            let mut c = std::process::Command::new("runuser");
            c.arg("-u").arg("postgres").arg("--").arg(bin);
            c
        } else {
            std::process::Command::new(bin)
        };
        let out = cmd.args(args).output()?;
        anyhow::ensure!(out.status.success(), "{}: {}", bin.display(), String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    if !data.exists() {
        std::fs::create_dir_all(&dir)?;
        if root {
            std::process::Command::new("chown").arg("postgres:postgres").arg(&dir).status()?;
        }
        run(&initdb, &["-D", &data.to_string_lossy(), "-U", "postgres", "--auth=trust", "-E", "UTF8"])?;
    }
    let url = format!("postgres://postgres@127.0.0.1:{port}/{DEMO_DATABASE}");
    if PgConnection::establish(&format!("postgres://postgres@127.0.0.1:{port}/postgres")).is_err() {
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1", dir.to_string_lossy());
        run(
            &pg_ctl,
            &["-D", &data.to_string_lossy(), "-o", &opts, "-l", &dir.join("log").to_string_lossy(), "-w", "start"],
        )?;
        println!("started a PostgreSQL for the demo in {} (port {port})", dir.display());
    }
    Ok(url)
}

/// The demo's database on the server of `url`, whatever database it names.
fn beside(url: &str) -> anyhow::Result<String> {
    crate::db::pool::url_with_database(url, DEMO_DATABASE).context("DATABASE_URL is not a postgres:// URL")
}

/// initdb refuses to run as root; the cluster then runs as `postgres`.
fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false)
}

pub fn run() -> anyhow::Result<()> {
    crate::telemetry::init(false);
    let url = database_url()?;
    ensure_database(&url).context("cannot prepare the demo database")?;
    let pool = connect_pool(&url, PoolOptions { max_size: 10, min_idle: Some(2), ..Default::default() })?;
    {
        let mut conn = pool.get()?;
        run_public_migrations(&mut conn)?;
    }
    migrate_all(&pool, &Migrations::tenant(), 2)?;
    let bind = std::env::var("SWITCHBOARD_BIND").unwrap_or_else(|_| "127.0.0.1:8080".into());
    let listener = TcpListener::bind(&bind).with_context(|| format!("cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    let fake_listener = TcpListener::bind("127.0.0.1:9090").or_else(|_| TcpListener::bind("127.0.0.1:0"))?;
    let fake_base = format!("http://{}", fake_listener.local_addr()?);
    let base = format!("http://{addr}");
    let fake_cfg = FakeConfig::default();
    let config = Arc::new(ServerConfig {
        db: DbConfig { database_url: Secret::new(url.clone()), pool_size: 10 },
        bind: addr,
        public_url: base.clone(),
        jwt_secret: Secret::new(b"switchboard-demo-jwt-secret-not-for-production".to_vec()),
        encryption_keys: vec![EncryptionKey {
            id: "demo".into(),
            key: Secret::new(*b"switchboard-demo-key-32-bytes!!!"),
        }],
        signup: Signup::Open,
        operator_token: Some(Secret::new("switchboard-demo-operator-token".into())),
        meta: fake_cfg.meta_config(&fake_base, "switchboard-demo"),
        json_logs: false,
        allowed_origins: Vec::new(),
        ws_max_per_member: None,
        webhooks_private_ok: true,
        // Mail (invitations, password resets, members' notices) is printed here.
        mail: Some(crate::config::MailConfig {
            smtp_url: crate::secret::Secret::new(crate::mail::PRINT.to_string()),
            from: "Switchboard demo <no-reply@switchboard.test>".into(),
            conversation_url: None,
        }),
        keep_alive: crate::http::KEEP_ALIVE,
    });
    actix_web::rt::System::new().block_on(async move {
        let fake = FakeMeta::new(fake_cfg);
        fake.set_webhook_target(Some(format!("{base}/webhooks/meta")));
        actix_web::rt::spawn(fake.build_server(fake_listener)?);
        let state = actix_web::web::Data::new(crate::app::AppState::new(config, Db::new(pool.clone())));
        crate::app::spawn_workers(&state);
        let server = crate::http::build_server(state.clone(), listener)?;
        let seeded = seed(&state, &fake_base).await;
        match &seeded {
            Ok(targets) => {
                println!("\nSwitchboard demo on {base}  (fake Meta on {fake_base})");
                println!("log in:  curl -X POST {base}/api/auth/login -H 'content-type: application/json' \\");
                println!("           -d '{{\"email\":\"{DEMO_EMAIL}\",\"password\":\"{DEMO_PASSWORD}\",\"tenant\":\"demo\"}}'");
                println!("then GET {base}/api/conversations with the access token, or open {}/ws", base.replace("http", "ws"));
                println!("a simulated customer writes every 5 seconds to: {}", targets.join(", "));
                println!("write first on WhatsApp: POST {base}/api/conversations");
                println!("           {{\"channel_id\":\"<the WhatsApp channel's id>\",\"phone_number\":\"+55 11 98765-4321\",");
                println!("            \"template\":{{\"name\":\"hello_world\",\"language\":\"en_US\"}}}}");
                println!("broadcast to many WhatsApp customers: POST {base}/api/broadcasts");
                println!("           {{\"channel_id\":\"<the WhatsApp channel's id>\",\"name\":\"Weekend sale\",");
                println!("            \"template\":{{\"name\":\"weekend_sale\",\"language\":\"en_US\",\"parameters\":[\"{{{{contact.first_name | there}}}}\"]}},");
                println!("            \"to\":{{\"phone_numbers\":[\"+351 910 000 099\",\"+55 11 98765-4321\"]}}}}");
                println!(
                    "mail (invitations, password resets: POST {base}/api/auth/password-reset, notices to members \
                     not online) is printed here\n"
                );
                actix_web::rt::spawn(customers(state.clone(), fake_base.clone(), targets.clone()));
            }
            Err(e) => eprintln!("demo seeding failed: {e:#}"),
        }
        server.await
    })?;
    Ok(())
}

/// The demo tenant, its owner, and a Page + Instagram + WhatsApp number
/// connected (straight through the domain functions, no OAuth clicks).
async fn seed(state: &crate::app::AppState, fake_base: &str) -> anyhow::Result<Vec<String>> {
    let http = reqwest::Client::new();
    let created: Value = http
        .post(format!("{fake_base}/_fake/users"))
        .json(&json!({"name": "Demo Owner", "pages": [{"name": "Demo Shop", "instagram": {"username": "demo.shop"}}],
            "wabas": [{"phone_numbers": [{"display_phone_number": "+1 555-010-0000", "verified_name": "Demo Shop"}]}]}))
        .send()
        .await?
        .json()
        .await?;
    let s = |p: &str| created.pointer(p).and_then(Value::as_str).map(str::to_string).unwrap_or_default();
    let (page, page_token, ig) = (s("/pages/0/id"), s("/pages/0/access_token"), s("/pages/0/instagram_id"));
    let (waba, phone, waba_token) = (s("/wabas/0/id"), s("/wabas/0/phone_numbers/0"), s("/wabas/0/access_token"));
    // Subscribed as a connect would, so the fake sends what Meta sends to a
    // subscribed app (policy notices need the field).
    state.graph.subscribe_page(&page, &Secret::new(page_token.clone())).await?;
    state.graph.subscribe_waba(&waba, &Secret::new(waba_token.clone())).await?;
    // A template with parameters beside Meta's `hello_world`, and a
    // WhatsApp customer whose window closed two days ago: what templates are for.
    http.post(format!("{fake_base}/_fake/templates"))
        .json(&json!({"waba_id": waba, "name": "order_update", "language": "en_US", "header": "Order {{1}}",
            "body": "Hi {{1}}, your order {{2}} is on its way.", "footer": "Demo Shop"}))
        .send()
        .await?
        .error_for_status()?;
    // And one whose header is a document the agent attaches (an invoice).
    http.post(format!("{fake_base}/_fake/templates"))
        .json(&json!({"waba_id": waba, "name": "invoice", "language": "en_US", "header_media": "DOCUMENT",
            "body": "Hi {{1}}, here is your invoice {{2}}.", "footer": "Demo Shop"}))
        .send()
        .await?
        .error_for_status()?;
    // And a marketing one to broadcast (`inbox::broadcasts`), named per customer.
    http.post(format!("{fake_base}/_fake/templates"))
        .json(&json!({"waba_id": waba, "name": "weekend_sale", "language": "en_US", "category": "MARKETING",
            "body": "Hi {{1}}, everything at Demo Shop is 20% off this weekend.", "footer": "Demo Shop"}))
        .send()
        .await?
        .error_for_status()?;
    let keys = state.keys.clone();
    let (p2, ig2, ph2) = (page.clone(), ig.clone(), phone.clone());
    state
        .db
        .public(move |conn| -> Result<(), AppError> {
            let tenant = match tenancy::find_by_slug(conn, "demo")? {
                Some(t) => t,
                None => {
                    let new = NewTenant {
                        slug: TenantSlug::parse("demo")?,
                        name: "Demo Shop".into(),
                        owner_email: Email::parse(DEMO_EMAIL)?,
                        owner_name: "Demo Owner".into(),
                        owner_password: DEMO_PASSWORD.into(),
                    };
                    tenancy::create_tenant(conn, new)?.0
                }
            };
            // Fresh fake ids each run: release the previous run's channels.
            diesel::delete(
                crate::db::schema::channel_routes::table
                    .filter(crate::db::schema::channel_routes::tenant_id.eq(tenant.id)),
            )
            .execute(conn)?;
            with_tenant(conn, &TenantScope::system(tenant.tenant_id()), |tc| {
                // The previous run's fake channels are gone with its fake Meta.
                use crate::db::tenant_schema::channels as ch;
                let old: Vec<i64> = ch::table.filter(ch::status.ne("disconnected")).select(ch::id).load(tc.pg())?;
                for id in old {
                    crate::channels::mark_disconnected(tc, None, crate::channels::ChannelId(id), "demo_restart")?;
                }
                let channels = [
                    (Platform::Facebook, p2.clone(), "Demo Shop".to_string(), page_token.clone(), None),
                    (Platform::Instagram, ig2.clone(), "demo.shop".to_string(), page_token.clone(), Some(p2.clone())),
                    (
                        Platform::Whatsapp,
                        ph2.clone(),
                        "Demo Shop (+1 555-010-0000)".to_string(),
                        waba_token.clone(),
                        Some(waba.clone()),
                    ),
                ];
                let owner = crate::auth::users::find_by_email(tc.pg(), &Email::parse(DEMO_EMAIL)?)?
                    .map(|u| u.user_id())
                    .ok_or_else(|| AppError::internal(anyhow::anyhow!("the demo's owner is missing")))?;
                for (platform, external_id, name, token, parent) in channels {
                    let c = NewChannel {
                        platform,
                        external_id,
                        name,
                        token: Secret::new(token),
                        parent_external_id: parent,
                        meta_user_id: None,
                    };
                    let row = crate::channels::upsert_connected(tc, &keys, None, &c)?;
                    if platform != Platform::Whatsapp {
                        crate::channels::patch(tc, owner, crate::channels::ChannelId(row.id), greeting()?, &[])?;
                    }
                }
                Ok::<_, AppError>(())
            })
        })
        .await
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let two_days_ago = (chrono::Utc::now() - chrono::Duration::hours(48)).to_rfc3339();
    http.post(format!("{fake_base}/_fake/inbound"))
        .json(&json!({"to": phone, "from": "351910000099", "text": "Is my order coming?", "name": "Inês Lopes",
            "at": two_days_ago}))
        .send()
        .await?
        .error_for_status()?;
    Ok(vec![page, ig, phone])
}

/// The Page's and the Instagram account's greeting: it names the customer
/// once Meta's profile tells their name (`inbox::variables`), and offers a
/// menu to tap (`inbox::choices`); resolving a conversation asks for a
/// rating to tap (`inbox::csat`); agents' replies are signed
/// (`sign_replies`).
fn greeting() -> Result<crate::channels::ChannelPatch, AppError> {
    let text = "Hi {{contact.first_name | there}}! Thanks for writing to {{channel.name}}; we answer within the hour.";
    let ratings = ["5 ⭐⭐⭐⭐⭐", "4 ⭐⭐⭐⭐", "3 ⭐⭐⭐", "2 ⭐⭐", "1 ⭐"];
    let settings = json!({"auto_reply": {"enabled": true, "text": text, "choices": ["My order", "Opening hours", "Something else"]},
        "csat": {"enabled": true, "text": "How did we do? Tap a rating.", "choices": ratings}, "sign_replies": true});
    let settings = serde_json::from_value(settings).map_err(AppError::internal)?;
    Ok(crate::channels::ChannelPatch { name: None, settings: Some(settings) })
}

/// Links the contacts of each simulated customer (one name on the Page,
/// the Instagram account and the WhatsApp number) as one person, as the
/// owner; contacts already linked change nothing.
async fn link_namesakes(state: &crate::app::AppState) -> Result<(), AppError> {
    use crate::inbox::contact_links;
    use crate::inbox::ContactId;
    let tenant = state
        .db
        .public(|conn| Ok::<_, AppError>(tenancy::find_by_slug(conn, "demo")?.map(|t| t.tenant_id())))
        .await?
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("the demo tenant is missing")))?;
    state
        .tenant_with_events(TenantScope::system(tenant), |tc, log| {
            #[derive(diesel::QueryableByName)]
            struct Person {
                #[diesel(sql_type = diesel::sql_types::Array<diesel::sql_types::BigInt>)]
                ids: Vec<i64>,
            }
            let owner = crate::auth::users::find_by_email(tc.pg(), &Email::parse(DEMO_EMAIL)?)?
                .map(|u| u.user_id())
                .ok_or_else(|| AppError::internal(anyhow::anyhow!("the demo's owner is missing")))?;
            let people: Vec<Person> = diesel::sql_query(
                "SELECT array_agg(c.id ORDER BY c.id) AS ids FROM contacts c JOIN channels ch ON ch.id = c.channel_id \
                  WHERE ch.status = 'connected' AND c.name IS NOT NULL GROUP BY c.name HAVING count(*) > 1",
            )
            .load(tc.pg())?;
            for person in people {
                let Some((first, rest)) = person.ids.split_first() else { continue };
                for other in rest.iter().take(contact_links::MOST_LINKED - 1) {
                    contact_links::link(tc, log, owner, Role::Owner, ContactId(*first), ContactId(*other))?;
                }
            }
            Ok(())
        })
        .await
}

/// Customers writing, forever: one message every 5 seconds.
/// The photo the demo's WhatsApp customers send (text, so the fake can take it).
const DEMO_PHOTO: &str = r##"<svg xmlns="http://www.w3.org/2000/svg" width="160" height="120"><rect width="160" height="120" fill="#f4efe6"/><rect x="40" y="35" width="80" height="60" fill="#c8955c"/><rect x="40" y="35" width="80" height="14" fill="#a8743f"/><text x="80" y="112" font-size="11" text-anchor="middle" font-family="sans-serif">oak table</text></svg>"##;

async fn customers(state: actix_web::web::Data<crate::app::AppState>, fake_base: String, targets: Vec<String>) {
    let http = reqwest::Client::new();
    let lines = [
        "Olá! Do you ship to Lisbon?",
        "Is the oak table still available?",
        "Obrigado! 🙂",
        "Can I change my order?",
        "What are your opening hours?",
    ];
    let names = ["Ana Sousa", "Rui Costa", "Maria Silva", "João Pereira"];
    let mut i = 0usize;
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let to = &targets[i % targets.len()];
        let who = i % names.len();
        let whatsapp = i % targets.len() == 2;
        let from = if whatsapp { format!("35191000000{who}") } else { format!("99000000000{who}") };
        let mut inbound = json!({"to": to, "from": from, "text": lines[i % lines.len()], "name": names[who]});
        // Now and then a customer sends a photo: the inbox opens it through
        // `GET /api/messages/{id}/attachments/0` (a WhatsApp one from Meta,
        // a Messenger or Instagram one from the copy of the fake's CDN).
        if (i / targets.len()) % 3 == 1 {
            inbound["text"] = json!("This one, please");
            inbound["image"] = json!({"mime_type": "image/svg+xml", "data": DEMO_PHOTO});
        }
        let _ = http.post(format!("{fake_base}/_fake/inbound")).json(&inbound).send().await;
        i += 1;
        // By now each name has written on each channel (3 × 4).
        if i == targets.len() * names.len() + 1 {
            if let Err(e) = link_namesakes(&state).await {
                tracing::warn!(error = %e.message, "the demo's customers could not be linked");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_demo_never_uses_the_database_database_url_names() {
        assert_eq!(
            super::beside("postgres://app:secret@db.internal:5432/production?sslmode=require").expect("url"),
            "postgres://app:secret@db.internal:5432/switchboard_demo?sslmode=require"
        );
        assert_eq!(super::beside("postgres://127.0.0.1").expect("url"), "postgres://127.0.0.1/switchboard_demo");
        assert!(super::beside("not a url").is_err());
    }
}
