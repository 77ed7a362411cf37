//! NATS JetStream between the two stages, for scaling storage out: `capture` publishes each
//! change (message id = the change's deterministic id, so JetStream's duplicate window absorbs
//! replays) and confirms the slot only after JetStream acknowledged every change of the
//! confirmed transactions; `ingest` processes share one durable pull consumer and store batches
//! idempotently, acknowledging a message only after its batch committed.

pub(crate) mod ingest;
pub(crate) mod sealer;
pub(crate) mod status;
pub(crate) mod wire;

use std::path::PathBuf;
use std::time::Duration;

use async_nats::jetstream::consumer::{AckPolicy, Consumer, pull};
use async_nats::jetstream::message::PublishMessage;
use async_nats::jetstream::stream::{RetentionPolicy, StorageType};
use async_nats::jetstream::{self, Context};

use crate::change_row::ChangeRow;
use crate::{Error, Result};

/// What the stream keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Retention {
    /// A change is removed once an ingest process acknowledged it (the default).
    #[default]
    WorkQueue,
    /// Changes stay until the stream's limits (age, size) remove them, so they can be read again.
    Limits,
    /// A change is removed once every consumer acknowledged it.
    Interest,
}

impl std::str::FromStr for Retention {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        match text {
            "workqueue" | "work-queue" => Ok(Self::WorkQueue),
            "limits" => Ok(Self::Limits),
            "interest" => Ok(Self::Interest),
            other => Err(Error::Config(format!(
                "unknown retention {other:?}: use workqueue, limits or interest"
            ))),
        }
    }
}

/// Where and how changes travel through NATS JetStream.
#[derive(Clone)]
#[non_exhaustive]
pub struct NatsOptions {
    /// The server(s), e.g. `nats://127.0.0.1:4222` (comma-separated for a cluster).
    pub url: String,
    /// The stream's name (created if missing).
    pub stream: String,
    /// The subject changes are published to.
    pub subject: String,
    /// What the stream keeps.
    pub retention: Retention,
    /// Copies of the stream in a NATS cluster.
    pub replicas: usize,
    /// How long JetStream remembers message ids to drop re-published changes.
    pub duplicate_window: Duration,
    /// The durable consumer shared by ingest processes.
    pub consumer: String,
    /// How long a delivered change may stay unacknowledged before it is redelivered (to any
    /// ingest process).
    pub ack_wait: Duration,
    /// Most changes delivered and not yet acknowledged, over all ingest processes.
    pub max_ack_pending: i64,
    /// A `.creds` file (JWT and NKey).
    pub credentials_file: Option<PathBuf>,
    /// User name and password.
    pub user_and_password: Option<(String, String)>,
    /// An authentication token.
    pub token: Option<String>,
    /// CA certificates (PEM) that verify the server.
    pub tls_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS.
    pub tls_client: Option<(PathBuf, PathBuf)>,
    /// Refuse a connection without TLS.
    pub require_tls: bool,
}

impl std::fmt::Debug for NatsOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsOptions")
            .field("url", &crate::mask_password(&self.url))
            .field("stream", &self.stream)
            .field("subject", &self.subject)
            .field("retention", &self.retention)
            .field("replicas", &self.replicas)
            .field("consumer", &self.consumer)
            .field("credentials_file", &self.credentials_file)
            .field(
                "user",
                &self.user_and_password.as_ref().map(|(user, _)| user),
            )
            .field("token", &self.token.as_ref().map(|_| "****"))
            .field("tls_ca", &self.tls_ca)
            .field("require_tls", &self.require_tls)
            .finish_non_exhaustive()
    }
}

impl NatsOptions {
    /// Defaults for the server at `url`: stream `BEMI_CHANGES` on subject `bemi.changes`,
    /// work-queue retention, one replica, a 2-minute duplicate window, consumer `bemi-ingest`,
    /// 30 s ack wait, 20,000 changes pending.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            stream: "BEMI_CHANGES".to_owned(),
            subject: "bemi.changes".to_owned(),
            retention: Retention::default(),
            replicas: 1,
            duplicate_window: Duration::from_secs(120),
            consumer: "bemi-ingest".to_owned(),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 20_000,
            credentials_file: None,
            user_and_password: None,
            token: None,
            tls_ca: None,
            tls_client: None,
            require_tls: false,
        }
    }

    /// The URL with any password masked, for messages.
    pub fn display_url(&self) -> String {
        crate::mask_password(&self.url)
    }
}

/// Wraps a NATS error with what the worker was doing.
pub(crate) fn nats_error<E>(action: impl Into<String>) -> impl FnOnce(E) -> Error
where
    E: std::error::Error + Send + Sync + 'static,
{
    let action = action.into();
    move |source| Error::Nats {
        action,
        source: Box::new(source),
    }
}

/// Connects to NATS with the options' credentials and TLS.
pub(crate) async fn connect(options: &NatsOptions) -> Result<async_nats::Client> {
    // async-nats builds its TLS configuration from the process-wide rustls provider, which
    // rustls cannot pick by itself when the dependency graph enables more than one: use ring,
    // as the PostgreSQL connections do. (An application that installed one keeps it.)
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut connect = async_nats::ConnectOptions::new()
        .name("bemi-worker")
        .connection_timeout(Duration::from_secs(5));
    if let Some(path) = &options.credentials_file {
        connect = connect.credentials_file(path).await.map_err(|error| {
            Error::Config(format!(
                "cannot read the NATS credentials file {}: {error}",
                path.display()
            ))
        })?;
    }
    if let Some((user, password)) = &options.user_and_password {
        connect = connect.user_and_password(user.clone(), password.clone());
    }
    if let Some(token) = &options.token {
        connect = connect.token(token.clone());
    }
    if let Some(ca) = &options.tls_ca {
        connect = connect.add_root_certificates(ca.clone());
    }
    if let Some((certificate, key)) = &options.tls_client {
        connect = connect.add_client_certificate(certificate.clone(), key.clone());
    }
    if options.require_tls {
        connect = connect.require_tls(true);
    }
    connect
        .connect(options.url.as_str())
        .await
        .map_err(|source| {
            let permanent = matches!(
                source.kind(),
                async_nats::ConnectErrorKind::Authentication
                    | async_nats::ConnectErrorKind::AuthorizationViolation
                    | async_nats::ConnectErrorKind::ServerParse
                    | async_nats::ConnectErrorKind::Tls
            ) || is_tls_failure(&source);
            let action = format!("connect to NATS at {}", options.display_url());
            if permanent {
                Error::NatsFatal {
                    action,
                    source: Some(Box::new(source)),
                }
            } else {
                nats_error(action)(source)
            }
        })
}

/// Whether a rustls error (an untrusted or mismatched certificate) is among the causes: the
/// handshake fails the same way on every attempt.
fn is_tls_failure(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(current) = cause {
        let io_inner = current
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref);
        if current.downcast_ref::<rustls::Error>().is_some()
            || io_inner.is_some_and(|inner| inner.downcast_ref::<rustls::Error>().is_some())
        {
            return true;
        }
        cause = current.source();
    }
    false
}

/// The stream, created with the options' settings if missing.
pub(crate) async fn stream(
    jetstream: &Context,
    options: &NatsOptions,
) -> Result<jetstream::stream::Stream> {
    jetstream
        .get_or_create_stream(jetstream::stream::Config {
            name: options.stream.clone(),
            subjects: vec![options.subject.clone()],
            retention: match options.retention {
                Retention::WorkQueue => RetentionPolicy::WorkQueue,
                Retention::Limits => RetentionPolicy::Limits,
                Retention::Interest => RetentionPolicy::Interest,
            },
            storage: StorageType::File,
            num_replicas: options.replicas.max(1),
            duplicate_window: options.duplicate_window,
            description: Some("bemi row changes with their context".to_owned()),
            ..Default::default()
        })
        .await
        .map_err(nats_error(format!(
            "create or open the JetStream stream {}",
            options.stream
        )))
}

/// The durable pull consumer ingest processes share, created if missing.
pub(crate) async fn consumer(
    stream: &jetstream::stream::Stream,
    options: &NatsOptions,
) -> Result<Consumer<pull::Config>> {
    stream
        .get_or_create_consumer(
            &options.consumer,
            pull::Config {
                durable_name: Some(options.consumer.clone()),
                description: Some("bemi-worker ingest".to_owned()),
                ack_policy: AckPolicy::Explicit,
                ack_wait: options.ack_wait,
                max_ack_pending: options.max_ack_pending.max(1),
                filter_subject: options.subject.clone(),
                ..Default::default()
            },
        )
        .await
        .map_err(nats_error(format!(
            "create or open the JetStream consumer {}",
            options.consumer
        )))
}

/// Most publications awaiting JetStream's acknowledgement at once: below async-nats's limit of
/// acknowledgements in flight (5,000), which would otherwise block a larger batch for good.
const IN_FLIGHT: usize = 4_096;

/// The error for a failed publication: a change too large for a NATS message stops the
/// process with the change named (retrying cannot help; the slot keeps the change).
fn publish_error(error: async_nats::jetstream::context::PublishError, row: &ChangeRow) -> Error {
    if error.kind() == async_nats::jetstream::context::PublishErrorKind::MaxPayloadExceeded {
        Error::NatsFatal {
            action: format!(
                "the change {} ({}.{}) does not fit in one NATS message: raise \
                 max_payload in the NATS server's configuration (up to 64 MB), or store this \
                 source with `run`",
                row.id, row.schema, row.table,
            ),
            source: Some(Box::new(error)),
        }
    } else {
        nats_error("publish a change to JetStream")(error)
    }
}

/// Waits for JetStream to store one publication; whether it was a duplicate.
async fn stored(ack: async_nats::jetstream::context::PublishAckFuture) -> Result<bool> {
    let ack = ack
        .await
        .map_err(nats_error("wait for JetStream to store a change"))?;
    Ok(ack.duplicate)
}

/// Publishes changes to the stream.
pub(crate) struct Publisher {
    jetstream: Context,
    subject: String,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Connects and makes sure the stream exists.
    pub(crate) async fn connect(options: &NatsOptions) -> Result<Self> {
        let client = connect(options).await?;
        let jetstream = jetstream::new(client);
        stream(&jetstream, options).await?;
        Ok(Self {
            jetstream,
            subject: options.subject.clone(),
        })
    }

    /// Publishes `rows` and returns once JetStream stored every one (pipelined: up to
    /// [`IN_FLIGHT`] are sent before their acknowledgements are awaited). A change already in
    /// the duplicate window is acknowledged as a duplicate and not stored twice.
    pub(crate) async fn publish(&self, rows: &[ChangeRow]) -> Result<()> {
        let mut acks = std::collections::VecDeque::with_capacity(rows.len().min(IN_FLIGHT));
        let mut duplicates = 0_usize;
        for row in rows {
            let payload = crate::sink::jetstream::wire::encode(row);
            let message = PublishMessage::build()
                .payload(payload.into())
                .message_id(row.id.hyphenated().to_string());
            let ack = self
                .jetstream
                .send_publish(self.subject.clone(), message)
                .await
                .map_err(|error| publish_error(error, row))?;
            acks.push_back(ack);
            if acks.len() >= IN_FLIGHT
                && let Some(oldest) = acks.pop_front()
            {
                duplicates += usize::from(stored(oldest).await?);
            }
        }
        for ack in acks {
            duplicates += usize::from(stored(ack).await?);
        }
        if duplicates > 0 {
            tracing::info!(
                duplicates,
                "JetStream already had some of these changes (a replay): not stored twice"
            );
        }
        Ok(())
    }
}
