//! Connection settings parsed from a URL, connecting with or without TLS, and URLs safe to log.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use futures_util::StreamExt;
use tokio_postgres::{AsyncMessage, Client, Config};

use crate::postgres::tls::{SslMode, TlsOptions};
use crate::{Error, Result};

/// Session settings of every connection of the worker. The first five make the text of values
/// stable and unambiguous (the replication stream formats values with them). The timeouts are
/// off: a database- or role-level `statement_timeout` or `lock_timeout` (common settings for
/// applications) must not end the worker's sessions while it waits for a lock on the `changes`
/// table or writes a large batch.
const SESSION_OPTIONS: &str = "-c DateStyle=ISO -c TimeZone=UTC -c IntervalStyle=iso_8601 \
    -c extra_float_digits=3 -c bytea_output=hex -c statement_timeout=0 -c lock_timeout=0 \
    -c idle_in_transaction_session_timeout=0";

/// Decoded replication events the reader may hold ahead of the worker. The bound is in events,
/// not bytes (one event is one row change, up to a whole wide row), so it is small: with rows of
/// several megabytes a large buffer held hundreds of them while the store was busy. Batching
/// happens after it; the reader waits on the socket (TCP flow control) meanwhile.
const REPLICATION_BUFFER_EVENTS: usize = 2;

/// How to reach one PostgreSQL database.
///
/// Accepts `postgres://` / `postgresql://` URLs (including `sslmode`, `sslrootcert`, `sslcert`
/// and `sslkey` query parameters, see [`crate::postgres::tls`]) and libpq `key=value` strings.
#[derive(Clone)]
pub struct ConnectionOptions {
    config: Config,
    tls: TlsOptions,
    masked: String,
}

impl ConnectionOptions {
    /// Parses a connection URL or `key=value` string.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidUrl`] with the password masked, or [`Error::Config`] for an unknown
    /// `sslmode`.
    ///
    /// # Examples
    ///
    /// ```
    /// use bemi_worker::ConnectionOptions;
    ///
    /// let options = ConnectionOptions::parse("postgres://app:s3cret@db.internal:5433/shop?sslmode=verify-full")?;
    /// assert_eq!(options.to_string(), "postgres://app:***@db.internal:5433/shop?sslmode=verify-full");
    /// assert_eq!(options.database(), "shop");
    /// # Ok::<(), bemi_worker::Error>(())
    /// ```
    pub fn parse(url: &str) -> Result<Self> {
        let masked = mask_password(url);
        let invalid = |reason: String| Error::InvalidUrl {
            url: masked.clone(),
            reason,
        };
        let mut tls = TlsOptions::default();
        let mut mode_given = false;
        let remaining = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            let (base, query) = url.split_once('?').unwrap_or((url, ""));
            let mut kept = Vec::new();
            for pair in query.split('&').filter(|pair| !pair.is_empty()) {
                let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
                let value = percent_decode(value).map_err(invalid)?;
                match key {
                    "sslmode" => {
                        tls.mode = value.parse()?;
                        mode_given = true;
                    }
                    "sslrootcert" => tls.root_cert = Some(PathBuf::from(value)),
                    "sslcert" => tls.client_cert = Some(PathBuf::from(value)),
                    "sslkey" => tls.client_key = Some(PathBuf::from(value)),
                    _ => kept.push(pair),
                }
            }
            if kept.is_empty() {
                base.to_owned()
            } else {
                format!("{base}?{}", kept.join("&"))
            }
        } else {
            url.to_owned()
        };
        let mut config =
            Config::from_str(&remaining).map_err(|error| invalid(error.to_string()))?;
        if !mode_given {
            // key=value strings: tokio-postgres parsed disable/prefer/require itself.
            tls.mode = match config.get_ssl_mode() {
                tokio_postgres::config::SslMode::Disable => SslMode::Disable,
                tokio_postgres::config::SslMode::Require => SslMode::Require,
                _ => SslMode::Prefer,
            };
        }
        config.ssl_mode(match tls.effective_mode() {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        if config.get_dbname().is_none() {
            config.dbname(config.get_user().unwrap_or("postgres").to_owned());
        }
        let masked = match config.get_password() {
            // The text masking missed the password (some form it does not know): show the parsed
            // settings instead, which never include it.
            Some(password) if !password.is_empty() && contains_bytes(&masked, password) => {
                rendered_without_password(&config)
            }
            _ => masked,
        };
        Ok(Self {
            config,
            tls,
            masked,
        })
    }

    /// Parses like [`ConnectionOptions::parse`], then fills in a missing password the way libpq
    /// does: from `PGPASSWORD`, else from the password file (`PGPASSFILE`, default
    /// `~/.pgpass`; lines `host:port:database:user:password`, `*` matching anything, `\:` and
    /// `\\` escaped). Keeps passwords off command lines, where `ps` shows them.
    ///
    /// # Errors
    ///
    /// As [`ConnectionOptions::parse`], and an unreadable `PGPASSFILE` that was named
    /// explicitly.
    pub fn parse_with_password_sources(url: &str) -> Result<Self> {
        let mut options = Self::parse(url)?;
        if options.config.get_password().is_some() {
            return Ok(options);
        }
        if let Some(password) = std::env::var_os("PGPASSWORD") {
            options
                .config
                .password(password.to_string_lossy().as_bytes());
            return Ok(options);
        }
        let (file, explicit) = match std::env::var_os("PGPASSFILE") {
            Some(path) => (PathBuf::from(path), true),
            None => match std::env::var_os("HOME") {
                Some(home) => (PathBuf::from(home).join(".pgpass"), false),
                None => return Ok(options),
            },
        };
        let text = match std::fs::read_to_string(&file) {
            Ok(text) => text,
            Err(error) if explicit => {
                return Err(Error::Config(format!(
                    "cannot read the password file {} (PGPASSFILE): {error}",
                    file.display()
                )));
            }
            Err(_) => return Ok(options),
        };
        let (host, port) = options.host_and_port();
        let port = port.to_string();
        let wanted = [
            host.as_str(),
            port.as_str(),
            options.database(),
            options.user(),
        ];
        if let Some(password) = password_file_lookup(&text, wanted) {
            options.config.password(password.into_bytes());
        }
        Ok(options)
    }

    /// The database name.
    pub fn database(&self) -> &str {
        self.config.get_dbname().unwrap_or("postgres")
    }

    /// The user name.
    pub fn user(&self) -> &str {
        self.config.get_user().unwrap_or("postgres")
    }

    /// The TLS settings.
    pub fn tls(&self) -> &TlsOptions {
        &self.tls
    }

    /// The first host and port.
    fn host_and_port(&self) -> (String, u16) {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            #[cfg(unix)]
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_owned(),
        };
        (
            host,
            self.config.get_ports().first().copied().unwrap_or(5432),
        )
    }

    /// Connects a regular session with pinned session settings. The connection runs on a
    /// spawned task; server notices are logged.
    pub(crate) async fn connect(&self, application_name: &str) -> Result<Client> {
        let mut config = self.config.clone();
        config.application_name(application_name);
        config.options(SESSION_OPTIONS);
        let action = || format!("connect to {self}");
        if self.tls.effective_mode() == SslMode::Disable {
            let (client, connection) = config
                .connect(tokio_postgres::NoTls)
                .await
                .map_err(Error::postgres(action()))?;
            tokio::spawn(drive(connection));
            Ok(client)
        } else {
            let connector =
                tokio_postgres_rustls::MakeRustlsConnect::new(self.tls.client_config()?);
            let (client, connection) = config
                .connect(connector)
                .await
                .map_err(Error::postgres(action()))?;
            tokio::spawn(drive(connection));
            Ok(client)
        }
    }

    /// The settings of the replication connection for `slot` and `publication`.
    pub(crate) fn replication_config(
        &self,
        slot: &str,
        publication: &str,
    ) -> Result<pgwire_replication::ReplicationConfig> {
        let (host, port) = self.host_and_port();
        let password = self
            .config
            .get_password()
            .map(|password| String::from_utf8_lossy(password).into_owned())
            .unwrap_or_default();
        let mut config = pgwire_replication::ReplicationConfig::new(
            host,
            self.user(),
            password,
            self.database(),
            slot,
            // Quoted, so names with capitals or spaces reach the server intact.
            bemi_core::quote_ident(publication)?,
        )
        .with_port(port)
        .with_tls(self.tls.replication_tls())
        .with_options(SESSION_OPTIONS)
        .with_application_name("bemi-worker");
        config.buffer_events = REPLICATION_BUFFER_EVENTS;
        Ok(config)
    }
}

/// Drives a connection, logging the server's notices; ends when the connection closes.
async fn drive<S, T>(mut connection: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    while let Some(message) = messages.next().await {
        match message {
            Ok(AsyncMessage::Notice(notice)) => {
                tracing::info!(target: "bemi_worker::postgres", "{}: {}", notice.severity(), notice.message());
            }
            Ok(_) => {}
            Err(error) => {
                tracing::debug!(%error, "connection closed");
                break;
            }
        }
    }
}

/// The URL with its password masked.
impl fmt::Display for ConnectionOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.masked)
    }
}

/// Shows only the masked URL: passwords never reach logs.
impl fmt::Debug for ConnectionOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("ConnectionOptions")
            .field(&self.masked)
            .finish()
    }
}

/// Masks the password of a URL (`user:***@`, `password=***`) or `key=value` string.
///
/// Errs on the side of hiding: in a URL, everything between the user's `:` and the last `@` is
/// masked (a password may hold `/`, `?` or `@` unescaped); a `password` keyword is masked
/// whatever the spaces around its `=` and whatever its quoting.
///
/// # Examples
///
/// ```
/// use bemi_worker::mask_password;
///
/// assert_eq!(mask_password("postgres://u:Sl/ash?Pw9@db/app"), "postgres://u:***@db/app");
/// assert_eq!(mask_password("host=db password = 'a b\\' c' user=u"), "host=db password = *** user=u");
/// ```
pub fn mask_password(url: &str) -> String {
    let mut masked = url.to_owned();
    if let Some(scheme_end) = masked.find("://") {
        let authority_start = scheme_end + 3;
        if let Some(at) = masked[authority_start..].rfind('@') {
            let userinfo = &masked[authority_start..authority_start + at];
            if let Some(colon) = userinfo.find(':') {
                masked.replace_range(authority_start + colon + 1..authority_start + at, "***");
            }
        }
    }
    mask_keyword(&masked, "password")
}

/// Masks the value of every `keyword = value` (spaces optional; the value quoted with `'` and
/// backslash escapes, or running to the next space or `&`).
fn mask_keyword(text: &str, keyword: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut copied = 0;
    let mut search = 0;
    while let Some(found) = text[search..].find(keyword) {
        let at = search + found;
        search = at + keyword.len();
        let boundary = at == 0 || matches!(bytes[at - 1], b'?' | b'&' | b' ' | b'\t' | b'\n');
        let mut cursor = at + keyword.len();
        while bytes.get(cursor).is_some_and(u8::is_ascii_whitespace) {
            cursor += 1;
        }
        if !boundary || bytes.get(cursor) != Some(&b'=') {
            continue;
        }
        cursor += 1;
        while bytes.get(cursor).is_some_and(u8::is_ascii_whitespace) {
            cursor += 1;
        }
        let value_start = cursor;
        if bytes.get(cursor) == Some(&b'\'') {
            cursor += 1;
            while let Some(&byte) = bytes.get(cursor) {
                cursor += match byte {
                    b'\\' => 2,
                    b'\'' => {
                        cursor += 1;
                        break;
                    }
                    _ => 1,
                };
            }
        } else {
            while bytes
                .get(cursor)
                .is_some_and(|byte| !byte.is_ascii_whitespace() && *byte != b'&')
            {
                cursor += 1;
            }
        }
        let value_end = cursor.min(text.len());
        out.push_str(&text[copied..value_start]);
        out.push_str("***");
        copied = value_end;
        search = value_end;
    }
    out.push_str(&text[copied..]);
    out
}

/// The password for `wanted` (host, port, database, user) in a password file's text.
fn password_file_lookup(text: &str, wanted: [&str; 4]) -> Option<String> {
    for line in text.lines() {
        if line.trim_start().starts_with('#') {
            continue;
        }
        let mut fields = Vec::with_capacity(5);
        let mut field = String::new();
        let mut chars = line.chars();
        while let Some(char) = chars.next() {
            match char {
                '\\' => field.extend(chars.next()),
                ':' if fields.len() < 4 => fields.push(std::mem::take(&mut field)),
                other => field.push(other),
            }
        }
        fields.push(field);
        if fields.len() == 5
            && fields[..4]
                .iter()
                .zip(wanted)
                .all(|(pattern, value)| pattern == "*" || pattern == value)
        {
            return fields.pop();
        }
    }
    None
}

fn contains_bytes(text: &str, needle: &[u8]) -> bool {
    text.as_bytes()
        .windows(needle.len())
        .any(|window| window == needle)
}

/// `postgres://user:***@host:port/database`, from parsed settings.
fn rendered_without_password(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!(
        "postgres://{}:***@{host}:{port}/{}",
        config.get_user().unwrap_or("postgres"),
        config.get_dbname().unwrap_or("postgres")
    )
}

fn percent_decode(text: &str) -> Result<String, String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        if bytes[at] == b'%' {
            let hex = text.get(at + 1..at + 3).ok_or("truncated percent escape")?;
            out.push(
                u8::from_str_radix(hex, 16)
                    .map_err(|_| format!("invalid percent escape %{hex}"))?,
            );
            at += 3;
        } else {
            out.push(bytes[at]);
            at += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent escapes are not UTF-8".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords_everywhere() {
        for (url, masked) in [
            ("postgres://u:p%40ss@h/db", "postgres://u:***@h/db"),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?user=u&password=secret&sslmode=require",
                "postgres://h/db?user=u&password=***&sslmode=require",
            ),
            (
                "host=h password=secret dbname=d",
                "host=h password=*** dbname=d",
            ),
            (
                "host=h password='se cret' dbname=d",
                "host=h password=*** dbname=d",
            ),
            ("host=h dbname=nopassword=x", "host=h dbname=nopassword=x"),
            (
                "postgres://u:Sl/ash?Pw9@host/db",
                "postgres://u:***@host/db",
            ),
            (
                "postgres://u:a@b@host/db?x=1",
                "postgres://u:***@host/db?x=1",
            ),
            (
                "host=h password = x dbname=d",
                "host=h password = *** dbname=d",
            ),
            ("host=h password= x", "host=h password= ***"),
            ("password ='x y' host=h", "password =*** host=h"),
            (
                "host=h password='it\\'s' dbname=d",
                "host=h password=*** dbname=d",
            ),
        ] {
            assert_eq!(mask_password(url), masked, "{url}");
        }
    }

    #[test]
    fn the_shown_url_never_holds_the_parsed_password() {
        for url in [
            "postgres://u:Sl/ash?Pw9@host/db",
            "host=h user=u password = hunter2 dbname=d",
            "host=h user=u password='hunter 2' dbname=d",
            "postgresql://u@h/db?password=hunter2&sslmode=disable",
        ] {
            let options = ConnectionOptions::parse(url).unwrap();
            let password = options.config.get_password().unwrap();
            let password = std::str::from_utf8(password).unwrap();
            for shown in [options.to_string(), format!("{options:?}")] {
                assert!(!shown.contains(password), "{url} shown as {shown}");
            }
        }
    }

    #[test]
    fn finds_passwords_in_a_password_file() {
        let file = "# comment\n\
                    other:5432:*:u:wrong\n\
                    db\\:x:5432:app:u:colon\n\
                    db:*:*:u:se\\:cr\\\\et\n";
        assert_eq!(
            password_file_lookup(file, ["db", "5432", "app", "u"]).as_deref(),
            Some("se:cr\\et")
        );
        assert_eq!(
            password_file_lookup(file, ["db:x", "5432", "app", "u"]).as_deref(),
            Some("colon")
        );
        assert_eq!(password_file_lookup(file, ["db", "5432", "app", "v"]), None);
    }

    #[test]
    fn parses_tls_parameters_and_defaults() {
        let options = ConnectionOptions::parse(
            "postgresql://u:pw@db:6543/app?sslmode=verify-ca&sslrootcert=%2Fetc%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(options.tls().mode, SslMode::VerifyCa);
        assert_eq!(
            options.tls().root_cert.as_deref(),
            Some(std::path::Path::new("/etc/ca.pem"))
        );
        assert_eq!(options.host_and_port(), ("db".to_owned(), 6543));
        assert_eq!((options.user(), options.database()), ("u", "app"));
        let replication = options.replication_config("bemi", "My Pub").unwrap();
        assert_eq!(replication.password, "pw");
        assert_eq!(replication.publication.names(), ["\"My Pub\""]);

        let default = ConnectionOptions::parse("postgres://u@h").unwrap();
        assert_eq!(default.tls().mode, SslMode::Prefer);
        assert_eq!(default.database(), "u");
        let key_value = ConnectionOptions::parse("host=h user=u sslmode=disable").unwrap();
        assert_eq!(key_value.tls().mode, SslMode::Disable);
    }

    #[test]
    fn errors_never_show_the_password() {
        let error = ConnectionOptions::parse("postgres://u:hunter2@h:notaport/db").unwrap_err();
        let message = error.to_string();
        assert!(!message.contains("hunter2"), "{message}");
        assert!(
            message.contains("postgres://u:***@h:notaport/db"),
            "{message}"
        );
        assert!(ConnectionOptions::parse("postgres://u@h/db?sslmode=sometimes").is_err());
        let debug = format!(
            "{:?}",
            ConnectionOptions::parse("postgres://u:hunter2@h/db").unwrap()
        );
        assert!(!debug.contains("hunter2"), "{debug}");
    }
}
