//! [`AsyncPgConnection`]: diesel-async's `AsyncPgConnection` with the request's context on
//! every write (feature `async`).

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

use crate::tagged_connection::TaggedConnection;
use crate::tagged_query::Tagged;

type Inner = diesel_async::AsyncPgConnection;

/// A drop-in replacement for `diesel_async::AsyncPgConnection`: every write carries the active
/// context as a `/*Bemi ... Bemi*/` comment; reads are sent unchanged.
///
/// The context is read when a query's future is created, from the task's scope
/// (`bemi::with_context`, which follows the task across `.await`s and threads) with the
/// connection's own context ([`TaggedConnection::set_context`]) merged over it. Works with
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
pub type AsyncPgConnection = TaggedConnection<Inner>;

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
