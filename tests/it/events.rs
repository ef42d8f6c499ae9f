//! The event log under concurrent writers: a reader polling "everything
//! after the last seq I saw" must never skip a sequence number.

use rand::Rng;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use switchboard::db::{with_tenant, TenantScope};
use switchboard::error::AppError;
use switchboard::inbox::events::{self, EventLog};
use switchboard::tenancy::{self, TenantSlug};

use crate::common::TestDb;

#[test]
fn readers_never_see_a_gap_with_concurrent_writers() {
    const WRITERS: usize = 6;
    const TXS: usize = 40;
    let db = TestDb::new();
    let pool = db.pool(WRITERS as u32 + 2);
    let tenant = {
        let mut conn = pool.get().expect("conn");
        tenancy::provision(&mut conn, &TenantSlug::parse("alpha").expect("slug"), "A").expect("provision").tenant_id()
    };
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (pool, done) = (pool.clone(), done.clone());
        std::thread::spawn(move || {
            let mut conn = pool.get().expect("conn");
            let mut last = 0i64;
            let mut reads = 0;
            loop {
                let finished = done.load(Ordering::SeqCst);
                let batch = with_tenant(&mut conn, &TenantScope::system(tenant), |tc| events::since(tc, last, 1000))
                    .expect("read");
                for e in &batch {
                    assert_eq!(e.seq, last + 1, "a reader at {last} saw {} first: a gap", e.seq);
                    last = e.seq;
                }
                reads += 1;
                if finished && batch.is_empty() {
                    return (last, reads);
                }
            }
        })
    };
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let pool = pool.clone();
            std::thread::spawn(move || {
                let mut conn = pool.get().expect("conn");
                for i in 0..TXS {
                    with_tenant(&mut conn, &TenantScope::system(tenant), |tc| -> Result<(), AppError> {
                        let mut log = EventLog::new();
                        log.append(tc, "test", None, None, serde_json::json!({"w": w, "i": i}))?;
                        // Hold the transaction open a little, as real work does.
                        std::thread::sleep(std::time::Duration::from_micros(rand::thread_rng().gen_range(0..2000)));
                        log.append(tc, "test", None, None, serde_json::json!({"w": w, "i": i, "second": true}))?;
                        log.notify(tc)
                    })
                    .expect("write");
                }
            })
        })
        .collect();
    for w in writers {
        w.join().expect("writer");
    }
    done.store(true, Ordering::SeqCst);
    let (last, reads) = reader.join().expect("reader saw no gap");
    assert_eq!(last, (WRITERS * TXS * 2) as i64);
    assert!(reads > 1);
}

/// Retention drops what is older than its hours, and only that; a purged
/// channel's redacted events are never read back, yet keep their numbers.
#[test]
fn retention_prunes_old_events_and_redacted_ones_are_skipped() {
    use diesel::connection::SimpleConnection;
    let db = TestDb::new();
    let pool = db.pool(2);
    let mut conn = pool.get().expect("conn");
    let tenant =
        tenancy::provision(&mut conn, &TenantSlug::parse("alpha").expect("slug"), "A").expect("provision").tenant_id();
    let scope = TenantScope::system(tenant);
    with_tenant(&mut conn, &scope, |tc| -> Result<(), AppError> {
        let mut log = EventLog::new();
        for i in 0..6 {
            // Events 1–3 of channel 7, 4–6 of channel 8.
            log.append(tc, "test", Some(if i < 3 { 7 } else { 8 }), None, serde_json::json!({"i": i}))?;
        }
        log.notify(tc)
    })
    .expect("write");
    // The first two are 80 hours old.
    conn.batch_execute("UPDATE tenant_alpha.events SET created_at = now() - interval '80 hours' WHERE seq <= 2")
        .expect("age");
    let pruned = with_tenant(&mut conn, &scope, |tc| events::prune(tc, 72)).expect("prune");
    assert_eq!(pruned, 2);
    // Channel 8 purged: its events are emptied, not read, still numbered.
    with_tenant(&mut conn, &scope, |tc| events::redact_channel(tc, 8)).expect("redact");
    let left = with_tenant(&mut conn, &scope, |tc| events::since(tc, 0, 100)).expect("read");
    assert_eq!(left.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3]);
    assert_eq!(with_tenant(&mut conn, &scope, events::oldest_seq).expect("oldest"), Some(3));
    assert_eq!(with_tenant(&mut conn, &scope, events::last_seq).expect("last"), 6);
}

/// The bus's LISTEN connection sleeps until a notification comes (no
/// polling), takes what arrived together whole, in order and intact, and
/// returns empty when its wait ends with nothing.
#[test]
fn the_listen_connection_wakes_when_a_notification_comes() {
    use std::time::{Duration, Instant};
    use switchboard::db::listen::{ListenConnection, Notification};
    let db = TestDb::new();
    let mut listener = ListenConnection::connect(&db.url).expect("connect");
    listener.execute("LISTEN listen_test").expect("listen");
    assert!(listener.execute("LISTEN").is_err(), "a bad command is an error, and the connection stays usable");

    let started = Instant::now();
    assert!(listener.wait(Duration::from_millis(300)).expect("wait").is_empty());
    assert!(started.elapsed() >= Duration::from_millis(250), "it waited: {:?}", started.elapsed());

    let url = db.url.clone();
    let sender = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        let mut other = ListenConnection::connect(&url).expect("connect");
        other
            .execute("NOTIFY listen_test, 'héllo 👋'; NOTIFY other_channel, 'no'; NOTIFY listen_test, 'two'")
            .expect("notify");
    });
    let started = Instant::now();
    let mut got = listener.wait(Duration::from_secs(20)).expect("wait");
    assert!(started.elapsed() < Duration::from_secs(10), "woken by the notification, not the timeout");
    while got.len() < 2 {
        let more = listener.wait(Duration::from_secs(5)).expect("wait");
        assert!(!more.is_empty(), "the second notification of the transaction: {got:?}");
        got.extend(more);
    }
    sender.join().expect("sender");
    let note = |payload: &str| Notification { channel: "listen_test".into(), payload: payload.into() };
    assert_eq!(got, vec![note("héllo 👋"), note("two")]);
}

/// What the server says to the bus listener outside an answer (a notice, or
/// the `FATAL` of a server cutting the connection) goes to the log, not raw
/// to standard error past the log's format.
#[test]
fn the_listener_logs_what_the_server_says_between_answers() {
    use std::sync::{Arc, Mutex};
    use switchboard::db::listen::ListenConnection;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("buffer").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let db = TestDb::new();
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::with_default(subscriber, || {
        let mut listener = ListenConnection::connect(&db.url).expect("connect");
        listener.execute("DO $$ BEGIN RAISE NOTICE 'nothing to see, réunion'; END $$").expect("notice");
    });
    let log = String::from_utf8(captured.0.lock().expect("buffer").clone()).expect("utf-8");
    assert!(log.contains("NOTICE:  nothing to see, réunion"), "{log:?}");
}
