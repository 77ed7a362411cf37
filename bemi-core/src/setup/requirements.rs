//! What bemi needs from PostgreSQL, checked with messages that say exactly what to run.
//!
//! Requirements: PostgreSQL 14 or newer (logical messages through pgoutput), `wal_level =
//! logical`, at least one free replication slot and WAL sender, and a role with the
//! `REPLICATION` attribute (or superuser) for the worker's connection.

use std::fmt;

/// Facts about a server and the connected role, read with [`ServerFacts::QUERY`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerFacts {
    /// `server_version_num`, e.g. `150004`.
    pub server_version_num: i32,
    /// `server_version`, e.g. `15.4 (Debian 15.4-1)`.
    pub server_version: String,
    /// `wal_level`: `minimal`, `replica` or `logical`.
    pub wal_level: String,
    /// `max_replication_slots`.
    pub max_replication_slots: i32,
    /// `max_wal_senders`.
    pub max_wal_senders: i32,
    /// The connected role.
    pub role: String,
    /// Whether the role is a superuser.
    pub superuser: bool,
    /// Whether the role has the `REPLICATION` attribute (or membership in `rds_replication`).
    pub replication: bool,
}

impl ServerFacts {
    /// Reads the facts as one row, columns in field order.
    pub const QUERY: &'static str = "SELECT \
        pg_catalog.current_setting('server_version_num')::integer, \
        pg_catalog.current_setting('server_version'), \
        pg_catalog.current_setting('wal_level'), \
        pg_catalog.current_setting('max_replication_slots')::integer, \
        pg_catalog.current_setting('max_wal_senders')::integer, \
        r.rolname::text, \
        r.rolsuper, \
        r.rolreplication OR EXISTS ( \
            SELECT 1 FROM pg_catalog.pg_roles g \
            WHERE g.rolname = 'rds_replication' AND pg_catalog.pg_has_role(r.oid, g.oid, 'member')) \
        FROM pg_catalog.pg_roles r WHERE r.rolname = current_user";

    /// Checks that the server can be a bemi source and the role can stream its changes.
    ///
    /// # Errors
    ///
    /// A [`RequirementError`] listing every unmet requirement with the command that fixes it.
    ///
    /// # Examples
    ///
    /// ```
    /// use bemi_core::setup::ServerFacts;
    ///
    /// let facts = ServerFacts {
    ///     server_version_num: 150004,
    ///     server_version: "15.4".into(),
    ///     wal_level: "replica".into(),
    ///     max_replication_slots: 10,
    ///     max_wal_senders: 10,
    ///     role: "app".into(),
    ///     superuser: false,
    ///     replication: true,
    /// };
    /// let error = facts.check_source().unwrap_err();
    /// assert!(error.to_string().contains("ALTER SYSTEM SET wal_level = logical"));
    /// ```
    pub fn check_source(&self) -> Result<(), RequirementError> {
        let mut problems = Vec::new();
        if self.server_version_num < 140_000 {
            problems.push(Problem::ServerTooOld {
                version: self.server_version.clone(),
            });
        }
        if self.wal_level != "logical" {
            problems.push(Problem::WalLevel {
                found: self.wal_level.clone(),
            });
        }
        if self.max_replication_slots < 1 {
            problems.push(Problem::NoReplicationSlots);
        }
        if self.max_wal_senders < 1 {
            problems.push(Problem::NoWalSenders);
        }
        if !self.superuser && !self.replication {
            problems.push(Problem::NoReplicationPrivilege {
                role: self.role.clone(),
            });
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(RequirementError { problems })
        }
    }
}

/// One unmet requirement.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Problem {
    /// The server is older than PostgreSQL 14.
    ServerTooOld {
        /// The server's version.
        version: String,
    },
    /// `wal_level` is not `logical`.
    WalLevel {
        /// The current `wal_level`.
        found: String,
    },
    /// `max_replication_slots` is 0.
    NoReplicationSlots,
    /// `max_wal_senders` is 0.
    NoWalSenders,
    /// The role may not stream the WAL.
    NoReplicationPrivilege {
        /// The role.
        role: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Problem::ServerTooOld { version } => write!(
                f,
                "PostgreSQL 14 or newer is required, this server runs {version}"
            ),
            Problem::WalLevel { found } => write!(
                f,
                "wal_level is '{found}' but logical decoding needs 'logical': run \
                 `ALTER SYSTEM SET wal_level = logical;` as a superuser and restart PostgreSQL \
                 (on managed services set the equivalent parameter, e.g. \
                 rds.logical_replication = 1 on Amazon RDS)"
            ),
            Problem::NoReplicationSlots => write!(
                f,
                "max_replication_slots is 0: run `ALTER SYSTEM SET max_replication_slots = 10;` \
                 and restart PostgreSQL"
            ),
            Problem::NoWalSenders => write!(
                f,
                "max_wal_senders is 0: run `ALTER SYSTEM SET max_wal_senders = 10;` and restart \
                 PostgreSQL"
            ),
            Problem::NoReplicationPrivilege { role } => {
                let role = crate::ident::quote_ident(role).unwrap_or_else(|_| role.clone());
                write!(
                    f,
                    "role {role} may not read the replication stream: run \
                     `ALTER ROLE {role} WITH REPLICATION;` as a superuser (on Amazon RDS: \
                     `GRANT rds_replication TO {role};`)"
                )
            }
        }
    }
}

/// The unmet requirements of a server, each with its fix.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequirementError {
    problems: Vec<Problem>,
}

impl RequirementError {
    /// The unmet requirements.
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }
}

impl fmt::Display for RequirementError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the database cannot be used by bemi yet: ")?;
        for (i, problem) in self.problems.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

impl std::error::Error for RequirementError {}

#[cfg(test)]
mod tests {
    use super::*;

    fn good() -> ServerFacts {
        ServerFacts {
            server_version_num: 150_004,
            server_version: "15.4".into(),
            wal_level: "logical".into(),
            max_replication_slots: 10,
            max_wal_senders: 10,
            role: "bemi".into(),
            superuser: false,
            replication: true,
        }
    }

    #[test]
    fn a_good_server_passes() {
        assert!(good().check_source().is_ok());
        let superuser = ServerFacts {
            superuser: true,
            replication: false,
            ..good()
        };
        assert!(superuser.check_source().is_ok());
    }

    #[test]
    fn every_problem_is_reported_with_its_fix() {
        let facts = ServerFacts {
            server_version_num: 130_010,
            server_version: "13.10".into(),
            wal_level: "replica".into(),
            max_replication_slots: 0,
            max_wal_senders: 0,
            role: "App User".into(),
            superuser: false,
            replication: false,
        };
        let error = facts.check_source().unwrap_err();
        assert_eq!(error.problems().len(), 5);
        let message = error.to_string();
        for expected in [
            "PostgreSQL 14 or newer is required, this server runs 13.10",
            "ALTER SYSTEM SET wal_level = logical;",
            "ALTER SYSTEM SET max_replication_slots = 10;",
            "ALTER SYSTEM SET max_wal_senders = 10;",
            "ALTER ROLE \"App User\" WITH REPLICATION;",
        ] {
            assert!(message.contains(expected), "{message}");
        }
    }
}
