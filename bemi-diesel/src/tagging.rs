//! Deciding, for each query a connection runs, whether it carries a comment and which.

use std::any::TypeId;
use std::collections::HashMap;

use bemi_core::{Comment, CommentEncoder, Context, is_write, with_current_context};
use diesel::pg::{Pg, PgQueryBuilder};
use diesel::query_builder::{QueryBuilder, QueryFragment, QueryId};
use diesel::result::QueryResult;

/// The tagging state of one connection: its explicit context, encoder, and what it learned about
/// statically identified queries.
#[derive(Debug, Default)]
pub(crate) struct Tagging {
    pub(crate) context: Option<Context>,
    pub(crate) encoder: CommentEncoder,
    /// Whether a query with a static id is a write (its SQL never changes).
    writes: HashMap<TypeId, bool>,
    /// The last context encoded and its comment: requests write with the same context.
    last: Option<(Context, Comment)>,
}

impl Tagging {
    /// The context a write made now carries: the active scope's, with the connection's explicit
    /// context merged over it.
    pub(crate) fn effective_context(&self) -> Option<Context> {
        with_current_context(|scope| match (scope, &self.context) {
            (None, None) => None,
            (Some(scope), None) => Some(scope.clone()),
            (None, Some(own)) => Some(own.clone()),
            (Some(scope), Some(own)) => Some(scope.merged(own)),
        })
        .filter(|context| !context.is_empty())
    }

    /// The comment to append to `query`, or `None` for reads and when no context is active.
    pub(crate) fn comment_for<T>(&mut self, query: &T) -> QueryResult<Option<Comment>>
    where
        T: QueryFragment<Pg> + QueryId,
    {
        let Some(context) = self.effective_context() else {
            return Ok(None);
        };
        if !self.is_write(query)? {
            return Ok(None);
        }
        Ok(self.comment(context))
    }

    /// A raw SQL string as sent: writes and DDL carry the comment (bemi's row triggers and its
    /// DDL event triggers both read it).
    pub(crate) fn tag_sql(&mut self, sql: &str) -> Option<String> {
        if !is_write(sql) && !bemi_core::is_ddl(sql) {
            return None;
        }
        Some(self.context_comment()?.append_to(sql))
    }

    /// The comment carrying the context a statement made now carries (whatever the statement),
    /// or `None` without a context.
    pub(crate) fn context_comment(&mut self) -> Option<Comment> {
        let context = self.effective_context()?;
        self.comment(context)
    }

    fn comment(&mut self, context: Context) -> Option<Comment> {
        if let Some((last, comment)) = &self.last
            && *last == context
        {
            return Some(comment.clone());
        }
        let comment = self.encoder.comment(&context)?;
        self.last = Some((context, comment.clone()));
        Some(comment)
    }

    fn is_write<T>(&mut self, query: &T) -> QueryResult<bool>
    where
        T: QueryFragment<Pg> + QueryId,
    {
        let id = T::query_id();
        if let Some(known) = id.and_then(|id| self.writes.get(&id)) {
            return Ok(*known);
        }
        let mut builder = PgQueryBuilder::default();
        query.to_sql(&mut builder, &Pg)?;
        let write = is_write(&builder.finish());
        if let Some(id) = id {
            self.writes.insert(id, write);
        }
        Ok(write)
    }
}

/// Sets the transaction-local `bemi.context` that bemi's triggers read when a statement carries
/// no comment (`payload` is an encoded payload; `""` clears it).
pub(crate) fn set_context_sql(payload: &str) -> String {
    format!(
        "SELECT pg_catalog.set_config('bemi.context', {}, true)",
        bemi_core::quote_literal(payload)
    )
}
