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

    /// The database does not meet a requirement of bemi.
    #[error("{0}")]
    Requirement(#[from] crate::setup::RequirementError),
}

/// `Result` with [`enum@Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
