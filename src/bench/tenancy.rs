//! `bench tenancy`: tenant creation, `migrate` over many current tenants,
//! and what the tenant switch costs against plain queries.

use anyhow::Context;
use diesel::connection::SimpleConnection;
use diesel::pg::PgConnection;
use diesel::prelude::*;
use std::time::{Duration, Instant};

use crate::auth::users::Email;
use crate::cli::BenchArgs;
use crate::config::DbConfig;
use crate::db::migrate::{migrate_all_with, run_public_migrations, Migrations};
use crate::db::{connect_pool, with_tenant, PgPool, PoolOptions, TenantScope};
use crate::error::AppError;
use crate::tenancy::{self, NewTenant, TenantSlug};

use super::{median, percentile, ScratchDb};

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let cfg = DbConfig::from_env()?;
    let scratch = ScratchDb::create(cfg.database_url.expose(), "tenancy")?;
    let pool = connect_pool(&scratch.url, PoolOptions { max_size: 6, min_idle: Some(6), ..Default::default() })?;
    let mut conn = pool.get()?;
    run_public_migrations(&mut conn)?;
    println!("switchboard bench tenancy ({} tenant creations, {} tenants for migrate)", args.creates, args.tenants);

    // 1. Tenant creation: schema + every tenant migration + row. First with
    //    no spare schema ready (made on the spot), then as `serve` does it,
    //    with a spare made ahead of time (untimed) and renamed
    //    (tenancy::spares); and the full sign-up with an owner (argon2
    //    hashing), a spare ready.
    let mut cold_times = Vec::with_capacity(args.creates);
    for i in 0..args.creates {
        let slug = TenantSlug::parse(&format!("bench-{i:05}")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let t = Instant::now();
        tenancy::provision(&mut conn, &slug, "Bench").map_err(|e| anyhow::anyhow!("{e:?}"))?;
        cold_times.push(t.elapsed());
    }
    let mut ready_times = Vec::with_capacity(args.creates);
    for i in 0..args.creates {
        tenancy::spares::make(&mut conn).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let slug = TenantSlug::parse(&format!("ready-{i:05}")).map_err(|e| anyhow::anyhow!("{e}"))?;
        let t = Instant::now();
        tenancy::provision(&mut conn, &slug, "Bench").map_err(|e| anyhow::anyhow!("{e:?}"))?;
        ready_times.push(t.elapsed());
    }
    let mut signup_times = Vec::new();
    for i in 0..args.creates.min(20) {
        let new = NewTenant {
            slug: TenantSlug::parse(&format!("owned-{i:05}")).map_err(|e| anyhow::anyhow!("{e}"))?,
            name: "Bench".into(),
            owner_email: Email::parse(&format!("owner{i}@bench.test")).map_err(|e| anyhow::anyhow!("{e}"))?,
            owner_name: String::new(),
            owner_password: "bench-password".into(),
        };
        tenancy::spares::make(&mut conn).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let t = Instant::now();
        tenancy::create_tenant(&mut conn, new).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        signup_times.push(t.elapsed());
    }
    println!(
        "tenant create with a spare schema ready (renamed, then migrations checked, row): median {:.2?}, p90 {:.2?} over {}   [goal < 50 ms]",
        median(ready_times.clone()),
        percentile(&ready_times, 0.9),
        ready_times.len()
    );
    println!(
        "tenant create with no spare ready (schema + migrations + row): median {:.2?}, p90 {:.2?} over {}",
        median(cold_times.clone()),
        percentile(&cold_times, 0.9),
        cold_times.len()
    );
    println!(
        "tenant sign-up with owner, a spare ready (adds argon2 hashing): median {:.2?} over {}",
        median(signup_times.clone()),
        signup_times.len()
    );

    // 2. `migrate` over N current tenants.
    let have = 2 * args.creates + args.creates.min(20);
    for i in have..args.tenants {
        let slug = TenantSlug::parse(&format!("bench-{i:05}")).map_err(|e| anyhow::anyhow!("{e}"))?;
        tenancy::provision(&mut conn, &slug, "Bench").map_err(|e| anyhow::anyhow!("{e:?}"))?;
    }
    drop(conn);
    let total = args.tenants.max(have);
    let source = Migrations::tenant();
    let fast = migrate_all_with(&pool, &source, 4, false)?;
    let checked = migrate_all_with(&pool, &source, 4, true)?;
    println!("migrate over {total} current tenants: {:.2?} (one query skips them all)   [goal < 10 s]", fast.elapsed);
    println!(
        "migrate over {total} current tenants, locking and inspecting every schema (4 jobs): {:.2?} ({:.2?} per schema)",
        checked.elapsed,
        checked.elapsed / total.max(1) as u32
    );

    // 3. The tenant switch against plain queries.
    switch_overhead(&pool)?;
    Ok(())
}

fn switch_overhead(pool: &PgPool) -> anyhow::Result<()> {
    const N: usize = 3000;
    let mut conn = pool.get()?;
    let tenant = tenancy::find_by_slug(&mut conn, "bench-00000")?.context("bench tenant")?.tenant_id();
    let query = "SELECT count(*) FROM public.tenants WHERE id = 1";
    let time =
        |conn: &mut PgConnection, f: &dyn Fn(&mut PgConnection) -> anyhow::Result<()>| -> anyhow::Result<Duration> {
            for _ in 0..200 {
                f(conn)?;
            }
            let t = Instant::now();
            for _ in 0..N {
                f(conn)?;
            }
            Ok(t.elapsed() / N as u32)
        };
    let plain = time(&mut conn, &|c| Ok(c.batch_execute(query)?))?;
    let plain_tx = time(&mut conn, &|c| {
        c.transaction(|c| c.batch_execute(query))?;
        Ok(())
    })?;
    // One query in a tenant unit of work entered as `scope`.
    let in_tenant = |c: &mut PgConnection, scope: &TenantScope| -> anyhow::Result<()> {
        with_tenant(c, scope, |tc| -> Result<(), AppError> {
            tc.pg().batch_execute("SELECT count(*) FROM audit_log")?;
            Ok(())
        })?;
        Ok(())
    };
    let tenant_tx = time(&mut conn, &|c| in_tenant(c, &TenantScope::system(tenant)))?;
    // A member's request also has the guard check their role and that
    // their login was not ended (a live login: the probe finds nothing).
    let owner = crate::db::schema::memberships::table
        .inner_join(crate::db::schema::tenants::table)
        .filter(crate::db::schema::tenants::slug.eq("owned-00000"))
        .select((crate::db::schema::memberships::tenant_id, crate::db::schema::memberships::user_id))
        .first::<(i64, i64)>(&mut conn)
        .optional()?;
    let member_tx = match owner {
        Some((tenant, user)) => {
            let login = uuid::Uuid::new_v4().to_string();
            let scope = TenantScope::member(crate::ids::TenantId(tenant), crate::ids::UserId(user), "owner", &login);
            Some(time(&mut conn, &|c| in_tenant(c, &scope))?)
        }
        None => None,
    };
    println!("one query, autocommit: {plain:.2?} per unit of work");
    println!("one query in a plain transaction (BEGIN, query, COMMIT): {plain_tx:.2?}");
    println!(
        "one query in a tenant transaction (BEGIN + guard + set_config in one round trip, query, COMMIT): {tenant_tx:.2?}"
    );
    if let Some(member_tx) = member_tx {
        println!("the same as a member's request (role and login checked too): {member_tx:.2?}");
    }
    println!(
        "tenant switch cost over a plain transaction: {:+.1} µs, 0 extra round trips   [goal: no extra round trip]",
        tenant_tx.as_secs_f64() * 1e6 - plain_tx.as_secs_f64() * 1e6
    );
    Ok(())
}
