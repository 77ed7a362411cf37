//! `bemi-worker console`: a web UI over the trail for the people it is for (support, security,
//! auditors): search changes, read a change's diff, follow a record's timeline and see it as of
//! a time, see everything one request or transaction changed, and the trail's health.
//!
//! Server-rendered HTML (maud escapes every value), one embedded stylesheet, no script: a strict
//! Content-Security-Policy (`default-src 'none'`) keeps anything a user typed into an audited
//! row inert. It reads through bemi-core's queries, so a read-only role is enough. Loopback by
//! default; any other address needs a bearer token or a trusted user header set by an SSO proxy.

mod as_of;
mod change;
mod export;
mod group;
mod health;
mod json_diff;
mod layout;
mod revert;
mod search;
mod text;
mod timeline;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::Mutex;

use crate::{ConnectionOptions, Error, Result};

/// What the console serves and from where.
#[derive(Debug, Clone)]
pub struct ConsoleConfig {
    /// The database holding the `changes` table.
    pub destination: ConnectionOptions,
    /// The `changes` table (default `bemi.changes`).
    pub changes_table: bemi_core::QualifiedName,
    /// The bearer token every request must carry (`Authorization: Bearer ...`); required to
    /// listen on an address other than loopback.
    pub token: Option<String>,
    /// The header an authenticating proxy (SSO) sets to the signed-in user, e.g.
    /// `X-Forwarded-User`: every request must carry it, non-empty. Only safe when the console
    /// is reachable through that proxy alone (which must also strip the header from clients).
    pub user_header: Option<String>,
    /// The source database, for the health page (the slot lives there); `None`: no health.
    pub source: Option<ConnectionOptions>,
    /// The replication slot, for the health page.
    pub slot: String,
    /// Whether a revert may be applied (after its plan, confirmed); without it the console
    /// shows plans only. Both need `source`, with a role that may write the tracked tables
    /// (a plan runs the compensating statements and rolls them back).
    pub allow_revert: bool,
}

/// The state handlers share: the configuration and one connection, opened again when closed.
pub(crate) struct Console {
    config: ConsoleConfig,
    /// The trusted user header, parsed.
    user_header: Option<header::HeaderName>,
    client: Mutex<Option<Arc<tokio_postgres::Client>>>,
}

impl Console {
    /// A connection to the destination (the shared one, or a new one if it was closed).
    pub(crate) async fn client(&self) -> Result<Arc<tokio_postgres::Client>> {
        let mut client = self.client.lock().await;
        if let Some(open) = client.as_ref().filter(|open| !open.is_closed()) {
            return Ok(Arc::clone(open));
        }
        let connected = Arc::new(
            self.config
                .destination
                .connect("bemi-worker console")
                .await?,
        );
        *client = Some(Arc::clone(&connected));
        Ok(connected)
    }

    /// Runs `read` on the shared connection; any failure as text, for the log.
    pub(crate) async fn read<T, F, Fut>(&self, read: F) -> std::result::Result<T, String>
    where
        F: FnOnce(Arc<tokio_postgres::Client>) -> Fut,
        Fut: std::future::Future<Output = bemi_core::Result<T>>,
    {
        let client = self
            .client()
            .await
            .map_err(|error| crate::error_chain(&error))?;
        read(client).await.map_err(|error| error.to_string())
    }

    /// The changes `query` finds.
    pub(crate) async fn fetch(
        &self,
        query: &bemi_core::ChangeQuery,
    ) -> std::result::Result<Vec<bemi_core::Change>, String> {
        self.read(|client| async move {
            query
                .fetch(&mut bemi_core::TokioPostgresRunner(&*client))
                .await
        })
        .await
    }

    /// The trail read.
    pub(crate) fn audit_log(&self) -> bemi_core::AuditLog {
        bemi_core::AuditLog::new(self.config.changes_table.clone())
    }

    /// Who is using the console, as far as it knows: the trusted header's user, or how the
    /// request was let in.
    pub(crate) fn user(&self, headers: &header::HeaderMap) -> String {
        let signed_in = self
            .user_header
            .as_ref()
            .and_then(|name| headers.get(name))
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .filter(|user| !user.is_empty());
        match signed_in {
            Some(user) => user.to_owned(),
            None if self
                .config
                .token
                .as_deref()
                .is_some_and(|token| !token.is_empty()) =>
            {
                "holder of the console token".to_owned()
            }
            None => "a local user (loopback, no sign-in)".to_owned(),
        }
    }
}

/// The console's router (for tests and embedding).
fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(search::page))
        .route("/changes/{id}", get(change::page))
        .route("/record", get(timeline::page))
        .route("/as-of", get(as_of::page))
        .route("/group", get(group::page))
        .route("/health", get(health::page))
        .route("/revert", get(revert::plan).post(revert::apply))
        .route("/export.csv", get(export::csv))
        .route("/export.ndjson", get(export::ndjson))
        .route("/assets/console.css", get(stylesheet))
        .layer(middleware::from_fn_with_state(Arc::clone(&console), guard))
        .with_state(console)
}

/// Serves the console on `listener` until `shutdown` completes.
///
/// # Errors
///
/// [`Error::Config`] when the address is not loopback and neither a token nor a trusted user
/// header is set, or the header's name is not one; [`Error::Io`] when
/// serving fails.
pub async fn serve(
    listener: tokio::net::TcpListener,
    config: ConsoleConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let address: SocketAddr = listener.local_addr().map_err(|source| Error::Io {
        action: "read the console's address".into(),
        source,
    })?;
    let user_header = match config
        .user_header
        .as_deref()
        .filter(|name| !name.is_empty())
    {
        Some(name) => Some(
            header::HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| Error::Config(format!("{name:?} is not an HTTP header name")))?,
        ),
        None => None,
    };
    if !address.ip().is_loopback()
        && config.token.as_deref().is_none_or(str::is_empty)
        && user_header.is_none()
    {
        return Err(Error::Config(format!(
            "the console listens on {address}, which is not loopback: set BEMI_CONSOLE_TOKEN \
             (requests then need `Authorization: Bearer <token>`), or \
             --trusted-user-header behind an authenticating proxy, or listen on 127.0.0.1"
        )));
    }
    let console = Arc::new(Console {
        config,
        user_header,
        client: Mutex::new(None),
    });
    axum::serve(listener, router(console))
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(|source| Error::Io {
            action: "serve the console".into(),
            source,
        })
}

/// Every response: the token checked when one is set, and headers that keep pages inert
/// (no script, no framing, no sniffing, nothing cached, no referrer).
async fn guard(State(console): State<Arc<Console>>, request: Request, next: Next) -> Response {
    if let Some(token) = console
        .config
        .token
        .as_deref()
        .filter(|token| !token.is_empty())
    {
        let given = request
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("Bearer "))
            .unwrap_or_default();
        if !text::constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Bearer")],
                "a bearer token is required\n",
            )
                .into_response();
        }
    }
    if let Some(name) = &console.user_header {
        let user = request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::trim)
            .unwrap_or_default();
        if user.is_empty() {
            return (
                StatusCode::UNAUTHORIZED,
                "sign in through the proxy in front of the console\n",
            )
                .into_response();
        }
    }
    let mut response = next.run(request).await;
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             base-uri 'none'; frame-ancestors 'none'",
        ),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

async fn stylesheet() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("console.css"),
    )
}
