//! [`Connection`]: a SeaORM connection or transaction whose writes carry the request's context.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bemi_core::{CommentEncoder, Context};
use sea_orm::{
    AccessMode, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr,
    ExecResult, IsolationLevel, QueryResult, Statement, StreamTrait, TransactionError,
    TransactionOptions, TransactionSession, TransactionTrait,
};

use crate::tagging::{tag_sql, tag_statement};

/// A SeaORM connection (by default the `DatabaseConnection` pool) whose writes carry the active
/// context as a `/*Bemi ... Bemi*/` comment.
///
/// It implements `ConnectionTrait`, `TransactionTrait` (transactions are wrapped too, so writes
/// inside `transaction(...)` and `begin()` are tagged), `TransactionSession` and `StreamTrait`,
/// so it goes wherever SeaORM takes a connection. Cloning is cheap (the pool is shared), so a
/// wrapper can be made per request, e.g. with its own context ([`Connection::with_context`]).
///
/// The context is the task's scope (`bemi::with_context`) with the wrapper's own context merged
/// over it, read when each statement runs.
#[derive(Clone)]
pub struct Connection<C = DatabaseConnection> {
    inner: C,
    context: Option<Arc<Context>>,
    encoder: CommentEncoder,
}

/// A transaction opened through a [`Connection`].
pub type Transaction = Connection<DatabaseTransaction>;

impl<C> std::fmt::Debug for Connection<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

impl<C> Connection<C> {
    /// Wraps a SeaORM connection.
    pub fn new(inner: C) -> Self {
        Self {
            inner,
            context: None,
            encoder: CommentEncoder::default(),
        }
    }

    /// A wrapper whose writes also carry `context`, merged over the scope's (e.g. for a job or a
    /// unit of work).
    #[must_use]
    pub fn with_context(&self, context: impl Into<Context>) -> Self
    where
        C: Clone,
    {
        Self {
            inner: self.inner.clone(),
            context: Some(Arc::new(context.into())),
            encoder: self.encoder,
        }
    }

    /// Uses `encoder` (e.g. with another size cap) for the comments.
    #[must_use]
    pub fn with_encoder(mut self, encoder: CommentEncoder) -> Self {
        self.encoder = encoder;
        self
    }

    /// The wrapper's own context, if set.
    pub fn context(&self) -> Option<&Context> {
        self.context.as_deref()
    }

    /// The wrapped connection (writes made through it directly are not tagged).
    pub fn inner(&self) -> &C {
        &self.inner
    }

    /// Unwraps the SeaORM connection.
    pub fn into_inner(self) -> C {
        self.inner
    }

    /// The context a write made now carries (the task's with the wrapper's own over it).
    pub fn effective_context(&self) -> Context {
        let scope = bemi_core::current_context();
        match &self.context {
            Some(own) => scope.merged(own),
            None => scope,
        }
    }

    fn tag(&self, statement: Statement) -> Statement {
        tag_statement(statement, self.context.as_deref(), &self.encoder)
    }

    fn wrap<T>(&self, inner: T) -> Connection<T> {
        Connection {
            inner,
            context: self.context.clone(),
            encoder: self.encoder,
        }
    }
}

impl Connection<DatabaseTransaction> {
    /// Commits the transaction.
    ///
    /// # Errors
    ///
    /// SeaORM's error when `COMMIT` fails.
    pub async fn commit(self) -> Result<(), DbErr> {
        self.inner.commit().await
    }

    /// Rolls the transaction back.
    ///
    /// # Errors
    ///
    /// SeaORM's error when `ROLLBACK` fails.
    pub async fn rollback(self) -> Result<(), DbErr> {
        self.inner.rollback().await
    }
}

impl From<DatabaseConnection> for Connection {
    fn from(inner: DatabaseConnection) -> Self {
        Self::new(inner)
    }
}

#[async_trait::async_trait]
impl<C: ConnectionTrait + Send> ConnectionTrait for Connection<C> {
    fn get_database_backend(&self) -> DbBackend {
        self.inner.get_database_backend()
    }

    async fn execute_raw(&self, statement: Statement) -> Result<ExecResult, DbErr> {
        self.inner.execute_raw(self.tag(statement)).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        match tag_sql(sql, self.context.as_deref(), &self.encoder) {
            Some(tagged) => self.inner.execute_unprepared(&tagged).await,
            None => self.inner.execute_unprepared(sql).await,
        }
    }

    async fn query_one_raw(&self, statement: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.inner.query_one_raw(self.tag(statement)).await
    }

    async fn query_all_raw(&self, statement: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.inner.query_all_raw(self.tag(statement)).await
    }

    fn support_returning(&self) -> bool {
        self.inner.support_returning()
    }

    fn is_mock_connection(&self) -> bool {
        self.inner.is_mock_connection()
    }
}

impl<C: StreamTrait> StreamTrait for Connection<C> {
    type Stream<'a>
        = C::Stream<'a>
    where
        Self: 'a;

    fn get_database_backend(&self) -> DbBackend {
        self.inner.get_database_backend()
    }

    fn stream_raw<'a>(
        &'a self,
        statement: Statement,
    ) -> Pin<Box<dyn Future<Output = Result<Self::Stream<'a>, DbErr>> + 'a + Send>> {
        self.inner.stream_raw(self.tag(statement))
    }
}

#[async_trait::async_trait]
impl<C> TransactionTrait for Connection<C>
where
    C: TransactionTrait + Send + Sync,
    C::Transaction: Sync,
{
    type Transaction = Connection<C::Transaction>;

    async fn begin(&self) -> Result<Self::Transaction, DbErr> {
        Ok(self.wrap(self.inner.begin().await?))
    }

    async fn begin_with_config(
        &self,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<Self::Transaction, DbErr> {
        Ok(self.wrap(
            self.inner
                .begin_with_config(isolation_level, access_mode)
                .await?,
        ))
    }

    async fn begin_with_options(
        &self,
        options: TransactionOptions,
    ) -> Result<Self::Transaction, DbErr> {
        Ok(self.wrap(self.inner.begin_with_options(options).await?))
    }

    async fn transaction<F, T, E>(&self, callback: F) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c Self::Transaction,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
            + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let transaction = self.begin().await.map_err(TransactionError::Connection)?;
        run(transaction, callback).await
    }

    async fn transaction_with_config<F, T, E>(
        &self,
        callback: F,
        isolation_level: Option<IsolationLevel>,
        access_mode: Option<AccessMode>,
    ) -> Result<T, TransactionError<E>>
    where
        F: for<'c> FnOnce(
                &'c Self::Transaction,
            ) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
            + Send,
        T: Send,
        E: std::fmt::Display + std::fmt::Debug + Send,
    {
        let transaction = self
            .begin_with_config(isolation_level, access_mode)
            .await
            .map_err(TransactionError::Connection)?;
        run(transaction, callback).await
    }
}

/// Runs `callback` in `transaction`, committing on `Ok` and rolling back on `Err`.
async fn run<X, F, T, E>(transaction: Connection<X>, callback: F) -> Result<T, TransactionError<E>>
where
    X: TransactionSession + Send + Sync,
    F: for<'c> FnOnce(&'c Connection<X>) -> Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>
        + Send,
    T: Send,
    E: std::fmt::Display + std::fmt::Debug + Send,
{
    match callback(&transaction).await {
        Ok(value) => {
            transaction
                .commit()
                .await
                .map_err(TransactionError::Connection)?;
            Ok(value)
        }
        Err(error) => {
            transaction
                .rollback()
                .await
                .map_err(TransactionError::Connection)?;
            Err(TransactionError::Transaction(error))
        }
    }
}

#[async_trait::async_trait]
impl<C: TransactionSession + Send> TransactionSession for Connection<C> {
    async fn commit(self) -> Result<(), DbErr> {
        self.inner.commit().await
    }

    async fn rollback(self) -> Result<(), DbErr> {
        self.inner.rollback().await
    }
}
