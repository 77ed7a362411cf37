//! The error type of `bemi-core`.

/// Errors returned by `bemi-core`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A context was built from a JSON value that is not an object.
    #[error("context must be a JSON object, found {found}")]
    ContextNotAnObject {
        /// The JSON type that was found instead (`array`, `string`, ...).
        found: &'static str,
    },

    /// A context payload could not be parsed as JSON.
    #[error("context payload is not valid JSON")]
    InvalidPayload(#[source] serde_json::Error),

    /// An SQL identifier is empty or contains a NUL character.
    #[error("invalid SQL identifier {0:?}: identifiers must be non-empty and contain no NUL")]
    InvalidIdentifier(String),

    /// A qualified table name could not be parsed.
    #[error("invalid table name {0:?}: expected `table` or `schema.table` (quote parts with \"\")")]
    InvalidTableName(String),

    /// An operation name read from the `changes` table is unknown.
    #[error("unknown change operation {0:?}")]
    UnknownOperation(String),

    /// A column pattern or action of a column policy is malformed.
    #[error("invalid column policy: {0}")]
    InvalidColumnPattern(String),

    /// A partitioning name is not `month`, `week`, `day` or `none`.
    #[error("invalid partitioning {0:?}: expected month, week, day or none")]
    InvalidPartitioning(String),

    /// The `changes` table's name leaves no room for the names of its stored table's
    /// partitions within PostgreSQL's 63 bytes.
    #[error("the changes table's name {name:?} is too long: at most {max} bytes")]
    ChangesNameTooLong {
        /// The name.
        name: String,
        /// The longest name allowed, in bytes.
        max: usize,
    },

    /// A page cursor's text is not one that [`crate::ChangeCursor`] wrote.
    #[error("invalid change cursor {0:?}")]
    InvalidCursor(String),

    /// The database does not meet a requirement of bemi.
    #[error("{0}")]
    Requirement(#[from] crate::setup::RequirementError),

    /// A query or statement failed in the database (reported by a [`crate::SqlRunner`]).
    #[error("{}", database_message(.sqlstate.as_deref(), .message))]
    Database {
        /// The SQLSTATE code, when the server sent one (`23503` is a foreign-key violation).
        sqlstate: Option<String>,
        /// The server's or driver's message.
        message: String,
    },

    /// A row returned by one of bemi's queries could not be read.
    #[error("could not read {what} returned by the database")]
    InvalidRow {
        /// What was being read (`a change`, `a key description`, ...).
        what: &'static str,
        /// Why.
        #[source]
        source: serde_json::Error,
    },

    /// A stored row image does not fit a model's field (the column changed type since, or the
    /// model does not match the table).
    #[error("column {column:?} of {table} does not fit the model's field")]
    ModelField {
        /// The table.
        table: String,
        /// The column.
        column: String,
        /// Why.
        #[source]
        source: serde_json::Error,
    },

    /// Reverting needs a primary key to find rows, and the table has none (or no longer
    /// exists).
    #[error("table {0} has no primary key (or no longer exists): its changes cannot be reverted")]
    NoPrimaryKey(String),

    /// A revert was refused because some changes conflict with the rows' current state; the
    /// plan says which and why. Apply with `force` to revert anyway.
    #[error("revert refused: {} of {} step(s) conflict with the current rows (see the plan; force applies anyway)", .0.conflicts().count(), .0.steps().len())]
    RevertConflicts(Box<crate::revert::RevertPlan>),

    /// A compensating statement of a revert could not be run, even after retrying it once
    /// the other statements had run (e.g. a foreign key that no order satisfies).
    #[error("reverting change {change_id} failed: {source}")]
    RevertStep {
        /// The change being reverted.
        change_id: uuid::Uuid,
        /// The database's error.
        #[source]
        source: Box<Error>,
    },

    /// A revert whose selection is refused (e.g. an empty context, which matches every change).
    #[error("invalid revert: {0}")]
    InvalidRevert(String),

    /// A synchronous connection was driven by an executor that expected it to wait: a bug in
    /// the integration, reported instead of blocking.
    #[error("internal error: a synchronous query did not complete immediately")]
    NotReady,
}

fn database_message(sqlstate: Option<&str>, message: &str) -> String {
    match sqlstate {
        Some(code) => format!("database error {code}: {message}"),
        None => format!("database error: {message}"),
    }
}

impl Error {
    /// A [`Error::Database`] from an SQLSTATE code and a message (for [`crate::SqlRunner`]
    /// implementations).
    pub fn database(sqlstate: Option<String>, message: impl Into<String>) -> Self {
        Error::Database {
            sqlstate,
            message: message.into(),
        }
    }

    /// The SQLSTATE code of a database error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Database { sqlstate, .. } => sqlstate.as_deref(),
            Error::RevertStep { source, .. } => source.sqlstate(),
            _ => None,
        }
    }
}

/// `Result` with [`enum@Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
