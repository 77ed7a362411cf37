//! [`TaggedConnection`]: a Diesel connection (sync or async) whose writes carry the request's
//! context. [`crate::PgConnection`] and `AsyncPgConnection` are its two instances.

use bemi_core::{CommentEncoder, Context};

use crate::tagging::Tagging;

/// A Diesel connection `C` whose every write carries the active context as a
/// `/*Bemi ... Bemi*/` comment; reads are sent unchanged. Use it through its instances,
/// [`crate::PgConnection`] (`diesel::PgConnection`) and `AsyncPgConnection`
/// (`diesel_async::AsyncPgConnection`, feature `async`), which implement Diesel's connection
/// traits.
///
/// The context is the active scope's (`bemi::with_context`, `bemi::enter_context`) with the
/// connection's own context ([`TaggedConnection::set_context`]) merged over it.
pub struct TaggedConnection<C> {
    pub(crate) inner: C,
    pub(crate) tagging: Tagging,
}

impl<C> std::fmt::Debug for TaggedConnection<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaggedConnection")
            .field("context", &self.tagging.context)
            .finish_non_exhaustive()
    }
}

impl<C> TaggedConnection<C> {
    /// Wraps an established connection.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            tagging: Tagging::default(),
        }
    }

    /// Sets a context of this connection, merged over the scope's for every write until it is
    /// cleared (for a unit of work, e.g. a job holding the connection). Pools clear it when
    /// they take the connection back.
    pub fn set_context(&mut self, context: impl Into<Context>) {
        self.tagging.context = Some(context.into());
    }

    /// Removes the connection's own context.
    pub fn clear_context(&mut self) {
        self.tagging.context = None;
    }

    /// The connection's own context, if set.
    pub fn context(&self) -> Option<&Context> {
        self.tagging.context.as_ref()
    }

    /// Uses `encoder` (e.g. with another size cap) for the comments.
    pub fn set_encoder(&mut self, encoder: CommentEncoder) {
        self.tagging.encoder = encoder;
    }

    /// The wrapped Diesel connection (writes made through it directly are not tagged).
    pub fn inner_mut(&mut self) -> &mut C {
        &mut self.inner
    }

    /// Unwraps the Diesel connection.
    pub fn into_inner(self) -> C {
        self.inner
    }

    /// The context a write made now carries (the scope's with the connection's own over it).
    pub fn effective_context(&self) -> Context {
        self.tagging.effective_context().unwrap_or_default()
    }
}

impl<C> From<C> for TaggedConnection<C> {
    fn from(inner: C) -> Self {
        Self::new(inner)
    }
}
