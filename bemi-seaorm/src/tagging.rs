//! Rewriting statements: the active context appended to writes and DDL.

use bemi_core::{CommentEncoder, Context, is_ddl, is_write, with_current_context};
use sea_orm::Statement;

/// The context a write made now carries: the task's (or thread's) scope with `own` merged over
/// it; `None` when both are empty.
pub(crate) fn effective_context(own: Option<&Context>) -> Option<Context> {
    with_current_context(|scope| match (scope, own) {
        (None, None) => None,
        (Some(scope), None) => Some(scope.clone()),
        (None, Some(own)) => Some(own.clone()),
        (Some(scope), Some(own)) => Some(scope.merged(own)),
    })
    .filter(|context| !context.is_empty())
}

/// `sql` with the comment appended when it is a write or DDL and a context is active (bemi's
/// event triggers read a DDL statement's comment, so schema changes show who made them).
pub(crate) fn tag_sql(
    sql: &str,
    own: Option<&Context>,
    encoder: &CommentEncoder,
) -> Option<String> {
    if !is_write(sql) && !is_ddl(sql) {
        return None;
    }
    let context = effective_context(own)?;
    encoder
        .comment(&context)
        .map(|comment| comment.append_to(sql))
}

/// `statement` with the comment appended to its SQL when needed.
pub(crate) fn tag_statement(
    mut statement: Statement,
    own: Option<&Context>,
    encoder: &CommentEncoder,
) -> Statement {
    if let Some(tagged) = tag_sql(&statement.sql, own, encoder) {
        statement.sql = tagged;
    }
    statement
}
