//! The database layer's lock helpers (`db::locks`), on a real PostgreSQL.

use diesel::connection::SimpleConnection;
use diesel::prelude::*;
use diesel::result::Error;
use switchboard::db::locks::{in_turn, Taken};

use crate::common::TestDb;

/// Whether another connection could lock row `id` of the probe at once.
fn free(other: &mut PgConnection, id: i32) -> bool {
    other.batch_execute(&format!("SELECT id FROM public.in_turn_probe WHERE id = {id} FOR UPDATE NOWAIT")).is_ok()
}

/// `in_turn` as a deletion uses it, inside a transaction: an attempt that
/// finds a late row lets go of every lock it took and is tried again, at
/// most the given times; one that takes all keeps its locks until the
/// transaction ends; one that fails undoes its writes and leaves the
/// transaction usable.
#[test]
fn in_turn_lets_go_of_a_late_attempts_locks_and_keeps_a_whole_ones() {
    let db = TestDb::new();
    let (mut conn, mut other) = (db.conn(), db.conn());
    conn.batch_execute(
        "CREATE TABLE public.in_turn_probe (id int PRIMARY KEY); INSERT INTO public.in_turn_probe VALUES (1)",
    )
    .expect("probe");
    let lock = "SELECT id FROM public.in_turn_probe WHERE id = 1 FOR UPDATE";

    let mut tries = 0;
    let given_up = conn.transaction(|conn| -> Result<Option<()>, Error> {
        let found = in_turn(conn, 3, |conn| -> Result<Taken<()>, Error> {
            tries += 1;
            conn.batch_execute(lock)?;
            assert!(!free(&mut other, 1), "held while the attempt runs");
            Ok(Taken::Late)
        })?;
        assert!(free(&mut other, 1), "let go though the transaction goes on");
        Ok(found)
    });
    assert_eq!((given_up, tries), (Ok(None), 3), "tried the given times, then given up");

    let mut tries = 0;
    let taken = conn.transaction(|conn| -> Result<Option<i32>, Error> {
        let found = in_turn(conn, 3, |conn| -> Result<Taken<i32>, Error> {
            tries += 1;
            conn.batch_execute(lock)?;
            Ok(if tries < 2 { Taken::Late } else { Taken::All(tries) })
        })?;
        assert!(!free(&mut other, 1), "kept until the transaction ends");
        Ok(found)
    });
    assert_eq!(taken, Ok(Some(2)), "the second attempt took all");
    assert!(free(&mut other, 1), "let go at the end");

    let failed = conn.transaction(|conn| -> Result<i64, Error> {
        let undone = in_turn(conn, 3, |conn| -> Result<Taken<()>, Error> {
            conn.batch_execute("INSERT INTO public.in_turn_probe VALUES (2)")?;
            Err(Error::NotFound)
        });
        assert_eq!(undone, Err(Error::NotFound), "the attempt's error");
        // The transaction goes on, without the failed attempt's row.
        diesel::sql_query("SELECT count(*) AS n FROM public.in_turn_probe").get_result::<Count>(conn).map(|c| c.n)
    });
    assert_eq!(failed, Ok(1));
}

#[derive(QueryableByName)]
struct Count {
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    n: i64,
}
