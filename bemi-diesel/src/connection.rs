//! [`PgConnection`]: Diesel's `PgConnection` with the request's context on every write.

use diesel::connection::{
    AnsiTransactionManager, CacheSize, Connection, ConnectionSealed, Instrumentation,
    LoadConnection, SimpleConnection, TransactionManager,
};
use diesel::expression::QueryMetadata;
use diesel::migration::MigrationConnection;
use diesel::pg::{GetPgMetadataCache, Pg, PgMetadataCache};
use diesel::query_builder::{Query, QueryFragment, QueryId};
use diesel::result::{ConnectionResult, QueryResult};

use crate::tagged_connection::TaggedConnection;
use crate::tagged_query::Tagged;

/// A drop-in replacement for [`diesel::PgConnection`]: every INSERT, UPDATE, DELETE, MERGE,
/// TRUNCATE (also `RETURNING` queries, upserts and `sql_query` writes) carries the active
/// context as a `/*Bemi ... Bemi*/` comment; reads are sent unchanged.
///
/// The context is the active scope's (`bemi::with_context`, `bemi::enter_context`) with the
/// connection's own context ([`TaggedConnection::set_context`]) merged over it. Without any
/// context, statements go out untouched and stay in Diesel's prepared-statement cache; tagged
/// statements are never cached (their text changes with the context).
///
/// Every query DSL, `sql_query`, transactions and savepoints, `diesel_migrations` and r2d2 pools
/// work through it as with Diesel's own connection.
///
/// # Examples
///
/// ```no_run
/// use bemi_diesel::PgConnection;
/// use diesel::prelude::*;
///
/// # fn example() -> Result<(), Box<dyn std::error::Error>> {
/// let mut conn = PgConnection::establish("postgres://app@localhost/app")?;
/// let _request = bemi_core::enter_context(bemi_core::Context::new().with("user_id", 7));
/// diesel::sql_query("UPDATE todo SET done = true WHERE id = 1").execute(&mut conn)?;
/// // sent as: UPDATE todo SET done = true WHERE id = 1 /*Bemi {"user_id":7} Bemi*/
/// # Ok(())
/// # }
/// ```
pub type PgConnection = TaggedConnection<diesel::PgConnection>;

impl SimpleConnection for PgConnection {
    fn batch_execute(&mut self, query: &str) -> QueryResult<()> {
        match self.tagging.tag_sql(query) {
            Some(tagged) => self.inner.batch_execute(&tagged),
            None => self.inner.batch_execute(query),
        }
    }
}

impl ConnectionSealed for PgConnection {}

impl Connection for PgConnection {
    type Backend = Pg;
    type TransactionManager = AnsiTransactionManager;

    fn establish(database_url: &str) -> ConnectionResult<Self> {
        diesel::PgConnection::establish(database_url).map(Self::new)
    }

    fn execute_returning_count<T>(&mut self, source: &T) -> QueryResult<usize>
    where
        T: QueryFragment<Pg> + QueryId,
    {
        match self.tagging.comment_for(source)? {
            Some(comment) => self
                .inner
                .execute_returning_count(&Tagged::new(source, &comment)),
            None => self.inner.execute_returning_count(source),
        }
    }

    fn transaction_state(
        &mut self,
    ) -> &mut <AnsiTransactionManager as TransactionManager<Self>>::TransactionStateData {
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

impl<B> LoadConnection<B> for PgConnection
where
    diesel::PgConnection: LoadConnection<B, Backend = Pg>,
{
    type Cursor<'conn, 'query> = <diesel::PgConnection as LoadConnection<B>>::Cursor<'conn, 'query>;
    type Row<'conn, 'query> = <diesel::PgConnection as LoadConnection<B>>::Row<'conn, 'query>;

    fn load<'conn, 'query, T>(
        &'conn mut self,
        source: T,
    ) -> QueryResult<Self::Cursor<'conn, 'query>>
    where
        T: Query + QueryFragment<Pg> + QueryId + 'query,
        Pg: QueryMetadata<T::SqlType>,
    {
        match self.tagging.comment_for(&source)? {
            Some(comment) => {
                LoadConnection::<B>::load(&mut self.inner, Tagged::new(source, &comment))
            }
            None => LoadConnection::<B>::load(&mut self.inner, source),
        }
    }
}

impl GetPgMetadataCache for PgConnection {
    fn get_metadata_cache(&mut self) -> &mut PgMetadataCache {
        self.inner.get_metadata_cache()
    }
}

impl MigrationConnection for PgConnection {
    fn setup(&mut self) -> QueryResult<usize> {
        self.inner.setup()
    }
}

/// `diesel::copy_from(table)...execute(&mut conn)` through the wrapper: the rows carry the
/// context. A `COPY` statement's text is Diesel's to build, so the context travels in the
/// transaction-local setting the context trigger also reads (`bemi.context`), set for the `COPY`
/// and cleared after it (a transaction is opened around it when none is). `COPY TO` is a read:
/// run it on [`PgConnection::inner_mut`].
impl<T, A> diesel::ExecuteCopyFromDsl<PgConnection> for diesel::pg::CopyFromQuery<T, A>
where
    diesel::pg::CopyFromQuery<T, A>: diesel::ExecuteCopyFromDsl<diesel::PgConnection>,
    <diesel::pg::CopyFromQuery<T, A> as diesel::ExecuteCopyFromDsl<diesel::PgConnection>>::Error:
        From<diesel::result::Error>,
{
    type Error = <diesel::pg::CopyFromQuery<T, A> as diesel::ExecuteCopyFromDsl<
        diesel::PgConnection,
    >>::Error;

    fn execute(self, conn: &mut PgConnection) -> Result<usize, Self::Error> {
        let Some(comment) = conn.tagging.context_comment() else {
            return self.execute(&mut conn.inner);
        };
        let payload = comment.payload().to_owned();
        let copy = move |inner: &mut diesel::PgConnection| -> Result<usize, Self::Error> {
            inner.batch_execute(&crate::tagging::set_context_sql(&payload))?;
            let copied = self.execute(inner)?;
            inner.batch_execute(&crate::tagging::set_context_sql(""))?;
            Ok(copied)
        };
        if AnsiTransactionManager::transaction_manager_status_mut(&mut conn.inner)
            .transaction_depth()
            .ok()
            .flatten()
            .is_some()
        {
            copy(&mut conn.inner)
        } else {
            conn.inner.transaction(copy)
        }
    }
}

impl diesel::r2d2::R2D2Connection for PgConnection {
    fn ping(&mut self) -> QueryResult<()> {
        self.inner.ping()
    }

    /// r2d2 asks this of every connection returned to the pool: the connection's own context
    /// ([`PgConnection::set_context`]) is cleared here, so it never reaches the pool's next user.
    fn is_broken(&mut self) -> bool {
        self.clear_context();
        self.inner.is_broken()
    }
}

impl<'b, Changes, Output> diesel::query_dsl::UpdateAndFetchResults<Changes, Output> for PgConnection
where
    Changes: Copy
        + diesel::AsChangeset<Target = <Changes as diesel::associations::HasTable>::Table>
        + diesel::query_builder::IntoUpdateTarget,
    diesel::dsl::Update<Changes, Changes>: diesel::query_dsl::LoadQuery<'b, PgConnection, Output>,
    <Changes::Table as diesel::Table>::AllColumns: diesel::expression::ValidGrouping<()>,
    <<Changes::Table as diesel::Table>::AllColumns as diesel::expression::ValidGrouping<()>>::IsAggregate:
        diesel::expression::MixedAggregates<
            diesel::expression::is_aggregate::No,
            Output = diesel::expression::is_aggregate::No,
        >,
{
    fn update_and_fetch(&mut self, changeset: Changes) -> QueryResult<Output> {
        use diesel::RunQueryDsl;
        diesel::update(changeset).set(changeset).get_result(self)
    }
}
