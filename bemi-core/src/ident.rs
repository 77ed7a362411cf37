//! SQL identifiers and qualified table names, quoted safely.

use std::fmt;
use std::str::FromStr;

use crate::{Error, Result};

/// Quotes an SQL identifier: `my-table` becomes `"my-table"`, `a"b` becomes `"a""b"`.
///
/// # Errors
///
/// [`Error::InvalidIdentifier`] for an empty identifier or one containing NUL.
pub fn quote_ident(ident: &str) -> Result<String> {
    if ident.is_empty() || ident.contains('\0') {
        return Err(Error::InvalidIdentifier(ident.to_owned()));
    }
    Ok(format!("\"{}\"", ident.replace('"', "\"\"")))
}

/// Quotes a string as an SQL literal (`'it''s'`). A string containing a backslash is written in
/// the `E'...'` form with the backslash doubled, so the literal means the same whatever
/// `standard_conforming_strings` is set to.
pub fn quote_literal(value: &str) -> String {
    let escaped = value.replace('\'', "''");
    if escaped.contains('\\') {
        format!("E'{}'", escaped.replace('\\', "\\\\"))
    } else {
        format!("'{escaped}'")
    }
}

/// A table name with its schema, e.g. `public.todo` or `"Sales"."Order Items"`.
///
/// Parsing follows SQL rules: unquoted parts are folded to lower case, quoted parts keep their
/// exact spelling, and a name without a schema is in `public`.
///
/// # Examples
///
/// ```
/// use bemi_core::QualifiedName;
///
/// let name: QualifiedName = r#"Sales."Order Items""#.parse()?;
/// assert_eq!(name.schema(), "sales");
/// assert_eq!(name.name(), "Order Items");
/// assert_eq!(name.to_string(), r#""sales"."Order Items""#);
/// assert_eq!("todo".parse::<QualifiedName>()?, QualifiedName::new("public", "todo")?);
/// # Ok::<(), bemi_core::Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct QualifiedName {
    schema: String,
    name: String,
}

impl QualifiedName {
    /// A name from its exact (unquoted, case-sensitive) parts.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidIdentifier`] when a part is empty or contains NUL.
    pub fn new(schema: impl Into<String>, name: impl Into<String>) -> Result<Self> {
        let (schema, name) = (schema.into(), name.into());
        quote_ident(&schema)?;
        quote_ident(&name)?;
        Ok(Self { schema, name })
    }

    /// A name from static parts known to be valid (non-empty, no NUL).
    pub(crate) fn from_static(schema: &'static str, name: &'static str) -> Self {
        Self {
            schema: schema.to_owned(),
            name: name.to_owned(),
        }
    }

    /// The schema, exactly as stored in the catalog.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table name, exactly as stored in the catalog.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The name as a string literal for `regclass` casts: `'"public"."todo"'`.
    pub fn regclass_literal(&self) -> String {
        quote_literal(&self.to_string())
    }
}

/// Formats as quoted SQL: `"schema"."name"`.
impl fmt::Display for QualifiedName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Both parts were validated on construction, so quoting cannot fail.
        let quote = |part: &str| format!("\"{}\"", part.replace('"', "\"\""));
        write!(f, "{}.{}", quote(&self.schema), quote(&self.name))
    }
}

impl FromStr for QualifiedName {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self> {
        let invalid = || Error::InvalidTableName(text.to_owned());
        let mut parts = Vec::new();
        let mut rest = text.trim();
        loop {
            let (part, after) = if let Some(quoted) = rest.strip_prefix('"') {
                let mut part = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next() {
                        Some((i, '"')) if quoted[i + 1..].starts_with('"') => {
                            part.push('"');
                            chars.next();
                        }
                        Some((i, '"')) => break i + 1,
                        Some((_, c)) => part.push(c),
                        None => return Err(invalid()),
                    }
                };
                (part, &quoted[end..])
            } else {
                let end = rest.find('.').unwrap_or(rest.len());
                let part = rest[..end].trim();
                if part.is_empty() || part.contains('"') {
                    return Err(invalid());
                }
                (part.to_lowercase(), &rest[end..])
            };
            parts.push(part);
            let after = after.trim_start();
            match after.strip_prefix('.') {
                Some(next) => rest = next.trim_start(),
                None if after.is_empty() => break,
                None => return Err(invalid()),
            }
        }
        match <[String; 2]>::try_from(parts) {
            Ok([schema, name]) => Self::new(schema, name),
            Err(parts) => match <[String; 1]>::try_from(parts) {
                Ok([name]) => Self::new("public", name),
                Err(_) => Err(invalid()),
            },
        }
        .map_err(|_| invalid())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_identifiers_and_literals() {
        assert_eq!(quote_ident("my-table").unwrap(), "\"my-table\"");
        assert_eq!(quote_ident("a\"b").unwrap(), "\"a\"\"b\"");
        assert!(quote_ident("").is_err());
        assert!(quote_ident("a\0").is_err());
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b'"), "E'a\\\\b'''");
    }

    #[test]
    fn parses_names() {
        let parse = |s: &str| s.parse::<QualifiedName>().map(|n| (n.schema, n.name));
        let owned = |a: &str, b: &str| (a.to_owned(), b.to_owned());
        assert_eq!(parse("Todo").unwrap(), owned("public", "todo"));
        assert_eq!(parse("app.Todo").unwrap(), owned("app", "todo"));
        assert_eq!(
            parse("\"Order Items\"").unwrap(),
            owned("public", "Order Items")
        );
        assert_eq!(parse("\"a.b\".\"c\"\"d\"").unwrap(), owned("a.b", "c\"d"));
        assert_eq!(
            parse(" app . \"my-table\" ").unwrap(),
            owned("app", "my-table")
        );
        assert_eq!(parse("\"Zoë\"").unwrap(), owned("public", "Zoë"));
        for bad in [
            "",
            ".",
            "a.",
            ".b",
            "a.b.c",
            "\"unterminated",
            "a\"b",
            "\"\"",
            "\"a\"x",
        ] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn display_round_trips() {
        let name = QualifiedName::new("Sales", "Order \"Items\"").unwrap();
        assert_eq!(name.to_string().parse::<QualifiedName>().unwrap(), name);
        assert_eq!(
            name.regclass_literal(),
            "'\"Sales\".\"Order \"\"Items\"\"\"'"
        );
    }
}
