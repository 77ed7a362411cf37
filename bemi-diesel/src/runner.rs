//! bemi-core's [`SqlRunner`] over Diesel connections: how history, time travel and revert run
//! their SQL.

use bemi_core::{SqlParam, SqlRunner};
use diesel::sql_types::{Nullable, Text};
use diesel::{QueryableByName, RunQueryDsl};

/// One row of a bemi query: its single text column.
#[derive(QueryableByName)]
pub(crate) struct TextRow {
    #[diesel(sql_type = Nullable<Text>)]
    pub(crate) bemi_row: Option<String>,
}

/// A Diesel error as bemi-core's, with the SQLSTATE of the constraint violations Diesel
/// classifies (bemi's revert retries foreign-key and unique violations in another order).
pub(crate) fn database_error(error: diesel::result::Error) -> bemi_core::Error {
    use diesel::result::{DatabaseErrorKind, Error};
    match &error {
        Error::DatabaseError(kind, info) => {
            let code = match kind {
                DatabaseErrorKind::ForeignKeyViolation => Some("23503"),
                DatabaseErrorKind::UniqueViolation => Some("23505"),
                DatabaseErrorKind::NotNullViolation => Some("23502"),
                DatabaseErrorKind::CheckViolation => Some("23514"),
                DatabaseErrorKind::SerializationFailure => Some("40001"),
                DatabaseErrorKind::ReadOnlyTransaction => Some("25006"),
                _ => None,
            };
            let detail = info
                .details()
                .map(|detail| format!(" ({detail})"))
                .unwrap_or_default();
            bemi_core::Error::database(
                code.map(str::to_owned),
                format!("{}{detail}", info.message()),
            )
        }
        _ => bemi_core::Error::database(None, error.to_string()),
    }
}

/// Runs a bemi query on a sync connection.
pub(crate) fn query_rows(
    conn: &mut diesel::PgConnection,
    sql: &str,
    params: &[SqlParam],
) -> bemi_core::Result<Vec<Option<String>>> {
    let mut query = diesel::sql_query(sql).into_boxed();
    for param in params {
        query = query.bind::<Nullable<Text>, _>(param.clone());
    }
    query
        .load::<TextRow>(conn)
        .map(|rows| rows.into_iter().map(|row| row.bemi_row).collect())
        .map_err(database_error)
}

/// Runs a bemi statement on a sync connection.
pub(crate) fn execute(
    conn: &mut diesel::PgConnection,
    sql: &str,
    params: &[SqlParam],
) -> bemi_core::Result<u64> {
    let mut query = diesel::sql_query(sql).into_boxed();
    for param in params {
        query = query.bind::<Nullable<Text>, _>(param.clone());
    }
    query
        .execute(conn)
        .map(|rows| rows as u64)
        .map_err(database_error)
}

/// [`SqlRunner`] over Diesel's sync `PgConnection` (its futures are complete when created).
pub struct DieselRunner<'a>(pub &'a mut diesel::PgConnection);

impl SqlRunner for DieselRunner<'_> {
    fn query_rows(
        &mut self,
        sql: &str,
        params: &[SqlParam],
    ) -> impl Future<Output = bemi_core::Result<Vec<Option<String>>>> + Send {
        std::future::ready(query_rows(self.0, sql, params))
    }

    fn execute(
        &mut self,
        sql: &str,
        params: &[SqlParam],
    ) -> impl Future<Output = bemi_core::Result<u64>> + Send {
        std::future::ready(execute(self.0, sql, params))
    }
}

impl std::fmt::Debug for DieselRunner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DieselRunner").finish_non_exhaustive()
    }
}
