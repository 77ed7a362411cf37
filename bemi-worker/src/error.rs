//! The error type of the worker, and which errors are worth retrying.

use crate::source::pgoutput::DecodeError;

/// Errors of the worker.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A connection URL could not be parsed.
    #[error("invalid connection URL {url}: {reason}")]
    InvalidUrl {
        /// The URL with its password masked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },

    /// A setting is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),

    /// Connecting to or querying PostgreSQL failed.
    #[error("{action}")]
    Postgres {
        /// What the worker was doing.
        action: String,
        /// The driver's error.
        #[source]
        source: tokio_postgres::Error,
    },

    /// The replication stream failed.
    #[error("replication stream")]
    Replication(#[source] pgwire_replication::PgWireError),

    /// The server sent a pgoutput message the decoder cannot read.
    #[error("undecodable replication message")]
    Decode(#[from] DecodeError),

    /// The database does not meet bemi's requirements.
    #[error(transparent)]
    Requirement(#[from] bemi_core::setup::RequirementError),

    /// Another process is consuming the replication slot.
    #[error(
        "replication slot {slot:?} is in use by another consumer (walsender pid {pid}): stop it \
         first, or give this worker its own slot with --slot"
    )]
    SlotInUse {
        /// The slot's name.
        slot: String,
        /// The pid of the walsender holding it.
        pid: i32,
    },

    /// TLS could not be set up.
    #[error("TLS: {0}")]
    Tls(String),

    /// An error of `bemi-core` (names, payloads).
    #[error(transparent)]
    Core(#[from] bemi_core::Error),

    /// NATS JetStream failed: connecting, publishing, consuming or acknowledging.
    #[error("{action}")]
    Nats {
        /// What the worker was doing.
        action: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// The store task ended unexpectedly.
    #[error("the store task ended unexpectedly")]
    StoreGone,
}

/// Formats an error with its chain of causes: `outer: cause: root cause`.
///
/// # Examples
///
/// ```
/// let error = bemi_worker::Error::Decode(bemi_worker::pgoutput::decode(&[]).unwrap_err());
/// assert_eq!(
///     bemi_worker::error_chain(&error),
///     "undecodable replication message: pgoutput message: truncated while reading a byte"
/// );
/// ```
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut cause = error.source();
    while let Some(next) = cause {
        let next_text = next.to_string();
        // Some errors repeat their cause in their own message.
        if !text.ends_with(&next_text) {
            text.push_str(": ");
            text.push_str(&next_text);
        }
        cause = next.source();
    }
    text
}

/// `Result` with the worker's [`enum@Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps a driver error with what the worker was doing.
    pub(crate) fn postgres(
        action: impl Into<String>,
    ) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let action = action.into();
        move |source| Error::Postgres { action, source }
    }

    /// Whether retrying (after reconnecting) may succeed: lost connections, server restarts,
    /// too many connections, a slot still held by our own previous session. Configuration,
    /// authentication, privilege and missing-object errors are not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Postgres { source, .. } => match source.code() {
                Some(code) => is_retryable_sqlstate(code.code()),
                // No SQLSTATE: the connection broke, timed out or was closed.
                None => true,
            },
            Error::Replication(error) => match error {
                pgwire_replication::PgWireError::Io(_)
                | pgwire_replication::PgWireError::Task(_) => true,
                pgwire_replication::PgWireError::Server(message) => {
                    sqlstate_in(message).is_none_or(is_retryable_sqlstate)
                }
                _ => false,
            },
            Error::StoreGone | Error::Nats { .. } => true,
            _ => false,
        }
    }
}

/// SQLSTATE classes and codes worth retrying.
fn is_retryable_sqlstate(code: &str) -> bool {
    code.starts_with("08") // connection exception
        || code.starts_with("57P") // admin/crash shutdown, cannot connect now
        || code.starts_with("53") // insufficient resources (too many connections, disk full)
        || code.starts_with("40") // serialization failure, deadlock
        || code == "55006" // object in use: the slot is still held by our previous session
        || code == "55000" // object not in prerequisite state (e.g. slot not yet released)
        || code == "XX000" // internal error, typically transient
}

/// The SQLSTATE in a replication error message (`... SQLSTATE 57P01 ...`).
pub(crate) fn sqlstate_in(message: &str) -> Option<&str> {
    let at = message.find("SQLSTATE ")? + "SQLSTATE ".len();
    message.get(at..at + 5)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use pgwire_replication::PgWireError;

    use super::*;

    #[test]
    fn classifies_replication_errors() {
        let io = PgWireError::Io(Arc::new(std::io::Error::other("reset")));
        assert!(Error::Replication(io).is_retryable());
        let shutdown = PgWireError::Server(
            "FATAL: terminating connection due to administrator command (SQLSTATE 57P01)".into(),
        );
        assert!(Error::Replication(shutdown).is_retryable());
        let missing = PgWireError::Server(
            "ERROR: replication slot \"x\" does not exist (SQLSTATE 42704)".into(),
        );
        assert!(!Error::Replication(missing).is_retryable());
        assert!(!Error::Replication(PgWireError::Auth("bad password".into())).is_retryable());
        assert!(!Error::Config("x".into()).is_retryable());
    }

    #[test]
    fn finds_the_sqlstate() {
        assert_eq!(sqlstate_in("boom (SQLSTATE 08006)"), Some("08006"));
        assert_eq!(sqlstate_in("boom"), None);
        assert_eq!(sqlstate_in("SQLSTATE 0"), None);
    }
}
