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

    /// A raw SQL string as sent: writes carry the comment; DDL runs with the context in the
    /// transaction-local setting `bemi.context` too, which bemi's DDL event trigger reads (a
    /// comment is only read by the row triggers), cleared after it.
    pub(crate) fn tag_sql(&mut self, sql: &str) -> Option<String> {
        let context = self.effective_context()?;
        let comment = if is_write(sql) {
            self.comment(context)
        } else {
            None
        };
        let tagged = match &comment {
            Some(comment) => comment.append_to(sql),
            None => sql.to_owned(),
        };
        if !bemi_core::is_ddl(sql) {
            return comment.map(|_| tagged);
        }
        let payload = match comment {
            Some(comment) => comment.payload().to_owned(),
            None => self
                .comment(self.effective_context()?)?
                .payload()
                .to_owned(),
        };
        let payload = bemi_core::quote_literal(&payload);
        Some(format!(
            "SELECT pg_catalog.set_config('bemi.context', {payload}, true);\n{tagged};\n\
             SELECT pg_catalog.set_config('bemi.context', '', true)"
        ))
    }

    /// The comment to append to a raw SQL string, or `None`.
    pub(crate) fn comment_for_sql(&mut self, sql: &str) -> Option<Comment> {
        let context = self.effective_context()?;
        if is_write(sql) {
            self.comment(context)
        } else {
            None
        }
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
