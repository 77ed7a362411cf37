//! Column policies: which columns the worker redacts, drops, or treats as noise, before anything
//! is stored.
//!
//! | action | effect on a stored change |
//! | --- | --- |
//! | [`ColumnAction::Redact`] | the column stays in `before`/`after`, its value replaced by [`crate::REDACTED`] |
//! | [`ColumnAction::Drop`] | the column is left out of `before`/`after` |
//! | [`ColumnAction::Noise`] | an UPDATE that changes nothing but noise columns is not stored (e.g. `updated_at`) |
//! | [`ColumnAction::Personal`] | the value is stored, with a salted commitment the seal covers instead of the value: `bemi-worker erase` can remove it later and the seals still verify |
//!
//! A rule names columns with a pattern `column`, `table.column` or `schema.table.column`, where
//! any part may be `*` and a part may be double-quoted (`"Order Items".note`); unquoted names are
//! matched exactly as written. Primary-key columns are never redacted or dropped (history and
//! revert find rows by them); such rules are ignored for them.
//!
//! Rules come from the worker's configuration (`--redact`, `--drop-columns`, `--noise-columns`)
//! and from the source database's `bemi.column_policies` table, which setup fills from the
//! `#[bemi(redact)]`, `#[bemi(ignore)]`, `#[bemi(noise)]` and `#[bemi(personal)]` attributes of
//! `Audited` models.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// What happens to a column.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ColumnAction {
    /// Keep the column, replace its value by [`crate::REDACTED`].
    Redact,
    /// Leave the column out of row images.
    Drop,
    /// Do not store UPDATEs that change only noise columns.
    Noise,
    /// Personal data: stored, and erasable per subject without breaking the seals.
    Personal,
}

impl ColumnAction {
    /// The name stored in `bemi.column_policies.action`: `redact`, `drop`, `noise` or
    /// `personal`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ColumnAction::Redact => "redact",
            ColumnAction::Drop => "drop",
            ColumnAction::Noise => "noise",
            ColumnAction::Personal => "personal",
        }
    }
}

impl FromStr for ColumnAction {
    type Err = Error;

    fn from_str(name: &str) -> Result<Self> {
        match name {
            "redact" => Ok(ColumnAction::Redact),
            "drop" => Ok(ColumnAction::Drop),
            "noise" => Ok(ColumnAction::Noise),
            "personal" => Ok(ColumnAction::Personal),
            other => Err(Error::InvalidColumnPattern(format!(
                "unknown column action {other:?} (expected redact, drop, noise or personal)"
            ))),
        }
    }
}

/// One part of a pattern: a name, or `*`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum Part {
    Any,
    Name(String),
}

impl Part {
    fn matches(&self, name: &str) -> bool {
        match self {
            Part::Any => true,
            Part::Name(expected) => expected == name,
        }
    }
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Part::Any => f.write_str("*"),
            Part::Name(name) => write!(f, "\"{}\"", name.replace('"', "\"\"")),
        }
    }
}

/// A pattern naming columns: `column`, `table.column` or `schema.table.column`, `*` for any.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ColumnPattern {
    schema: Part,
    table: Part,
    column: Part,
}

impl ColumnPattern {
    /// The pattern for exactly one column.
    pub fn exact(schema: &str, table: &str, column: &str) -> Self {
        Self {
            schema: Part::Name(schema.to_owned()),
            table: Part::Name(table.to_owned()),
            column: Part::Name(column.to_owned()),
        }
    }

    /// Whether the pattern names this column.
    pub fn matches(&self, schema: &str, table: &str, column: &str) -> bool {
        self.schema.matches(schema) && self.table.matches(table) && self.column.matches(column)
    }
}

impl fmt::Display for ColumnPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.schema, self.table, self.column)
    }
}

impl FromStr for ColumnPattern {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = |why: &str| Error::InvalidColumnPattern(format!("{text:?}: {why}"));
        let mut parts = Vec::new();
        let mut rest = text.trim();
        loop {
            let (part, after) = if let Some(quoted) = rest.strip_prefix('"') {
                let mut name = String::new();
                let mut chars = quoted.char_indices();
                let mut end = None;
                while let Some((at, c)) = chars.next() {
                    if c == '"' {
                        if quoted[at + 1..].starts_with('"') {
                            name.push('"');
                            chars.next();
                        } else {
                            end = Some(at + 1);
                            break;
                        }
                    } else {
                        name.push(c);
                    }
                }
                let end = end.ok_or_else(|| invalid("unterminated quote"))?;
                (Part::Name(name), &quoted[end..])
            } else {
                let end = rest.find('.').unwrap_or(rest.len());
                let name = rest[..end].trim();
                if name.is_empty() {
                    return Err(invalid("empty name"));
                }
                let part = if name == "*" {
                    Part::Any
                } else {
                    Part::Name(name.to_owned())
                };
                (part, &rest[end..])
            };
            if let Part::Name(name) = &part
                && (name.is_empty() || name.contains('\0'))
            {
                return Err(invalid("empty name or NUL"));
            }
            parts.push(part);
            let after = after.trim_start();
            if after.is_empty() {
                break;
            }
            rest = after
                .strip_prefix('.')
                .ok_or_else(|| invalid("expected `.` between names"))?
                .trim_start();
        }
        let mut parts = parts.into_iter().rev();
        let column = parts.next().ok_or_else(|| invalid("empty pattern"))?;
        let table = parts.next().unwrap_or(Part::Any);
        let schema = parts.next().unwrap_or(Part::Any);
        if parts.next().is_some() {
            return Err(invalid("at most schema.table.column"));
        }
        Ok(Self {
            schema,
            table,
            column,
        })
    }
}

/// What applies to one column.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ColumnFlags {
    /// Its value is replaced by [`crate::REDACTED`].
    pub redact: bool,
    /// It is left out of images.
    pub drop: bool,
    /// Changing only it (and other noise columns) does not make a stored change.
    pub noise: bool,
    /// Its values are personal data, erasable per subject (see [`ColumnAction::Personal`]).
    pub personal: bool,
}

impl ColumnFlags {
    /// Whether nothing applies.
    pub fn is_empty(&self) -> bool {
        !(self.redact || self.drop || self.noise || self.personal)
    }
}

/// A set of rules.
///
/// # Examples
///
/// ```
/// use bemi_core::policy::{ColumnAction, ColumnPolicies};
///
/// let mut policies = ColumnPolicies::default();
/// policies.add_list(ColumnAction::Redact, "password_hash, *.token")?;
/// policies.add_list(ColumnAction::Noise, "updated_at")?;
/// let flags = policies.for_column("public", "users", "token");
/// assert!(flags.redact && !flags.noise);
/// # Ok::<(), bemi_core::Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ColumnPolicies {
    rules: Vec<(ColumnPattern, ColumnAction)>,
}

impl ColumnPolicies {
    /// Adds one rule.
    pub fn add(&mut self, pattern: ColumnPattern, action: ColumnAction) {
        if !self.rules.contains(&(pattern.clone(), action)) {
            self.rules.push((pattern, action));
        }
    }

    /// Adds a rule per comma-separated pattern of `list` (blank entries are skipped).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidColumnPattern`] for a malformed pattern.
    pub fn add_list(&mut self, action: ColumnAction, list: &str) -> Result<()> {
        for pattern in split_list(list) {
            self.add(pattern.parse()?, action);
        }
        Ok(())
    }

    /// Adds every rule of `other`.
    pub fn extend(&mut self, other: &ColumnPolicies) {
        for (pattern, action) in &other.rules {
            self.add(pattern.clone(), *action);
        }
    }

    /// The rules.
    pub fn rules(&self) -> &[(ColumnPattern, ColumnAction)] {
        &self.rules
    }

    /// Whether there are no rules.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// What applies to a column.
    pub fn for_column(&self, schema: &str, table: &str, column: &str) -> ColumnFlags {
        let mut flags = ColumnFlags::default();
        for (pattern, action) in &self.rules {
            if pattern.matches(schema, table, column) {
                match action {
                    ColumnAction::Redact => flags.redact = true,
                    ColumnAction::Drop => flags.drop = true,
                    ColumnAction::Noise => flags.noise = true,
                    ColumnAction::Personal => flags.personal = true,
                }
            }
        }
        flags
    }
}

/// Splits a comma-separated list, keeping commas inside double quotes.
fn split_list(list: &str) -> Vec<&str> {
    let mut items = Vec::new();
    let mut start = 0;
    let mut quoted = false;
    for (at, c) in list.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                items.push(&list[start..at]);
                start = at + 1;
            }
            _ => {}
        }
    }
    items.push(&list[start..]);
    items
        .into_iter()
        .map(str::trim)
        .filter(|item| !item.is_empty())
        .collect()
}

/// The SQL (source database) that replaces the stored rules of `table` with `rules`
/// (`(column, action)` pairs); run by setup for `Audited` models.
pub(crate) fn store_table_rules_sql(
    table: &crate::QualifiedName,
    rules: &[(&str, ColumnAction)],
) -> String {
    use crate::ident::quote_literal;
    let schema = quote_literal(table.schema());
    let name = quote_literal(table.name());
    let mut sql = format!(
        "DELETE FROM bemi.column_policies WHERE schema_name = {schema} AND table_name = {name};\n"
    );
    for (column, action) in rules {
        sql.push_str(&format!(
            "INSERT INTO bemi.column_policies VALUES ({schema}, {name}, {}, {});\n",
            quote_literal(column),
            quote_literal(action.as_str())
        ));
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_name_columns_tables_and_schemas() {
        let any_token: ColumnPattern = "*.token".parse().unwrap();
        assert!(any_token.matches("public", "users", "token"));
        assert!(any_token.matches("auth", "sessions", "token"));
        assert!(!any_token.matches("public", "users", "tokens"));
        let exact: ColumnPattern = "billing.cards.number".parse().unwrap();
        assert!(exact.matches("billing", "cards", "number"));
        assert!(!exact.matches("public", "cards", "number"));
        let bare: ColumnPattern = "password_hash".parse().unwrap();
        assert!(bare.matches("x", "y", "password_hash"));
        let quoted: ColumnPattern = r#""Order Items"."a.b ""c""""#.parse().unwrap();
        assert!(quoted.matches("public", "Order Items", r#"a.b "c""#));
        assert_eq!(quoted.to_string(), r#"*."Order Items"."a.b ""c""""#);
        for bad in ["", "a..b", "a.b.c.d", "\"open", "a b.c d e.\"x\"y"] {
            assert!(bad.parse::<ColumnPattern>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lists_and_flags() {
        let mut policies = ColumnPolicies::default();
        policies
            .add_list(ColumnAction::Redact, r#" password_hash, "a,b".secret ,, "#)
            .unwrap();
        policies
            .add_list(ColumnAction::Drop, "users.email")
            .unwrap();
        policies
            .add_list(ColumnAction::Noise, "updated_at")
            .unwrap();
        policies
            .add_list(ColumnAction::Personal, "users.email")
            .unwrap();
        assert_eq!(policies.rules().len(), 5);
        assert!(policies.for_column("public", "users", "email").personal);
        assert_eq!(
            "personal".parse::<ColumnAction>().ok(),
            Some(ColumnAction::Personal)
        );
        let flags = policies.for_column("public", "a,b", "secret");
        assert!(flags.redact && !flags.drop);
        assert!(policies.for_column("public", "users", "email").drop);
        assert!(!policies.for_column("public", "orders", "email").drop);
        assert!(policies.for_column("s", "t", "updated_at").noise);
        assert!(policies.for_column("s", "t", "name").is_empty());
        assert!("hide".parse::<ColumnAction>().is_err());
    }
}
