//! The PostgreSQL server the tests use: `BEMI_TEST_DATABASE_URL`, or a throwaway cluster.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Names the server to use instead of starting a throwaway cluster. It must run with
/// `wal_level=logical` and the user must be allowed to create databases and replication slots.
pub const DATABASE_URL_VARIABLE: &str = "BEMI_TEST_DATABASE_URL";
/// Selects the backend of the shared cluster: `testcontainers` for a Docker container (needs the
/// `testcontainers` feature); anything else, or unset, for a cluster from the system binaries.
pub const BACKEND_VARIABLE: &str = "BEMI_TEST_BACKEND";
/// Overrides where the PostgreSQL server binaries (`initdb`, `pg_ctl`, `postgres`) are found.
pub const BIN_DIR_VARIABLE: &str = "BEMI_PG_BIN_DIR";

/// The server the tests run against, shared by every test of a test binary.
#[derive(Debug)]
pub struct TestCluster {
    host: String,
    port: u16,
    user: String,
    password: Option<String>,
    admin_database: String,
    managed: Option<ManagedCluster>,
    #[cfg(feature = "testcontainers")]
    _container: Option<crate::container::PostgresContainer>,
}

/// A cluster this process started; a watchdog stops and removes it when the process ends.
#[derive(Debug)]
struct ManagedCluster {
    dir: PathBuf,
    bin_dir: PathBuf,
    run_as_postgres: bool,
    extra_settings: Vec<String>,
    tls: bool,
}

impl TestCluster {
    /// The cluster of this test binary, started on first use.
    ///
    /// # Panics
    ///
    /// When no server can be found or started; the message says what to install or set.
    pub fn shared() -> Arc<TestCluster> {
        static CLUSTER: OnceLock<Arc<TestCluster>> = OnceLock::new();
        Arc::clone(CLUSTER.get_or_init(|| {
            Arc::new(match std::env::var(DATABASE_URL_VARIABLE) {
                Ok(url) if !url.is_empty() => Self::external(&url),
                _ if std::env::var(BACKEND_VARIABLE).as_deref() == Ok("testcontainers") => {
                    Self::container()
                }
                _ => Self::start(&[], false),
            })
        }))
    }

    /// A throwaway cluster of its own, always started from the server binaries (also when
    /// `BEMI_TEST_DATABASE_URL` is set), for tests that stop or restart the server or need other
    /// settings (`extra_settings` are `name=value` server settings, applied after the defaults).
    /// It is stopped and removed when dropped.
    pub fn dedicated(extra_settings: &[&str]) -> Arc<TestCluster> {
        Arc::new(Self::start(extra_settings, false))
    }

    /// Like [`TestCluster::dedicated`], but says what to install instead of panicking when the
    /// PostgreSQL server binaries are missing.
    ///
    /// # Errors
    ///
    /// A message naming what to install when `initdb`/`pg_ctl` cannot be found.
    pub fn try_dedicated(extra_settings: &[&str]) -> Result<Arc<TestCluster>, String> {
        find_bin_dir()?;
        Ok(Self::dedicated(extra_settings))
    }

    /// A [dedicated](TestCluster::dedicated) cluster that also accepts TLS connections, with a
    /// certificate for `localhost` only (connecting to `127.0.0.1` does not match its name)
    /// signed by [`TestCluster::root_cert`]; [`TestCluster::other_root_cert`] did not sign it.
    pub fn dedicated_with_tls() -> Arc<TestCluster> {
        Arc::new(Self::start(&[], true))
    }

    #[cfg(feature = "testcontainers")]
    fn container() -> TestCluster {
        let container = crate::container::start();
        let url = format!(
            "postgresql://postgres:postgres@{}:{}/postgres",
            container.host, container.port
        );
        let mut cluster = Self::external(&url);
        cluster._container = Some(container);
        cluster
    }

    #[cfg(not(feature = "testcontainers"))]
    fn container() -> TestCluster {
        panic!(
            "{BACKEND_VARIABLE}=testcontainers needs the harness built with its `testcontainers` feature"
        );
    }

    fn external(url: &str) -> TestCluster {
        let config = tokio_postgres::Config::from_str(url)
            .unwrap_or_else(|error| panic!("{DATABASE_URL_VARIABLE} is not a valid URL: {error}"));
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_owned(),
        };
        TestCluster {
            host,
            port: config.get_ports().first().copied().unwrap_or(5432),
            user: config.get_user().unwrap_or("postgres").to_owned(),
            password: config
                .get_password()
                .map(|password| String::from_utf8_lossy(password).into_owned()),
            admin_database: config.get_dbname().unwrap_or("postgres").to_owned(),
            managed: None,
            #[cfg(feature = "testcontainers")]
            _container: None,
        }
    }

    fn start(extra_settings: &[&str], tls: bool) -> TestCluster {
        let bin_dir = find_bin_dir().unwrap_or_else(|message| panic!("{message}"));
        let run_as_postgres = running_as_root();
        let base = std::env::temp_dir().join("bemi-test-clusters");
        std::fs::create_dir_all(&base).expect("create the test cluster directory");
        set_mode(&base, 0o1777);
        remove_stale_clusters(&base, &bin_dir, run_as_postgres);

        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.subsec_nanos());
        let count = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = base.join(format!("{}-{nanos}-{count}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create the test cluster directory");
        let mut extra_settings: Vec<String> = extra_settings
            .iter()
            .map(|setting| (*setting).to_owned())
            .collect();
        if tls {
            crate::certificates::write(&dir);
            set_mode(&dir.join(crate::certificates::SERVER_KEY), 0o600);
            extra_settings.extend([
                "ssl=on".to_owned(),
                format!(
                    "ssl_cert_file={}",
                    dir.join(crate::certificates::SERVER_CERT).display()
                ),
                format!(
                    "ssl_key_file={}",
                    dir.join(crate::certificates::SERVER_KEY).display()
                ),
            ]);
        }
        if run_as_postgres {
            chown_to_postgres(&dir);
            if tls {
                for name in [
                    crate::certificates::SERVER_CERT,
                    crate::certificates::SERVER_KEY,
                ] {
                    chown_to_postgres(&dir.join(name));
                }
            }
        }
        let managed = ManagedCluster {
            dir,
            bin_dir,
            run_as_postgres,
            extra_settings,
            tls,
        };
        managed.spawn_watchdog();
        managed.initdb();
        let port = managed.start_server();
        TestCluster {
            host: "127.0.0.1".to_owned(),
            port,
            user: "postgres".to_owned(),
            password: None,
            admin_database: "postgres".to_owned(),
            managed: Some(managed),
            #[cfg(feature = "testcontainers")]
            _container: None,
        }
    }

    /// The server's host (an address, or a socket directory).
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The user the tests connect as (a superuser for throwaway clusters).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The user's password, if any.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// A URL for `database` on this server.
    pub fn url(&self, database: &str) -> String {
        self.url_for_user(database, &self.user, self.password.as_deref())
    }

    /// A URL for `database` on this server, connecting as `user`.
    pub fn url_for_user(&self, database: &str, user: &str, password: Option<&str>) -> String {
        let credentials = match password {
            Some(password) => format!("{}:{}", encode(user), encode(password)),
            None => encode(user),
        };
        format!(
            "postgresql://{credentials}@{}:{}/{}",
            self.host,
            self.port,
            encode(database)
        )
    }

    /// The server's log file, for throwaway clusters (which log every statement with
    /// `log_line_prefix = '%m [%p] %d '`).
    pub fn server_log(&self) -> Option<PathBuf> {
        self.managed
            .as_ref()
            .map(|managed| managed.dir.join("server.log"))
    }

    /// Runs `f` with a connection to the admin database, on a thread of its own (the sync
    /// client cannot run inside an async runtime).
    pub fn with_admin<R: Send>(&self, f: impl FnOnce(&mut postgres::Client) -> R + Send) -> R {
        let url = self.url(&self.admin_database);
        std::thread::scope(|scope| {
            scope
                .spawn(move || {
                    let mut client = postgres::Client::connect(&url, postgres::NoTls)
                        .unwrap_or_else(|error| panic!("connect to the test server: {error}"));
                    f(&mut client)
                })
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Stops the server (throwaway clusters only) and waits until it is down.
    pub fn stop(&self) {
        if let Some(managed) = &self.managed {
            managed.pg_ctl(&["stop", "-m", "fast", "-w"]);
        }
    }

    /// Starts the server again after [`TestCluster::stop`] (throwaway clusters only), on the
    /// same port, and waits until it accepts connections.
    pub fn restart(&self) {
        if let Some(managed) = &self.managed {
            managed.pg_ctl_start(self.port);
        }
    }

    /// Runs `pg_resetwal` with `args` on the stopped server (throwaway clusters only), e.g.
    /// `["-e", "3"]` to move the transaction id epoch as years of wraparounds would.
    pub fn reset_wal(&self, args: &[&str]) {
        if let Some(managed) = &self.managed {
            let status = managed
                .command("pg_resetwal")
                .args(args)
                .arg("-D")
                .arg(managed.data_dir())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .status()
                .expect("run pg_resetwal");
            assert!(status.success(), "pg_resetwal {args:?} failed");
        }
    }

    /// Takes a base backup of the running server (`pg_basebackup`, WAL included; throwaway
    /// clusters only) and returns its directory, for [`TestCluster::restore`].
    pub fn base_backup(&self) -> PathBuf {
        let managed = self
            .managed
            .as_ref()
            .expect("base backups are for throwaway clusters");
        static TAKEN: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let target = managed.dir.join(format!(
            "backup-{}",
            TAKEN.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let status = managed
            .command("pg_basebackup")
            .args([
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "-U",
                &self.user,
            ])
            .arg("-D")
            .arg(&target)
            .args(["-X", "stream", "-c", "fast"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("run pg_basebackup");
        assert!(status.success(), "pg_basebackup failed");
        target
    }

    /// Restores the server from `backup` (a [`TestCluster::base_backup`]): stops it, replaces
    /// its data directory, and starts it again on the same port. Its replication slots are gone,
    /// as after any restore from a base backup.
    pub fn restore(&self, backup: &Path) {
        let managed = self
            .managed
            .as_ref()
            .expect("restores are for throwaway clusters");
        managed.pg_ctl(&["stop", "-m", "fast", "-w"]);
        std::fs::remove_dir_all(managed.data_dir()).expect("remove the data directory");
        std::fs::rename(backup, managed.data_dir()).expect("put the backup in place");
        managed.pg_ctl_start(self.port);
    }

    /// The root certificate that signed the server's certificate (TLS clusters only).
    pub fn root_cert(&self) -> Option<PathBuf> {
        self.managed
            .as_ref()
            .filter(|managed| managed.tls)
            .map(|managed| managed.dir.join(crate::certificates::ROOT_CERT))
    }

    /// A root certificate that did not sign the server's certificate (TLS clusters only).
    pub fn other_root_cert(&self) -> Option<PathBuf> {
        self.managed
            .as_ref()
            .filter(|managed| managed.tls)
            .map(|managed| managed.dir.join(crate::certificates::OTHER_ROOT_CERT))
    }

    /// The directory of the server binaries, for throwaway clusters.
    pub fn bin_dir(&self) -> Option<&Path> {
        self.managed
            .as_ref()
            .map(|managed| managed.bin_dir.as_path())
    }

    /// Whether this process started the cluster (and so can stop, restart or read its log).
    pub fn is_throwaway(&self) -> bool {
        self.managed.is_some()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if let Some(managed) = &self.managed {
            let _ = managed
                .command("pg_ctl")
                .arg("-D")
                .arg(managed.data_dir())
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&managed.dir);
        }
    }
}

impl ManagedCluster {
    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin_dir.join(program);
        if self.run_as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    fn initdb(&self) {
        let output = self
            .command("initdb")
            .arg("-D")
            .arg(self.data_dir())
            .args([
                "-N",
                "-A",
                "trust",
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .output()
            .expect("run initdb");
        assert!(
            output.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts the server on a free port, retrying with another port if one was taken meanwhile.
    fn start_server(&self) -> u16 {
        let mut last_error = String::new();
        for _ in 0..5 {
            let port = free_port();
            match self.try_start(port) {
                Ok(()) => return port,
                Err(error) => last_error = error,
            }
        }
        panic!("could not start the test cluster: {last_error}");
    }

    fn pg_ctl_start(&self, port: u16) {
        if let Err(error) = self.try_start(port) {
            panic!("could not restart the test cluster: {error}");
        }
    }

    fn try_start(&self, port: u16) -> Result<(), String> {
        let options = [
            format!("-c port={port}"),
            "-c listen_addresses=127.0.0.1".to_owned(),
            format!("-c unix_socket_directories={}", self.dir.display()),
            "-c wal_level=logical".to_owned(),
            "-c max_replication_slots=100".to_owned(),
            "-c max_wal_senders=100".to_owned(),
            "-c max_connections=300".to_owned(),
            "-c fsync=off".to_owned(),
            // Commits must be flushed at once: logical decoding only reads flushed WAL.
            "-c synchronous_commit=on".to_owned(),
            "-c full_page_writes=off".to_owned(),
            "-c wal_sender_timeout=30s".to_owned(),
            "-c log_statement=all".to_owned(),
            "-c log_line_prefix='%m [%p] %d '".to_owned(),
            "-c TimeZone=UTC".to_owned(),
        ]
        .into_iter()
        .chain(
            self.extra_settings
                .iter()
                .map(|setting| format!("-c {setting}")),
        )
        .collect::<Vec<_>>()
        .join(" ");
        let output = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(["-w", "-t", "60", "-l"])
            .arg(self.dir.join("server.log"))
            .args(["-o", &options, "start"])
            .stdin(Stdio::null())
            .output()
            .map_err(|error| format!("run pg_ctl: {error}"))?;
        if output.status.success() {
            Ok(())
        } else {
            let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            Err(format!(
                "{}{}",
                String::from_utf8_lossy(&output.stderr),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            ))
        }
    }

    fn pg_ctl(&self, args: &[&str]) {
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(self.data_dir())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .expect("run pg_ctl");
        assert!(status.success(), "pg_ctl {args:?} failed");
    }

    /// Starts a detached process that stops the cluster and removes its directory as soon as
    /// this process is gone, however it ends (normal exit, panic, SIGKILL).
    // The watchdog outlives this process by design and only exits after it: never waited on.
    #[allow(clippy::zombie_processes)]
    fn spawn_watchdog(&self) {
        let pg_ctl = self.bin_dir.join("pg_ctl");
        let run = if self.run_as_postgres {
            "runuser -u postgres -- "
        } else {
            ""
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 0.2; done; \
             {run}'{pg_ctl}' -D '{data}' -m immediate stop >/dev/null 2>&1; \
             rm -rf '{dir}'",
            pid = std::process::id(),
            pg_ctl = pg_ctl.display(),
            data = self.data_dir().display(),
            dir = self.dir.display(),
        );
        let mut command = if Path::new("/usr/bin/setsid").exists() {
            let mut command = Command::new("/usr/bin/setsid");
            command.arg("sh");
            command
        } else {
            Command::new("sh")
        };
        command
            .args(["-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the test cluster's watchdog");
    }
}

/// Stops and removes clusters left by test processes that no longer exist (their watchdog was
/// killed too, e.g. by a machine reboot or `kill -9` of the whole process group).
fn remove_stale_clusters(base: &Path, bin_dir: &Path, run_as_postgres: bool) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .split('-')
            .next()
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        let stale = ManagedCluster {
            dir: entry.path(),
            bin_dir: bin_dir.to_owned(),
            run_as_postgres,
            extra_settings: Vec::new(),
            tls: false,
        };
        if stale.data_dir().join("postmaster.pid").exists() {
            let _ = stale
                .command("pg_ctl")
                .arg("-D")
                .arg(stale.data_dir())
                .args(["-m", "immediate", "stop"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(entry.path());
    }
}

/// Finds `initdb`/`pg_ctl`: `BEMI_PG_BIN_DIR`, Debian's `/usr/lib/postgresql/<major>/bin`
/// (newest first), `pg_config --bindir`, then `PATH`.
fn find_bin_dir() -> Result<PathBuf, String> {
    if let Ok(dir) = std::env::var(BIN_DIR_VARIABLE) {
        let dir = PathBuf::from(dir);
        return if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            Ok(dir)
        } else {
            Err(format!(
                "{BIN_DIR_VARIABLE} is {}, which holds no initdb and pg_ctl",
                dir.display()
            ))
        };
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let major = entry.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").exists().then_some((major, bin))
        })
        .collect();
    debian.sort();
    if let Some((_, bin)) = debian.pop() {
        return Ok(bin);
    }
    if let Ok(output) = Command::new("pg_config").arg("--bindir").output() {
        let bin = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        if bin.join("initdb").exists() {
            return Ok(bin);
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
                return Ok(dir);
            }
        }
    }
    Err(format!(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install them (Debian/Ubuntu: \
         `{}`; macOS: `brew install postgresql`), point {BIN_DIR_VARIABLE} at their directory, \
         or set {DATABASE_URL_VARIABLE} to a server running with wal_level=logical",
        crate::INSTALL_LINE
    ))
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| String::from_utf8_lossy(&output.stdout).trim() == "0")
        .unwrap_or(false)
}

fn chown_to_postgres(path: &Path) {
    let id = |flag: &str| -> u32 {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .expect("run id");
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .unwrap_or_else(|_| {
                panic!("running as root needs a `postgres` OS user to run the PostgreSQL server")
            })
    };
    std::os::unix::fs::chown(path, Some(id("-u")), Some(id("-g")))
        .expect("give the test cluster's files to the postgres user");
}

fn set_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode));
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("find a free port")
}

/// Percent-encodes a URL component.
fn encode(text: &str) -> String {
    let mut encoded = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            encoded.push(char::from(byte));
        } else {
            encoded.push_str(&format!("%{byte:02X}"));
        }
    }
    encoded
}
