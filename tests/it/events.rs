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
