//! [`Tagged`]: a query with the bemi comment appended to its SQL.

use bemi_core::Comment;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::result::QueryResult;

/// `inner` followed by ` /*Bemi ... Bemi*/`.
///
/// Never cached as a prepared statement and without a static query id: with either, Diesel would
/// reuse the first request's SQL, and so its context, for every later request.
#[derive(Debug, Clone)]
pub(crate) struct Tagged<T> {
    inner: T,
    comment: String,
}

impl<T> Tagged<T> {
    pub(crate) fn new(inner: T, comment: &Comment) -> Self {
        Self {
            inner,
            comment: comment.as_str().to_owned(),
        }
    }
}

impl<T: QueryFragment<Pg>> QueryFragment<Pg> for Tagged<T> {
    fn walk_ast<'b>(&'b self, mut pass: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        pass.unsafe_to_cache_prepared();
        self.inner.walk_ast(pass.reborrow())?;
        pass.push_sql(&self.comment);
        Ok(())
    }
}

impl<T> QueryId for Tagged<T> {
    type QueryId = ();
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<T: Query> Query for Tagged<T> {
    type SqlType = T::SqlType;
}
