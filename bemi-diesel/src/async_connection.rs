//! [`AsyncPgConnection`]: diesel-async's `AsyncPgConnection` with the request's context on
//! every write (feature `async`).

use bemi_core::{CommentEncoder, Context};
use diesel::QueryResult;
use diesel::connection::{CacheSize, Instrumentation};
use diesel::pg::Pg;
use diesel::query_builder::{AsQuery, QueryFragment, QueryId};
use diesel::result::ConnectionResult;
use diesel_async::{
    AnsiTransactionManager, AsyncConnection, AsyncConnectionCore, SimpleAsyncConnection,
};
use futures_util::FutureExt;
use futures_util::future::BoxFuture;

use crate::tagged_query::Tagged;
use crate::tagging::Tagging;

type Inner = diesel_async::AsyncPgConnection;

/// A drop-in replacement for `diesel_async::AsyncPgConnection`: every write carries the active
/// context as a `/*Bemi ... Bemi*/` comment; reads are sent unchanged.
///
/// The context is read when a query's future is created, from the task's scope
/// (`bemi::with_context`, which follows the task across `.await`s and threads) with the
/// connection's own context ([`AsyncPgConnection::set_context`]) merged over it. Works with
/// diesel-async's deadpool and bb8 pools:
///
/// ```no_run
/// use diesel_async::pooled_connection::AsyncDieselConnectionManager;
/// use diesel_async::pooled_connection::deadpool::Pool;
///
/// # fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let manager = AsyncDieselConnectionManager::<bemi_diesel::AsyncPgConnection>::new("postgres://app@localhost/app");
/// let pool = Pool::builder(manager).build()?;
/// # Ok(())
/// # }
/// ```
pub struct AsyncPgConnection {
    inner: Inner,
    tagging: Tagging,
}

impl std::fmt::Debug for AsyncPgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AsyncPgConnection")
            .field("context", &self.tagging.context)
            .finish_non_exhaustive()
    }
}

impl AsyncPgConnection {
    /// Wraps an established connection.
    pub fn new(inner: Inner) -> Self {
        Self {
            inner,
            tagging: Tagging::default(),
        }
    }

    /// Sets a context of this connection, merged over the task's for every write until it is
    /// cleared.
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

    /// The wrapped connection (writes made through it directly are not tagged).
    pub fn inner_mut(&mut self) -> &mut Inner {
        &mut self.inner
    }

    /// Unwraps the diesel-async connection.
    pub fn into_inner(self) -> Inner {
        self.inner
    }

    /// The context a write made now carries (the task's with the connection's own over it).
    pub fn effective_context(&self) -> Context {
        self.tagging.effective_context().unwrap_or_default()
    }
}

impl From<Inner> for AsyncPgConnection {
    fn from(inner: Inner) -> Self {
        Self::new(inner)
    }
}

impl SimpleAsyncConnection for AsyncPgConnection {
    async fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        match self.tagging.tag_sql(query) {
            Some(tagged) => self.inner.batch_execute(&tagged).await,
            None => self.inner.batch_execute(query).await,
        }
    }
}

impl AsyncConnectionCore for AsyncPgConnection {
    type ExecuteFuture<'conn, 'query> =
        <Inner as AsyncConnectionCore>::ExecuteFuture<'conn, 'query>;
    type LoadFuture<'conn, 'query> = <Inner as AsyncConnectionCore>::LoadFuture<'conn, 'query>;
    type Stream<'conn, 'query> = <Inner as AsyncConnectionCore>::Stream<'conn, 'query>;
    type Row<'conn, 'query> = <Inner as AsyncConnectionCore>::Row<'conn, 'query>;
    type Backend = Pg;

    fn load<'conn, 'query, T>(&'conn mut self, source: T) -> Self::LoadFuture<'conn, 'query>
    where
        T: AsQuery + 'query,
        T::Query: QueryFragment<Pg> + QueryId + 'query,
    {
        let query = source.as_query();
        match self.tagging.comment_for(&query) {
            Ok(Some(comment)) => {
                AsyncConnectionCore::load(&mut self.inner, Tagged::new(query, &comment))
            }
            Ok(None) => AsyncConnectionCore::load(&mut self.inner, query),
            Err(error) => std::future::ready(Err(error)).boxed(),
        }
    }

    fn execute_returning_count<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> Self::ExecuteFuture<'conn, 'query>
    where
        T: QueryFragment<Pg> + QueryId + 'query,
    {
        match self.tagging.comment_for(&source) {
            Ok(Some(comment)) => AsyncConnectionCore::execute_returning_count(
                &mut self.inner,
                Tagged::new(source, &comment),
            ),
            Ok(None) => AsyncConnectionCore::execute_returning_count(&mut self.inner, source),
            Err(error) => std::future::ready(Err(error)).boxed(),
        }
    }
}

impl AsyncConnection for AsyncPgConnection {
    type TransactionManager = AnsiTransactionManager;

    async fn establish(database_url: &str) -> ConnectionResult<Self> {
        Inner::establish(database_url).await.map(Self::new)
    }

    fn transaction_state(&mut self) -> &mut AnsiTransactionManager {
        self.inner.transaction_state()
    }

    fn instrumentation(&mut self) -> &mut dyn Instrumentation {
        self.inner.instrumentation()
    }

    fn set_instrumentation(&mut self, instrumentation: impl Instrumentation) {
        self.inner.set_instrumentation(instrumentation);
    }

    fn set_prepared_statement_cache_size(&mut self, size: CacheSize) {
        self.inner.set_prepared_statement_cache_size(size);
    }
}

impl diesel_async::pooled_connection::PoolableConnection for AsyncPgConnection {
    /// The pools ask this of every connection they take back (bb8) or hand out again
    /// (deadpool): the connection's own context ([`AsyncPgConnection::set_context`]) is cleared
    /// here, so it never reaches the pool's next user.
    fn is_broken(&mut self) -> bool {
        self.clear_context();
        self.inner.is_broken()
    }
}

impl<'b, Changes, Output, Tab, V> diesel_async::UpdateAndFetchResults<Changes, Output>
    for AsyncPgConnection
where
    Output: Send + 'static,
    Changes: Copy
        + diesel::AsChangeset<Target = Tab>
        + Send
        + diesel::associations::Identifiable<Table = Tab>,
    Tab: diesel::Table + diesel::query_dsl::methods::FindDsl<Changes::Id> + 'b,
    diesel::dsl::Find<Tab, Changes::Id>:
        diesel::query_builder::IntoUpdateTarget<Table = Tab, WhereClause = V>,
    diesel::query_builder::UpdateStatement<Tab, V, Changes::Changeset>: AsQuery,
    diesel::dsl::Update<Changes, Changes>: diesel_async::methods::LoadQuery<'b, Self, Output>,
    V: Send + 'b,
    Changes::Changeset: Send + 'b,
    Tab::FromClause: Send,
{
    fn update_and_fetch<'conn, 'changes>(
        &'conn mut self,
        changeset: Changes,
    ) -> BoxFuture<'changes, QueryResult<Output>>
    where
        Changes: 'changes,
        Changes::Changeset: 'changes,
        'conn: 'changes,
        Self: 'changes,
    {
        use diesel_async::RunQueryDsl;
        async move {
            diesel::update(changeset)
                .set(changeset)
                .get_result(self)
                .await
        }
        .boxed()
    }
}
