//! Hand-written statements kept prepared on their connection.
//!
//! diesel never caches a statement built with `sql_query` (its text could be
//! anything), so each call is parsed, planned and sent in two round trips
//! (prepare, then execute). For the dispatcher's claims, whose text is one
//! of a few fixed strings run hundreds of times a second on one dedicated
//! connection, that planning was a tenth of each claim (BENCHMARKS.md,
//! issue 15). [`Kept`] marks such a statement as safe to cache: diesel-async
//! then keeps it prepared per connection, keyed by its text and bind types.

use diesel::{
    pg::Pg,
    query_builder::{AstPass, Query, QueryFragment, QueryId},
};

/// A statement whose text is fixed (not built from values: everything
/// variable is a bind parameter), so that its connection may keep it
/// prepared. Wrapping a statement whose text embeds values would fill the
/// connection's statement cache with one entry per value: don't.
#[derive(Debug, Clone)]
pub struct Kept<Q>(pub Q);

impl<Q: QueryFragment<Pg>> QueryFragment<Pg> for Kept<Q> {
    fn walk_ast<'b>(&'b self, pass: AstPass<'_, 'b, Pg>) -> diesel::QueryResult<()> {
        self.0.walk_ast(pass)
    }

    fn is_safe_to_cache_prepared(&self, _backend: &Pg) -> diesel::QueryResult<bool> {
        Ok(true)
    }
}

impl<Q> QueryId for Kept<Q> {
    type QueryId = ();
    // Keyed by its text, not by its type: one Rust type serves many texts.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<Q: Query> Query for Kept<Q> {
    type SqlType = Q::SqlType;
}
