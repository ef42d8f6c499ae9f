//! `bench ingest`: signed webhooks into a server in this process, timed at
//! the answer and at the end of processing, against the raw insert ceiling.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use std::time::{Duration, Instant};

use crate::cli::BenchArgs;
use crate::config::DbConfig;
use crate::db::migrate::run_public_migrations;
use crate::db::{connect_pool, with_tenant, PoolOptions, TenantScope};
use crate::error::AppError;
use crate::tenancy::{self, TenantSlug};

use super::ScratchDb;

/// `bench ingest`: signed webhooks into a local server (in this process),
/// measured at the HTTP answer and at the end of processing, against the
/// raw PostgreSQL ceiling of single-row inserts of the same rows.
pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    use crate::channels::{NewChannel, Platform};
    use crate::config::{EncryptionKey, MetaConfig, ServerConfig, Signup};
    use crate::secret::Secret;

    let cfg = DbConfig::from_env()?;
    let scratch = ScratchDb::create(cfg.database_url.expose(), "ingest")?;
    let pool_size = 12;
    let pool = connect_pool(
        &scratch.url,
        PoolOptions { max_size: pool_size, min_idle: Some(pool_size), ..Default::default() },
    )?;
    let keys = vec![EncryptionKey { id: "bench".into(), key: Secret::new([3u8; 32]) }];
    let keyring = crate::crypto::Keyring::new(&keys);
    {
        let mut conn = pool.get()?;
        run_public_migrations(&mut conn)?;
        let t =
            tenancy::provision(&mut conn, &TenantSlug::parse("bench").map_err(|e| anyhow::anyhow!("{e}"))?, "Bench")
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        with_tenant(&mut conn, &TenantScope::system(t.tenant_id()), |tc| -> Result<(), AppError> {
            for (platform, id) in [(Platform::Facebook, "200000000000001"), (Platform::Whatsapp, "300000000000001")] {
                let c = NewChannel {
                    platform,
                    external_id: id.into(),
                    name: id.into(),
                    token: Secret::new("EAAFakeBenchToken".into()),
                    parent_external_id: None,
                    meta_user_id: None,
                };
                crate::channels::upsert_connected(tc, &keyring, None, &c)?;
            }
            Ok(())
        })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let config = std::sync::Arc::new(ServerConfig {
        db: DbConfig { database_url: Secret::new(scratch.url.clone()), pool_size },
        bind: addr,
        public_url: format!("http://{addr}"),
        jwt_secret: Secret::new(b"bench-secret-bench-secret-bench-secret".to_vec()),
        encryption_keys: keys,
        signup: Signup::Closed,
        operator_token: None,
        meta: MetaConfig {
            app_id: "1234567890123456".into(),
            app_secret: Secret::new("bench_app_secret".into()),
            verify_token: Secret::new("v".into()),
            // Profile lookups fail fast: nothing listens there.
            graph_url: "http://127.0.0.1:9".into(),
            graph_version: "v24.0".into(),
            dialog_url: "http://127.0.0.1:9".into(),
        },
        json_logs: false,
        allowed_origins: Vec::new(),
        ws_max_per_member: None,
        webhooks_private_ok: false,
        mail: None,
        keep_alive: crate::http::KEEP_ALIVE,
    });
    let db = crate::db::Db::new(pool.clone());
    std::thread::spawn(move || {
        actix_web::rt::System::new().block_on(async move {
            let state = actix_web::web::Data::new(crate::app::AppState::new(config, db));
            crate::app::spawn_workers(&state);
            if let Ok(server) = crate::http::build_server(state, listener) {
                let _ = server.await;
            }
        })
    });
    std::thread::sleep(Duration::from_millis(300));

    let sim = crate::cli::SimulateArgs {
        url: format!("http://{addr}/webhooks/meta"),
        app_secret: "bench_app_secret".into(),
        page: Some("200000000000001".into()),
        instagram: None,
        phone: Some("300000000000001".into()),
        kinds: vec![crate::simulate::Kind::Text],
        count: args.events,
        rate: 0,
        concurrency: args.concurrency,
        contacts: 500,
        duplicates: false,
        batch: 1,
        shuffle: 1,
        retries: 0,
        bad_signature: false,
        odd: 0,
    };
    println!(
        "switchboard bench ingest ({} signed webhooks, Messenger and WhatsApp, {} in flight)",
        args.events, args.concurrency
    );
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let started = Instant::now();
    let report = rt.block_on(crate::simulate::run(&sim));
    let answered = started.elapsed();
    let mut conn = pool.get()?;
    while super::probe::pending(&mut conn) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let processed = started.elapsed();
    let stored: i64 =
        diesel::select(diesel::dsl::sql::<diesel::sql_types::BigInt>("(SELECT count(*) FROM tenant_bench.messages)"))
            .get_result(&mut conn)?;
    let ok = report.statuses.get(&200).copied().unwrap_or(0);
    println!(
        "answered {ok}/{} with 200 in {:.2?}: {:.0} webhooks/s; answer latency p50 {:.2?}, p99 {:.2?} (each 200 after the body was committed)   [goal p99 < 20 ms]",
        report.sent,
        answered,
        report.sent as f64 / answered.as_secs_f64(),
        report.percentile(0.5),
        report.percentile(0.99)
    );
    let rate = stored as f64 / processed.as_secs_f64();
    println!("processed into {stored} messages in {:.2?}: {rate:.0} events/s end to end   [goal >= 2000/s]", processed);
    drop(conn);

    // The ceiling: the same rows, one INSERT each, same concurrency.
    {
        let mut conn = pool.get()?;
        conn.batch_execute(
            "CREATE TABLE public.bench_raw (id BIGSERIAL PRIMARY KEY, channel_id BIGINT NOT NULL, external_id TEXT NOT NULL, \
             text TEXT, created_at TIMESTAMPTZ NOT NULL DEFAULT now(), UNIQUE (channel_id, external_id))",
        )?;
    }
    // Same concurrency as the webhook senders, on its own connections.
    let threads = args.concurrency.clamp(1, 64);
    let raw_pool = connect_pool(
        &scratch.url,
        PoolOptions { max_size: threads as u32, min_idle: Some(threads as u32), ..Default::default() },
    )?;
    let per = args.events / threads;
    let t = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|w| {
            let pool = raw_pool.clone();
            std::thread::spawn(move || -> anyhow::Result<()> {
                let mut conn = pool.get()?;
                for i in 0..per {
                    diesel::sql_query(
                        "INSERT INTO public.bench_raw (channel_id, external_id, text) VALUES ($1, $2, $3)",
                    )
                    .bind::<diesel::sql_types::BigInt, _>(1)
                    .bind::<diesel::sql_types::Text, _>(format!("m_raw_{w}_{i}"))
                    .bind::<diesel::sql_types::Text, _>(format!("Olá! Pedido nº {i} — obrigado 🙂"))
                    .execute(&mut conn)?;
                }
                Ok(())
            })
        })
        .collect();
    for h in handles {
        h.join().map_err(|_| anyhow::anyhow!("insert thread panicked"))??;
    }
    let raw = (per * threads) as f64 / t.elapsed().as_secs_f64();
    println!("raw PostgreSQL ceiling: {raw:.0} single-row inserts/s at {threads} connections");
    println!("processed / ceiling: {:.0} %   [goal >= 50 %]", rate / raw * 100.0);
    Ok(())
}
