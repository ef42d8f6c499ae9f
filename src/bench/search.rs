//! `bench search`: the inbox search (`GET /api/conversations?q=`, the
//! domain function behind it) over one tenant holding `--messages` messages,
//! 50 to a conversation, as an admin sees them (every channel).
//!
//! The list with no query is timed too: what every page costs besides the
//! search (its contacts and last messages). A word in most of the newest
//! conversations is found by probing them one by one; a word in none of
//! them needs every match collected, which for one or two characters, too
//! short for the trigram index, is a scan of the tenant's folded message
//! texts, and through the index for longer ones (`inbox::conversations`).
//! The cases cover both, and a word only old conversations hold, where the
//! probing is wasted. Beside the scan, the same scan folding every message
//! as it reads it, as search did before the folded columns: what they save.
//! Then what no index serves on purpose: a label (`?label=`), common and
//! rare, and the labels in use (`GET /api/labels`), which reads every
//! conversation; and the stale-profile check the list's handler adds to
//! each page (`contacts::stale_profiles`). Last, the auto-resolve clock
//! (`inbox::auto_resolve`): its look when nothing may be taken, and a tick
//! resolving a full batch; before it, contacts found by an attribute, their
//! export, an import of a full file (`inbox::contact_import`), and a
//! message routed through the most rules a channel keeps
//! (`inbox::routing`).

use anyhow::Context;
use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::sql_types::{BigInt, Text};
use std::time::{Duration, Instant};

use crate::auth::Role;
use crate::cli::BenchArgs;
use crate::config::DbConfig;
use crate::db::migrate::run_public_migrations;
use crate::db::{connect_pool, with_tenant, PoolOptions, TenantScope};
use crate::error::AppError;
use crate::ids::UserId;
use crate::inbox::conversations::{self, Filter};
use crate::tenancy::{self, TenantSlug};

use super::{median, ScratchDb};

const PER_CONVERSATION: usize = 50;
const RUNS: usize = 7;
/// The agent whose own conversations ("mine") are listed.
const AGENT: i64 = 42;

#[derive(QueryableByName)]
struct Returned {
    #[diesel(sql_type = BigInt)]
    id: i64,
}

/// Texts of the kind customers write, accents and all; each message adds
/// its number, so a number is a rare word.
const TEXTS: [&str; 10] = [
    "hello there, my order has not arrived yet",
    "can you help me with a refund please",
    "thanks a lot!",
    "where is my package? tracking says delivered",
    "I want to change my delivery address",
    "ok",
    "Olá, tudo bem? Preciso de ajuda com o pedido",
    "the app crashes when I log in",
    "¿Cuánto cuesta el azul? Gracias",
    "great service, cheers 👍",
];

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = BigInt)]
    n: i64,
}

/// The first page of 50 conversations `filter` lists, as an admin: how
/// many, and the median time of [`RUNS`].
fn first_page(conn: &mut PgConnection, scope: &TenantScope, filter: &Filter) -> anyhow::Result<(usize, Duration)> {
    let mut times = Vec::with_capacity(RUNS);
    let mut found = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        found = with_tenant(conn, scope, |tc| {
            conversations::list(tc, UserId(0), Role::Owner, filter, None, 50).map(|v| v.len())
        })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        times.push(t.elapsed());
    }
    Ok((found, median(times)))
}

pub fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let cfg = DbConfig::from_env()?;
    let scratch = ScratchDb::create(cfg.database_url.expose(), "search")?;
    let pool = connect_pool(&scratch.url, PoolOptions { max_size: 2, min_idle: Some(1), ..Default::default() })?;
    let mut conn = pool.get()?;
    run_public_migrations(&mut conn)?;
    let slug = TenantSlug::parse("search").map_err(|e| anyhow::anyhow!("{e}"))?;
    let tenant = tenancy::provision(&mut conn, &slug, "Bench").map_err(|e| anyhow::anyhow!("{e:?}"))?.tenant_id();
    let scope = TenantScope::system(tenant);
    let conversations = args.messages.div_ceil(PER_CONVERSATION).max(1);
    println!(
        "switchboard bench search ({} messages in {conversations} conversations of one tenant, median of {RUNS} runs)",
        conversations * PER_CONVERSATION
    );

    // The oldest tenth of the conversations (the highest ids) say "kiwi";
    // an agent has ten of them, spread from the newest to the oldest.
    let old = conversations - conversations / 10;
    let every = (conversations / 10).max(1);
    let seeding = Instant::now();
    with_tenant(&mut conn, &scope, |tc| -> Result<(), AppError> {
        let texts = TEXTS.iter().map(|t| format!("'{}'", t.replace('\'', "''"))).collect::<Vec<_>>().join(",");
        tc.pg().batch_execute(&format!(
            "INSERT INTO channels (platform, external_id, name) VALUES ('facebook', '102938475610293', 'Bench page');
             INSERT INTO contacts (channel_id, external_id, name)
               SELECT 1, (7000000000000000 + g)::text,
                      (ARRAY['João Silva','Zoë Müller','Ana Pérez','Mehmet Öztürk','Chloé Dubois'])[1 + g % 5] || ' ' || g
                 FROM generate_series(1, {conversations}) g;
             INSERT INTO conversations (channel_id, contact_id, last_activity_at)
               SELECT 1, id, now() - id * interval '1 minute' FROM contacts;
             INSERT INTO messages (conversation_id, channel_id, direction, sender_kind, text, status, sort_at)
               SELECT c.id, 1, 'in', 'contact',
                      (ARRAY[{texts}])[1 + (c.id * 7 + g) % 10]
                        || CASE WHEN c.id % 3 = 0 AND g = 7 THEN ' invoice' ELSE '' END
                        || CASE WHEN c.id > {old} AND g % 10 = 0 THEN ' kiwi' ELSE '' END
                        || ' #' || (c.id * {PER_CONVERSATION} + g),
                      'received', c.last_activity_at - g * interval '1 second'
                 FROM conversations c CROSS JOIN generate_series(1, {PER_CONVERSATION}) g;
             UPDATE conversations SET assignee_id = {AGENT} WHERE id % {every} = 0;
             UPDATE conversations SET labels = '{{vip}}' WHERE id % 5 = 0;
             UPDATE conversations SET labels = labels || '{{legal}}'::text[] WHERE id > {old} AND id % 20 = 0;
             UPDATE contacts SET profile_checked_at = now() - interval '1 hour';
             ANALYZE contacts; ANALYZE conversations; ANALYZE messages;"
        ))?;
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    println!("(seeded in {:.1?})", seeding.elapsed());

    let rare = format!("#{}", conversations * PER_CONVERSATION / 2 + 1);
    let cases: [(&str, &str); 10] = [
        ("no query, the inbox as it opens", ""),
        ("one character, in most messages", "a"),
        ("two characters, in a tenth of them", "ok"),
        ("two characters, in none", "zq"),
        ("a common word", "refund"),
        ("a word written with accents, asked without", "preciso de ajuda"),
        ("a word in one message of every third conversation", "invoice"),
        ("a word in many messages of the oldest conversations only", "kiwi"),
        ("a contact's name, asked without accents", "zoe muller"),
        ("a rare word (one message)", rare.as_str()),
    ];
    let mut listings: Vec<(String, Filter)> = cases
        .iter()
        .map(|(what, q)| {
            (format!("{what} ({q:?})"), Filter { q: (!q.is_empty()).then(|| q.to_string()), ..Default::default() })
        })
        .collect();
    // "Mine" without a status: the assignee's own index, not a walk of
    // the whole inbox for the agent's few.
    listings.push((
        "an agent's own, every status (assignee=me)".into(),
        Filter { assignee: Some(Some(AGENT)), ..Default::default() },
    ));
    listings.push((
        "an agent's own, open (assignee=me&status=open)".into(),
        Filter { assignee: Some(Some(AGENT)), status: Some("open".into()), ..Default::default() },
    ));
    // Labels: no index serves them (`inbox::conversations`), so a label few
    // conversations have, and only old ones, walks the inbox.
    listings.push((
        "a label on a fifth of them (label=vip)".into(),
        Filter { label: Some("vip".into()), ..Default::default() },
    ));
    listings.push((
        "a label on a few old ones only (label=legal)".into(),
        Filter { label: Some("legal".into()), ..Default::default() },
    ));
    for (what, filter) in listings {
        let (found, took) = first_page(&mut conn, &scope, &filter)?;
        println!("{what}: first page of {found} in {took:.1?}");
    }

    // What the list's handler adds to the page: the check for stale
    // profiles among its contacts (fresh here, as usually: it finds none).
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let page = with_tenant(&mut conn, &scope, |tc| {
            conversations::list(tc, UserId(0), Role::Owner, &Filter::default(), None, 50)
        })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let contacts: Vec<i64> = page.iter().map(|c| c.contact.id.0).collect();
        let t = Instant::now();
        let stale = with_tenant(&mut conn, &scope, |tc| {
            crate::inbox::contacts::stale_profiles(tc, &contacts, chrono::Utc::now()).map(|v| v.len())
        })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        anyhow::ensure!(stale == 0, "{stale} stale profiles among fresh ones");
        times.push(t.elapsed());
    }
    println!("the stale-profile check of a page of 50 (none stale): {:.1?}", median(times));
    let mut times = Vec::with_capacity(RUNS);
    let mut labels = 0;
    for _ in 0..RUNS {
        let t = Instant::now();
        labels = with_tenant(&mut conn, &scope, |tc| {
            conversations::labels_in_use(tc, UserId(0), Role::Owner).map(|v| v.len())
        })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        times.push(t.elapsed());
    }
    println!(
        "the labels in use (GET /api/labels), over {conversations} conversations: {labels} in {:.1?}",
        median(times)
    );

    // The inbox's badges (`conversations::counts`): three counts, each
    // stopping at `MOST_COUNTED`.
    let mut times = Vec::with_capacity(RUNS);
    let mut badges = None;
    for _ in 0..RUNS {
        let t = Instant::now();
        badges = Some(
            with_tenant(&mut conn, &scope, |tc| {
                conversations::counts(tc, UserId(AGENT), Role::Owner, &Filter::default())
            })
            .map_err(|e| anyhow::anyhow!("{e:?}"))?,
        );
        times.push(t.elapsed());
    }
    if let Some(b) = badges {
        println!(
            "the inbox's badges (GET /api/conversations/counts), all {}, mine {}, unassigned {}: {:.1?}",
            b.all,
            b.mine,
            b.unassigned,
            median(times)
        );
    }

    // An admin's report of the last seven days (`inbox::reports`): every
    // message read once, every conversation's first messages through its
    // index (none answered here: each walk goes through all its messages).
    let mut times = Vec::with_capacity(RUNS);
    let mut opened = 0;
    for _ in 0..RUNS {
        let period = crate::inbox::reports::Period::parse(None, None, None, chrono::Utc::now())
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let t = Instant::now();
        opened = with_tenant(&mut conn, &scope, |tc| {
            crate::inbox::reports::overview(tc, period).map(|o| o.conversations_opened)
        })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        times.push(t.elapsed());
    }
    println!(
        "an admin's report of the last 7 days (GET /api/reports/overview), {opened} conversations opened: {:.1?}",
        median(times)
    );

    // The scan that one or two characters need, on the folded column and
    // folding as it reads.
    let mut scan = |sql: &str| -> anyhow::Result<Duration> {
        let mut times = Vec::with_capacity(RUNS);
        for _ in 0..RUNS {
            let t = Instant::now();
            let n: i64 = with_tenant(&mut conn, &scope, |tc| -> Result<i64, AppError> {
                // One process: parallel workers would hide the per-row cost.
                tc.pg().batch_execute("SET LOCAL max_parallel_workers_per_gather = 0")?;
                Ok(diesel::sql_query(sql).bind::<Text, _>("zq").get_result::<Count>(tc.pg())?.n)
            })
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            anyhow::ensure!(n == 0, "the scan found {n} messages with \"zq\"");
            times.push(t.elapsed());
        }
        Ok(median(times))
    };
    let column = scan("SELECT count(*) AS n FROM messages WHERE search_text LIKE public.sb_fold_contains($1)")
        .context("scanning the folded column")?;
    let folding =
        scan("SELECT count(*) AS n FROM messages WHERE public.sb_fold(text) LIKE public.sb_fold_contains($1)")
            .context("scanning and folding")?;
    println!(
        "scan of every message in one process: {column:.1?} on the folded column, {folding:.1?} folding each text ({:.1}x)",
        folding.as_secs_f64() / column.as_secs_f64().max(1e-9)
    );

    // Contacts by an attribute (`GET /api/contacts?attribute=`): a flag on
    // one in 400 (through the GIN index), a plan every contact has.
    with_tenant(&mut conn, &scope, |tc| -> Result<(), AppError> {
        tc.pg().batch_execute(
            "UPDATE contacts SET attributes = jsonb_build_object('plan', (ARRAY['free', 'pro'])[1 + id % 2]);
             UPDATE contacts SET attributes = attributes || '{\"vip\": true}' WHERE id % 400 = 0;
             ANALYZE contacts;",
        )?;
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    use crate::inbox::attributes::Wanted;
    for (what, wanted) in [
        ("a flag one in 400 has (attribute=vip:true)", Wanted::Is("vip".into(), serde_json::Value::Bool(true))),
        ("a value half of them have (attribute=plan:pro)", Wanted::Is("plan".into(), "pro".into())),
    ] {
        let mut times = Vec::with_capacity(RUNS);
        let mut found = 0;
        for _ in 0..RUNS {
            let t = Instant::now();
            found = with_tenant(&mut conn, &scope, |tc| {
                let filter = crate::inbox::contacts::ContactFilter { attribute: Some(&wanted), ..Default::default() };
                crate::inbox::contacts::search(tc, UserId(0), Role::Owner, &filter, None, 50).map(|v| v.len())
            })
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            times.push(t.elapsed());
        }
        println!("contacts with {what}, over {conversations}: first page of {found} in {:.1?}", median(times));
    }
    // The contacts' export (`GET /api/contacts.csv`), every one of them.
    let mut times = Vec::with_capacity(RUNS);
    let (mut rows, mut bytes) = (0, 0);
    for _ in 0..RUNS {
        let t = Instant::now();
        (rows, bytes) = with_tenant(&mut conn, &scope, |tc| {
            let filter = crate::inbox::contacts::ContactFilter::default();
            crate::inbox::contact_export::export(tc, UserId(AGENT), &filter).map(|(csv, n)| (n, csv.len()))
        })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        times.push(t.elapsed());
    }
    println!(
        "the contacts' export (GET /api/contacts.csv): {rows} contacts, {} KiB in {:.1?}",
        bytes / 1024,
        median(times)
    );
    // The import (`POST /api/contacts/import`) of a full file of WhatsApp
    // numbers nobody has, each with a plan: made (dry, so each run makes
    // them again), then made for good, then the same file again.
    let wa = with_tenant(&mut conn, &scope, |tc| -> Result<i64, AppError> {
        tc.pg().batch_execute(
            "INSERT INTO contact_attributes (key, name, kind, options) VALUES ('plan', 'Plan', 'list', '{free,pro}') \
             ON CONFLICT DO NOTHING",
        )?;
        Ok(diesel::sql_query(
            "INSERT INTO channels (platform, external_id, name) VALUES ('whatsapp', '109876543210987', 'Bench number') \
             RETURNING id",
        )
        .get_result::<Returned>(tc.pg())?
        .id)
    })
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let rows = crate::inbox::contact_import::MOST_ROWS;
    let mut file = String::from("phone,name,attributes.plan\r\n");
    for n in 0..rows {
        file.push_str(&format!("+351 91{n:07},Customer {n},{}\r\n", ["free", "pro"][n % 2]));
    }
    let import = |conn: &mut PgConnection,
                  dry_run: bool|
     -> anyhow::Result<(crate::inbox::contact_import::Imported, Duration)> {
        let t = Instant::now();
        let done = with_tenant(conn, &scope, |tc| {
            let mut log = crate::inbox::events::EventLog::new();
            let channel = Some(crate::channels::ChannelId(wa));
            let done =
                crate::inbox::contact_import::import(tc, &mut log, UserId(AGENT), channel, file.as_bytes(), dry_run)?;
            log.write(tc)?;
            Ok::<_, AppError>(done)
        })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok((done, t.elapsed()))
    };
    let mut times = Vec::with_capacity(3);
    for _ in 0..3 {
        let (done, took) = import(&mut conn, true)?;
        anyhow::ensure!(done.created == rows, "a dry import made {} of {rows}", done.created);
        times.push(took);
    }
    let dry = median(times);
    let (done, made) = import(&mut conn, false)?;
    anyhow::ensure!(done.created == rows, "the import made {} of {rows}", done.created);
    let mut times = Vec::with_capacity(3);
    for _ in 0..3 {
        let (done, took) = import(&mut conn, false)?;
        anyhow::ensure!(done.unchanged == rows, "the same file changed {} of {rows}", rows - done.unchanged);
        times.push(took);
    }
    println!(
        "the contacts' import (POST /api/contacts/import) of {rows} new WhatsApp numbers: {made:.1?} ({dry:.1?} dry); the same file again: {:.1?}",
        median(times)
    );
    // Routing a customer's message (`inbox::routing`) through the most
    // rules a channel keeps, each with the most keywords and the last one
    // with a contact attribute, none of which the message holds: its
    // worst, what a channel with `every_message` rules adds to each
    // message on the webhook path.
    use crate::inbox::routing::{Rule, MOST_KEYWORDS, MOST_RULES};
    let rules: Vec<Rule> = (0..MOST_RULES)
        .map(|r| {
            serde_json::from_value(serde_json::json!({
                "contains": (0..MOST_KEYWORDS).map(|k| format!("palavra{r}x{k}")).collect::<Vec<_>>(),
                "contact_attribute": (r + 1 == MOST_RULES).then_some("plan:pro"),
                "labels": ["routed"], "on": "every_message"}))
        })
        .collect::<Result<_, _>>()?;
    let text = "Olá! Preciso de ajuda com a minha encomenda, que ainda não chegou. ".repeat(8);
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let t = Instant::now();
        let routed = with_tenant(&mut conn, &scope, |tc| {
            use crate::db::tenant_schema::conversations as c;
            let conv: crate::inbox::views::ConversationRow =
                c::table.select(crate::inbox::views::ConversationRow::as_select()).first(tc.pg())?;
            crate::inbox::routing::route(tc, &conv, &rules, Some(&text), false).map(|r| r.is_some())
        })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        anyhow::ensure!(!routed, "a rule matched the bench's message");
        times.push(t.elapsed());
    }
    println!(
        "routing a message of {} characters through {MOST_RULES} rules of {MOST_KEYWORDS} keywords, none met: {:.1?} (with a conversation's read)",
        text.chars().count(),
        median(times)
    );
    // The inbox narrowed the same way (`contact_attribute=vip:true`): a
    // subquery of the contacts through the same index.
    let filter = Filter { contact_attribute: Some(("vip".into(), Some("true".into()))), ..Default::default() };
    let (found, took) = first_page(&mut conn, &scope, &filter)?;
    println!(
        "the inbox of those contacts (contact_attribute=vip:true), over {conversations}: first page of {found} in {took:.1?}"
    );

    // The auto-resolve clock (`inbox::auto_resolve`), last since it
    // resolves: its look every 30 s when every conversation is past the
    // idle time but waits for an answer (its worst look: all read, none
    // taken), then ticks that each resolve a full batch.
    with_tenant(&mut conn, &scope, |tc| -> Result<(), AppError> {
        tc.pg().batch_execute(
            "UPDATE channels SET settings = settings || jsonb_build_object('auto_resolve', jsonb_build_object('after_hours', 1));
             UPDATE conversations SET waiting_since = last_activity_at, updated_at = now() - interval '2 days',
                                      last_activity_at = last_activity_at - interval '3 days';
             ANALYZE conversations;",
        )?;
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let tick = |conn: &mut PgConnection| -> anyhow::Result<(usize, Duration)> {
        let t = Instant::now();
        let n = with_tenant(conn, &scope, |tc| {
            let mut log = crate::inbox::events::EventLog::new();
            let n = crate::inbox::auto_resolve::resolve_idle(tc, &mut log, chrono::Utc::now())?;
            log.write(tc)?;
            Ok::<_, AppError>(n)
        })
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        Ok((n, t.elapsed()))
    };
    let mut times = Vec::with_capacity(RUNS);
    for _ in 0..RUNS {
        let (n, took) = tick(&mut conn)?;
        anyhow::ensure!(n == 0, "auto-resolve took {n} conversations whose customers wait");
        times.push(took);
    }
    println!(
        "the auto-resolve clock's look, {conversations} conversations idle but owed an answer: none resolved in {:.1?}",
        median(times)
    );
    with_tenant(&mut conn, &scope, |tc| -> Result<(), AppError> {
        tc.pg()
            .batch_execute("UPDATE conversations SET waiting_since = NULL, updated_at = now() - interval '2 days'")?;
        Ok(())
    })
    .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    let (mut times, mut resolved) = (Vec::with_capacity(RUNS), 0);
    for _ in 0..RUNS {
        let (n, took) = tick(&mut conn)?;
        resolved += n;
        times.push(took);
    }
    println!(
        "an auto-resolve tick over idle conversations: {} a tick ({resolved} in {RUNS} ticks) in {:.1?}",
        crate::inbox::auto_resolve::BATCH,
        median(times)
    );
    Ok(())
}
