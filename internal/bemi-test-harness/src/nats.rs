//! A throwaway `nats-server` with JetStream for tests: its own free port and storage directory,
//! stopped (and its storage removed) when dropped, or by a watchdog when the test process dies.

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::wait::wait_until;

/// The variable naming the `nats-server` binary to use.
pub const NATS_SERVER_VARIABLE: &str = "BEMI_NATS_SERVER";

/// A running `nats-server -js` (file storage), restartable on the same port and storage.
#[derive(Debug)]
pub struct NatsServer {
    binary: PathBuf,
    extra_args: Vec<String>,
    certificates: Option<PathBuf>,
    port: u16,
    dir: PathBuf,
    child: Mutex<Option<Child>>,
}

impl NatsServer {
    /// Starts a server on a free port.
    ///
    /// # Panics
    ///
    /// When no `nats-server` binary is found (the message says how to install it) or it does
    /// not start.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server on a free port with `extra_args` (e.g. `--user`, `--pass`).
    ///
    /// # Panics
    ///
    /// As [`NatsServer::start`].
    pub fn start_with(extra_args: &[&str]) -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let binary = find_binary();
        let dir = std::env::temp_dir().join(format!(
            "bemi-nats-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the NATS storage directory");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("find a free port");
        let server = Self {
            binary,
            extra_args: extra_args.iter().map(|arg| (*arg).to_owned()).collect(),
            certificates: None,
            port,
            dir,
            child: Mutex::new(None),
        };
        server.launch();
        server
    }

    /// Starts a server that requires TLS, with a certificate for `localhost` signed by a CA
    /// generated here ([`NatsServer::root_cert`]); connect with [`NatsServer::tls_url`].
    ///
    /// # Panics
    ///
    /// As [`NatsServer::start`].
    pub fn start_with_tls() -> Self {
        let staging = std::env::temp_dir().join(format!(
            "bemi-nats-certs-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|elapsed| elapsed.as_nanos())
                .unwrap_or_default()
        ));
        std::fs::create_dir_all(&staging).expect("create the certificates directory");
        crate::certificates::write(&staging);
        let certificate = staging.join(crate::certificates::SERVER_CERT);
        let key = staging.join(crate::certificates::SERVER_KEY);
        let certificate = certificate.to_string_lossy().into_owned();
        let key = key.to_string_lossy().into_owned();
        let mut server = Self::start_with(&["--tls", "--tlscert", &certificate, "--tlskey", &key]);
        server.certificates = Some(staging);
        server
    }

    /// The client URL, `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The URL by the name the TLS certificate holds, `nats://localhost:<port>`.
    pub fn tls_url(&self) -> String {
        format!("nats://localhost:{}", self.port)
    }

    /// The CA that signed a TLS server's certificate.
    ///
    /// # Panics
    ///
    /// When the server was not started with [`NatsServer::start_with_tls`].
    pub fn root_cert(&self) -> PathBuf {
        self.certificates_dir().join(crate::certificates::ROOT_CERT)
    }

    /// A CA that did not sign the server's certificate.
    ///
    /// # Panics
    ///
    /// When the server was not started with [`NatsServer::start_with_tls`].
    pub fn other_root_cert(&self) -> PathBuf {
        self.certificates_dir()
            .join(crate::certificates::OTHER_ROOT_CERT)
    }

    fn certificates_dir(&self) -> &Path {
        self.certificates
            .as_deref()
            .expect("the server was started with start_with_tls")
    }

    /// The server's log file.
    pub fn log(&self) -> PathBuf {
        self.dir.join("server.log")
    }

    /// Stops the server (abruptly, as a crash would).
    pub fn stop(&self) {
        if let Some(mut child) = self.child.lock().expect("the server's lock").take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops and starts the server again on the same port and storage.
    pub fn restart(&self) {
        self.stop();
        self.launch();
    }

    fn launch(&self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("open the NATS log");
        let child = Command::new(&self.binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(self.dir.join("jetstream"))
            .args(&self.extra_args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|error| panic!("cannot start {}: {error}", self.binary.display()));
        watch(child.id(), &self.dir);
        *self.child.lock().expect("the server's lock") = Some(child);
        let address = format!("127.0.0.1:{}", self.port);
        wait_until(
            "nats-server to accept connections",
            Duration::from_secs(30),
            || TcpStream::connect(&address).ok(),
        );
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
        if let Some(certificates) = &self.certificates {
            let _ = std::fs::remove_dir_all(certificates);
        }
    }
}

/// `BEMI_NATS_SERVER`, else `nats-server` on `PATH` or in the usual system directories.
fn find_binary() -> PathBuf {
    if let Some(path) = std::env::var_os(NATS_SERVER_VARIABLE) {
        return PathBuf::from(path);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/usr/local/bin"].map(PathBuf::from))
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!(
                "nats-server not found: install it (Debian: `{}`) or set {NATS_SERVER_VARIABLE}",
                crate::INSTALL_LINE
            )
        })
}

/// Kills server `pid` and removes `dir` once this test process is gone, however it ends.
fn watch(pid: u32, dir: &Path) {
    let script = format!(
        "while kill -0 {test} 2>/dev/null; do sleep 1; done; kill -9 {pid} 2>/dev/null; rm -rf '{dir}'",
        test = std::process::id(),
        dir = dir.display()
    );
    let _ = Command::new("sh")
        .args(["-c", &script])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
}
