//! The opt-in Docker backend: the shared cluster as a `postgres` container (feature
//! `testcontainers`, selected with `BEMI_TEST_BACKEND=testcontainers`).

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::SyncRunner;
use testcontainers::{Container, GenericImage, ImageExt};

/// Selects the image tag (default `16`).
pub const IMAGE_TAG_VARIABLE: &str = "BEMI_TEST_POSTGRES_TAG";

/// A running `postgres` container with `wal_level=logical`; removed when dropped.
pub(crate) struct PostgresContainer {
    // Kept for its `Drop`, which removes the container.
    _container: Container<GenericImage>,
    pub(crate) host: String,
    pub(crate) port: u16,
}

impl std::fmt::Debug for PostgresContainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresContainer")
            .field("host", &self.host)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

/// Starts the container.
///
/// # Panics
///
/// When Docker is not reachable or the image cannot be pulled.
pub(crate) fn start() -> PostgresContainer {
    let tag = std::env::var(IMAGE_TAG_VARIABLE).unwrap_or_else(|_| "16".to_owned());
    // The image's entrypoint runs a temporary server for initialisation first: wait for the
    // message of both it (stdout) and the real server (stderr).
    let container = GenericImage::new("postgres", tag.as_str())
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stdout(
            "database system is ready to accept connections",
        ))
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_env_var("POSTGRES_PASSWORD", "postgres")
        .with_cmd([
            "postgres",
            "-c",
            "wal_level=logical",
            "-c",
            "max_replication_slots=100",
            "-c",
            "max_wal_senders=100",
            "-c",
            "max_connections=300",
            "-c",
            "fsync=off",
        ])
        .start()
        .unwrap_or_else(|error| panic!("start a postgres container (is Docker running?): {error}"));
    let host = container
        .get_host()
        .map(|host| host.to_string())
        .unwrap_or_else(|error| panic!("read the container's host: {error}"));
    let port = container
        .get_host_port_ipv4(5432)
        .unwrap_or_else(|error| panic!("read the container's port: {error}"));
    PostgresContainer {
        _container: container,
        host,
        port,
    }
}
