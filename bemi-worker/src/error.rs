//! The error type of the worker, and what each error means for the pipeline (`ErrorKind`).

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

    /// The server invalidated the replication slot: WAL it needed was removed
    /// (`max_slot_wal_keep_size`), so changes committed since are not in the trail.
    #[error(
        "the server invalidated the replication slot {slot:?} (wal_status lost: WAL it needed \
         passed max_slot_wal_keep_size and was removed): changes committed after {} are not in \
         the trail and cannot be read from the WAL any more. To go on capturing, run the worker \
         once with --on-slot-lost recreate (it recreates the slot and records the gap in \
         bemi.trail_gaps), then `bemi-worker snapshot` to record the rows as they are now",
        lost_after.as_deref().unwrap_or("the slot's last confirmed position")
    )]
    SlotLost {
        /// The slot's name.
        slot: String,
        /// The last position the worker confirmed before the loss, if known.
        lost_after: Option<String>,
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

    /// A batch written in parallel with an earlier one was rolled back because the earlier one
    /// was not stored: committing it would have stored changes past a gap. The session is
    /// started again and both are written again.
    #[error("an earlier batch was not stored: this batch was rolled back")]
    EarlierBatchFailed,

    /// The replication stream broke a rule of the protocol (a change outside a transaction, a
    /// change before its relation's description). Reconnecting re-sends the transaction.
    #[error("replication protocol: {0}")]
    Protocol(String),

    /// A task of the worker failed (a panic is a bug: please report it).
    #[error("internal: {action}")]
    Internal {
        /// What the task was doing.
        action: String,
        /// The task's failure.
        #[source]
        source: tokio::task::JoinError,
    },

    /// Reading or writing a file failed (an archive, its manifest).
    #[error("{action}")]
    Io {
        /// What the worker was doing, with the file's path.
        action: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },

    /// An archive does not match its manifest (checksum, row count) or cannot be read.
    #[error("archive: {0}")]
    Archive(String),

    /// NATS JetStream refused something that retrying cannot fix (credentials, TLS, a change
    /// larger than the server accepts).
    #[error("{action}")]
    NatsFatal {
        /// What the worker was doing, and what to do about it.
        action: String,
        /// The client's error, when there is one.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
}

/// What an error means for the pipeline: park the item, retry, or stop.
///
/// | kind | caused by | the worker |
/// | --- | --- | --- |
/// | [`ErrorKind::BadData`] | the content of one message or one change (a value the destination refuses, a message the decoder cannot read) | parks it in `bemi.rejected` (or stores it with a marker), logs it once, goes on |
/// | [`ErrorKind::Transient`] | infrastructure that may recover: lost connections, restarts, timeouts, lock waits, a protocol hiccup | reconnects with backoff |
/// | [`ErrorKind::Fatal`] | what only an operator can fix: configuration, credentials, privileges, missing objects | stops, saying what to do |
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Caused by the content of one message or change: park it (or store it with a marker) and
    /// go on. Never stops capture.
    BadData,
    /// Infrastructure that may recover (connections, restarts, timeouts, lock waits): retry
    /// after a backoff.
    Transient,
    /// Only an operator can fix it (configuration, credentials, privileges, missing objects):
    /// stop with what to do.
    Fatal,
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

    /// What this error means for the pipeline: park the item, retry, or stop.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Postgres { source, .. } => match source.code() {
                Some(code) => sqlstate_kind(code.code()),
                // No SQLSTATE: the connection broke, timed out or was closed.
                None => ErrorKind::Transient,
            },
            Error::Replication(error) => match error {
                pgwire_replication::PgWireError::Io(_)
                | pgwire_replication::PgWireError::Task(_) => ErrorKind::Transient,
                pgwire_replication::PgWireError::Server(message) => {
                    sqlstate_in(message).map_or(ErrorKind::Transient, sqlstate_kind)
                }
                _ => ErrorKind::Fatal,
            },
            // Inside a transaction, an unreadable message is parked and the stream goes on; what
            // reaches here broke the protocol outside one, and reconnecting re-reads it.
            Error::Decode(_) | Error::Protocol(_) => ErrorKind::Transient,
            Error::StoreGone
            | Error::EarlierBatchFailed
            | Error::Nats { .. }
            | Error::Internal { .. } => ErrorKind::Transient,
            _ => ErrorKind::Fatal,
        }
    }

    /// Whether retrying (after reconnecting) may succeed: lost connections, server restarts,
    /// timeouts and lock waits, a slot still held by our own previous session
    /// ([`ErrorKind::Transient`]).
    pub fn is_retryable(&self) -> bool {
        self.kind() == ErrorKind::Transient
    }

    /// Whether the error was caused by the data of one change, not by the infrastructure
    /// ([`ErrorKind::BadData`]).
    pub fn is_bad_data(&self) -> bool {
        self.kind() == ErrorKind::BadData
    }
}

/// What a SQLSTATE means for the pipeline.
pub(crate) fn sqlstate_kind(code: &str) -> ErrorKind {
    if is_bad_data_sqlstate(code) {
        ErrorKind::BadData
    } else if code.starts_with("08") // connection exception
        || code.starts_with("57P") // admin/crash shutdown, cannot connect now
        || code == "57014" // query canceled: a statement_timeout, or a cancel request
        || code.starts_with("53") // insufficient resources (too many connections, disk full)
        || code.starts_with("40") // serialization failure, deadlock
        || code == "55P03" // lock not available: a lock_timeout
        || code == "55006" // object in use: the slot is still held by our previous session
        || code == "55000" // object not in prerequisite state (e.g. slot not yet released)
        || code == "25P03" // idle-in-transaction timeout
        || code == "XX000"
    // internal error, typically transient
    {
        ErrorKind::Transient
    } else {
        ErrorKind::Fatal
    }
}

/// SQLSTATEs tied to the value being stored rather than to the database: data exceptions
/// (class 22: out-of-range numbers, invalid text, `\u0000` in jsonb), a value nested too deep for
/// the server's stack (54001) and a program limit reached by one value (54000: e.g. an index row
/// too large).
pub(crate) fn is_bad_data_sqlstate(code: &str) -> bool {
    code.starts_with("22") || code == "54001" || code == "54000"
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
        assert_eq!(Error::Config("x".into()).kind(), ErrorKind::Fatal);
        assert!(Error::Protocol("change outside a transaction".into()).is_retryable());
    }

    #[test]
    fn classifies_sqlstates_by_what_caused_them() {
        for code in ["22003", "22P02", "22021", "54001", "54000"] {
            assert_eq!(sqlstate_kind(code), ErrorKind::BadData, "{code}");
        }
        for code in [
            "08006", "57P01", "57014", "55P03", "53100", "40001", "25P03",
        ] {
            assert_eq!(sqlstate_kind(code), ErrorKind::Transient, "{code}");
        }
        for code in ["28P01", "42501", "42P01", "3D000"] {
            assert_eq!(sqlstate_kind(code), ErrorKind::Fatal, "{code}");
        }
    }

    #[test]
    fn finds_the_sqlstate() {
        assert_eq!(sqlstate_in("boom (SQLSTATE 08006)"), Some("08006"));
        assert_eq!(sqlstate_in("boom"), None);
        assert_eq!(sqlstate_in("SQLSTATE 0"), None);
    }
}
