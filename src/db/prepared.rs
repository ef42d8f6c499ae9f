//! Hand-written SQL that PostgreSQL parses and plans once per connection.
//!
//! diesel keeps a prepared statement per connection for queries built with
//! its DSL, but not for `sql_query` or `dsl::sql` (it cannot know the text
//! is fixed), so each run of such a statement is parsed and planned again.
//! On the webhook path that is most of PostgreSQL's work for a small batch
//! (~0.1–0.5 ms a statement). [`prepared`] takes only `&'static str`, so
//! the text cannot be built at run time and the statement is safe to keep.
//!
//! Placeholders are written `$1`, `$2`, … for the first, second, … `bind`;
//! one may be used more than once. A `$` followed by digits is always a
//! placeholder, so such text cannot appear in a literal (use a bind).

use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};
use diesel::{QueryResult, RunQueryDsl};
use std::marker::PhantomData;

/// A statement with fixed text and its bound values.
#[must_use = "a statement runs only when executed or loaded"]
pub struct Prepared<B = ()> {
    sql: &'static str,
    binds: B,
}

/// Starts a statement; see the module docs for placeholders.
pub fn prepared(sql: &'static str) -> Prepared<()> {
    Prepared { sql, binds: () }
}

/// One bound value of SQL type `ST`.
pub struct Bound<ST, V> {
    value: V,
    _type: PhantomData<ST>,
}

impl<B> Prepared<B> {
    /// The value for the next placeholder.
    pub fn bind<ST, V>(self, value: V) -> Prepared<(B, Bound<ST, V>)> {
        Prepared { sql: self.sql, binds: (self.binds, Bound { value, _type: PhantomData }) }
    }
}

/// The text split at its placeholders: each piece of SQL with the number
/// of the placeholder after it (`None` after the last piece).
fn pieces(sql: &str) -> impl Iterator<Item = (&str, Option<usize>)> {
    let mut rest = Some(sql);
    std::iter::from_fn(move || {
        let text = rest?;
        let mut from = 0;
        while let Some(i) = text[from..].find('$') {
            let at = from + i;
            let digits = text[at + 1..].bytes().take_while(u8::is_ascii_digit).count();
            if let Ok(n) = text[at + 1..at + 1 + digits].parse::<usize>() {
                rest = Some(&text[at + 1 + digits..]);
                return Some((&text[..at], Some(n)));
            }
            from = at + 1;
        }
        rest = None;
        Some((text, None))
    })
}

/// Bound values; `$n` in the text is the n-th.
pub trait Binds {
    const LEN: usize;
    fn push<'b>(&'b self, n: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

impl Binds for () {
    const LEN: usize = 0;
    fn push<'b>(&'b self, n: usize, _: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        Err(diesel::result::Error::QueryBuilderError(format!("${n} has no bound value").into()))
    }
}

impl<B: Binds, ST, V> Binds for (B, Bound<ST, V>)
where
    Pg: HasSqlType<ST>,
    V: ToSql<ST, Pg>,
{
    const LEN: usize = B::LEN + 1;
    fn push<'b>(&'b self, n: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        if n == Self::LEN {
            out.push_bind_param::<ST, V>(&self.1.value)
        } else {
            self.0.push(n, out)
        }
    }
}

impl<B: Binds> QueryFragment<Pg> for Prepared<B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // diesel numbers parameters in the order they are pushed, so a
        // placeholder used twice is sent twice (same value, same type).
        for (sql, n) in pieces(self.sql) {
            out.push_sql(sql);
            if let Some(n) = n {
                self.binds.push(n, &mut out)?;
            }
        }
        Ok(())
    }
}

// No static id: diesel then keys its statement cache by the SQL text and
// the bind types, which are fixed for each call site.
impl<B> QueryId for Prepared<B> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> Query for Prepared<B> {
    type SqlType = Untyped;
}

impl<B, Conn> RunQueryDsl<Conn> for Prepared<B> {}

#[cfg(test)]
mod tests {
    use super::*;
    use diesel::sql_types::{BigInt, Text};

    #[test]
    fn placeholders_split_the_text() {
        let p: Vec<_> = pieces("SELECT $1::bigint, '$x', $2 || $10").collect();
        assert_eq!(p, vec![("SELECT ", Some(1)), ("::bigint, '$x', ", Some(2)), (" || ", Some(10)), ("", None)]);
        assert_eq!(pieces("SELECT 1").collect::<Vec<_>>(), vec![("SELECT 1", None)]);
    }

    #[test]
    fn the_sql_diesel_sees_numbers_each_use_of_a_value() {
        let q =
            prepared("SELECT $1::bigint AS a, $2::text AS b, $1 + 1 AS c").bind::<BigInt, _>(7i64).bind::<Text, _>("x");
        let sql = diesel::debug_query::<Pg, _>(&q).to_string();
        assert!(sql.starts_with("SELECT $1::bigint AS a, $2::text AS b, $3 + 1 AS c"), "{sql}");
        assert!(sql.contains("[7, \"x\", 7]"), "{sql}");
        let missing = prepared("SELECT $2").bind::<BigInt, _>(1i64);
        let mut builder = diesel::pg::PgQueryBuilder::default();
        assert!(missing.to_sql(&mut builder, &Pg).is_err(), "a placeholder without a value is an error");
    }
}
