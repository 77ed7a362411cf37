//! Recognising write statements, the only ones that carry a context comment.

/// Whether `sql` is a statement that changes rows, and so should carry the context comment.
///
/// Writes are `INSERT`, `UPDATE`, `DELETE`, `MERGE`, `TRUNCATE`, `COPY ... FROM`, `CALL`, `DO`,
/// `EXECUTE` (of a prepared statement), `WITH` queries containing a data-modifying statement
/// anywhere (`WITH x AS (DELETE ... RETURNING *) SELECT ...` too) and `EXPLAIN ANALYZE` of any of
/// these. Leading whitespace and comments are skipped; keywords are case-insensitive; string
/// literals, quoted identifiers and dollar-quoted bodies are never mistaken for keywords.
///
/// A string of several statements (`;`-separated) is a write when any of them is.
///
/// Everything else is a read and is never tagged: `SELECT`, `VALUES`, `TABLE`, `SHOW`, `SET`,
/// `BEGIN`, `COMMIT`, `SAVEPOINT`, ... A `SELECT` calling a function that writes is a read here:
/// its rows are still captured, without context.
///
/// # Examples
///
/// ```
/// use bemi_core::is_write;
///
/// assert!(is_write("  /* note */ insert into todo (task) values ($1)"));
/// assert!(is_write("WITH gone AS (DELETE FROM todo RETURNING id) SELECT count(*) FROM gone"));
/// assert!(!is_write("SELECT 'DELETE FROM todo'"));
/// assert!(!is_write("BEGIN"));
/// ```
pub fn is_write(sql: &str) -> bool {
    let mut tokens = Tokens::new(sql);
    loop {
        // A string of several statements writes when any of them does: `SET LOCAL ...;
        // INSERT ...` must carry the context.
        if classify(&mut tokens) {
            return true;
        }
        if !tokens.next_statement() {
            return false;
        }
    }
}

/// Whether `sql` holds a statement that changes the shape of tables (`CREATE`, `ALTER`, `DROP`):
/// bemi records those, with the context in force, in `bemi.schema_history`.
///
/// ```
/// use bemi_core::is_ddl;
///
/// assert!(is_ddl("ALTER TABLE todo ADD COLUMN due date"));
/// assert!(is_ddl("SET lock_timeout = '1s'; DROP TABLE old_todo"));
/// assert!(!is_ddl("INSERT INTO todo VALUES (1)"));
/// ```
pub fn is_ddl(sql: &str) -> bool {
    let mut tokens = Tokens::new(sql);
    loop {
        if matches!(tokens.next(), Some(Token::Word(first)) if is_keyword(first, &["CREATE", "ALTER", "DROP"]))
        {
            return true;
        }
        if !tokens.next_statement() {
            return false;
        }
    }
}

fn classify(tokens: &mut Tokens<'_>) -> bool {
    let Some(Token::Word(first)) = tokens.next() else {
        return false;
    };
    if is_keyword(
        first,
        &[
            "INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE", "CALL", "DO",
        ],
    ) || first.eq_ignore_ascii_case("EXECUTE")
    {
        return true;
    }
    if first.eq_ignore_ascii_case("COPY") {
        return copy_is_from(tokens);
    }
    if first.eq_ignore_ascii_case("WITH") {
        return tokens.any(|token| {
            matches!(token, Token::Word(word) if is_keyword(word, &["INSERT", "UPDATE", "DELETE", "MERGE"]))
        });
    }
    if first.eq_ignore_ascii_case("EXPLAIN") {
        return explain_analyze(tokens) && classify(tokens);
    }
    false
}

/// After `COPY`: whether the first `FROM` or `TO` outside parentheses is `FROM`.
fn copy_is_from(tokens: &mut Tokens<'_>) -> bool {
    let mut depth = 0_usize;
    for token in tokens {
        match token {
            Token::Open => depth += 1,
            Token::Close => depth = depth.saturating_sub(1),
            Token::Word(word) if depth == 0 && word.eq_ignore_ascii_case("FROM") => return true,
            Token::Word(word) if depth == 0 && word.eq_ignore_ascii_case("TO") => return false,
            _ => {}
        }
    }
    false
}

/// After `EXPLAIN`: consumes the options and says whether the statement is executed (`ANALYZE`).
fn explain_analyze(tokens: &mut Tokens<'_>) -> bool {
    let mut analyze = false;
    let mut peek = tokens.clone();
    match peek.next() {
        Some(Token::Open) => {
            *tokens = peek;
            let mut after_analyze = false;
            for token in tokens.by_ref() {
                match token {
                    Token::Close => break,
                    Token::Word(word) if is_keyword(word, &["ANALYZE", "ANALYSE"]) => {
                        analyze = true;
                        after_analyze = true;
                        continue;
                    }
                    Token::Word(word)
                        if after_analyze && is_keyword(word, &["FALSE", "OFF", "0"]) =>
                    {
                        analyze = false;
                    }
                    _ => {}
                }
                after_analyze = false;
            }
        }
        _ => loop {
            let mut peek = tokens.clone();
            match peek.next() {
                Some(Token::Word(word)) if is_keyword(word, &["ANALYZE", "ANALYSE"]) => {
                    analyze = true;
                    *tokens = peek;
                }
                Some(Token::Word(word)) if word.eq_ignore_ascii_case("VERBOSE") => {
                    *tokens = peek;
                }
                _ => break,
            }
        },
    }
    analyze
}

fn is_keyword(word: &str, keywords: &[&str]) -> bool {
    keywords
        .iter()
        .any(|keyword| word.eq_ignore_ascii_case(keyword))
}

/// The tokens that matter for classification.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Token<'a> {
    /// An unquoted word: keyword, identifier or number.
    Word(&'a str),
    /// `(`
    Open,
    /// `)`
    Close,
    /// Anything else: literals, quoted identifiers, operators, punctuation.
    Other,
}

/// A tokenizer for PostgreSQL's lexical structure, just detailed enough to find keywords.
#[derive(Clone, Debug)]
struct Tokens<'a> {
    sql: &'a str,
    at: usize,
}

impl<'a> Tokens<'a> {
    fn new(sql: &'a str) -> Self {
        Self { sql, at: 0 }
    }

    fn rest(&self) -> &'a str {
        self.sql.get(self.at..).unwrap_or_default()
    }

    /// Moves past the `;` that ends the current statement; `false` when none does.
    fn next_statement(&mut self) -> bool {
        while self.next().is_some() {}
        self.skip_trivia();
        if self.rest().starts_with(';') {
            self.at += 1;
            true
        } else {
            false
        }
    }

    /// Skips whitespace and comments (`-- ...` and nested `/* ... */`).
    fn skip_trivia(&mut self) {
        loop {
            let rest = self.rest();
            let trimmed = rest.trim_start();
            self.at += rest.len() - trimmed.len();
            if trimmed.starts_with("--") {
                self.at += trimmed.find('\n').map_or(trimmed.len(), |end| end + 1);
            } else if trimmed.starts_with("/*") {
                self.at += block_comment_len(trimmed);
            } else {
                return;
            }
        }
    }
}

impl<'a> Iterator for Tokens<'a> {
    type Item = Token<'a>;

    fn next(&mut self) -> Option<Token<'a>> {
        self.skip_trivia();
        let rest = self.rest();
        let first = rest.chars().next()?;
        if first == ';' {
            // The statement ends here (see `next_statement`).
            return None;
        }
        let (len, token) = match first {
            '(' => (1, Token::Open),
            ')' => (1, Token::Close),
            '\'' => (quoted_len(rest, '\'', false), Token::Other),
            '"' => (quoted_len(rest, '"', false), Token::Other),
            'e' | 'E' if rest[1..].starts_with('\'') => {
                (1 + quoted_len(&rest[1..], '\'', true), Token::Other)
            }
            '$' => match dollar_tag(rest) {
                Some(tag) => (dollar_quoted_len(rest, tag), Token::Other),
                None => (1 + word_len(&rest[1..]), Token::Other),
            },
            c if is_word_char(c) => {
                let len = word_len(rest);
                (len, Token::Word(&rest[..len]))
            }
            c => (c.len_utf8(), Token::Other),
        };
        self.at += len.max(1).min(rest.len());
        Some(token)
    }
}

fn is_word_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_' || c == '$'
}

fn word_len(s: &str) -> usize {
    s.find(|c: char| !is_word_char(c)).unwrap_or(s.len())
}

/// Length of a nested block comment starting at `s` (unterminated: the rest of the input).
fn block_comment_len(s: &str) -> usize {
    let bytes = s.as_bytes();
    let mut depth = 0_usize;
    let mut i = 0;
    while i + 1 < bytes.len() {
        match (bytes[i], bytes[i + 1]) {
            (b'/', b'*') => {
                depth += 1;
                i += 2;
            }
            (b'*', b'/') => {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return i;
                }
            }
            _ => i += 1,
        }
    }
    s.len()
}

/// Length of a quoted token starting at `s` (which starts with `quote`); a doubled quote is an
/// escaped quote, and with `backslash_escapes` so is `\'`.
fn quoted_len(s: &str, quote: char, backslash_escapes: bool) -> usize {
    let bytes = s.as_bytes();
    let quote = quote as u8;
    let mut i = 1;
    while i < bytes.len() {
        let b = bytes[i];
        if backslash_escapes && b == b'\\' {
            i += 2;
        } else if b == quote {
            if bytes.get(i + 1) == Some(&quote) {
                i += 2;
            } else {
                return i + 1;
            }
        } else {
            i += 1;
        }
    }
    s.len()
}

/// The tag of a dollar quote opening at `s` (`$$` or `$name$`), if `s` opens one.
fn dollar_tag(s: &str) -> Option<&str> {
    let body = &s[1..];
    let end = body.find('$')?;
    let name = &body[..end];
    let valid = name
        .chars()
        .enumerate()
        .all(|(i, c)| c == '_' || c.is_alphabetic() || (i > 0 && c.is_ascii_digit()));
    valid.then(|| &s[..end + 2])
}

fn dollar_quoted_len(s: &str, tag: &str) -> usize {
    s[tag.len()..]
        .find(tag)
        .map_or(s.len(), |end| tag.len() + end + tag.len())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn writes() {
        for sql in [
            "INSERT INTO t VALUES (1)",
            "insert into t values (1)",
            "\n\t  UPDATE t SET a = 1",
            "DELETE FROM t",
            "MERGE INTO t USING s ON t.id = s.id WHEN MATCHED THEN DELETE",
            "TRUNCATE t",
            "COPY t FROM STDIN",
            "COPY t (a, b) FROM '/tmp/x'",
            "CALL refresh_totals()",
            "DO $$ BEGIN DELETE FROM t; END $$",
            "EXECUTE insert_todo(1)",
            "WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x",
            "WITH RECURSIVE x AS (SELECT 1) UPDATE t SET a = 1",
            "WITH gone AS (DELETE FROM t RETURNING *) SELECT * FROM gone",
            "-- comment\nINSERT INTO t VALUES (1)",
            "/* a /* nested */ comment */ DELETE FROM t",
            "EXPLAIN ANALYZE DELETE FROM t",
            "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1",
            "EXPLAIN ANALYZE VERBOSE INSERT INTO t VALUES (1)",
            "SET LOCAL statement_timeout = '5s'; INSERT INTO items (name) VALUES ('x')",
            "CREATE TABLE t (id int);\nINSERT INTO t VALUES (1);",
            "SELECT ';'; SELECT $$;$$; DELETE FROM t",
            "WITH x AS (SELECT 1) SELECT * FROM x; UPDATE t SET a = 1",
        ] {
            assert!(is_write(sql), "{sql}");
        }
    }

    #[test]
    fn reads() {
        for sql in [
            "",
            "   ",
            "-- only a comment",
            "/* unterminated",
            "SELECT * FROM t",
            "select 'insert into t'",
            "SELECT \"delete\" FROM t",
            "SELECT $$ DELETE FROM t $$",
            "SELECT E'\\' DELETE FROM t'",
            "VALUES (1)",
            "TABLE t",
            "SHOW wal_level",
            "SET search_path = public",
            "BEGIN",
            "COMMIT",
            "SAVEPOINT s",
            "RELEASE SAVEPOINT s",
            "ROLLBACK TO SAVEPOINT s",
            "COPY t TO STDOUT",
            "COPY (SELECT * FROM t WHERE a IN (SELECT b FROM u)) TO STDOUT",
            "WITH x AS (SELECT 'update') SELECT * FROM x",
            "EXPLAIN DELETE FROM t",
            "EXPLAIN (ANALYZE false) DELETE FROM t",
            "EXPLAIN ANALYZE SELECT 1",
            "(SELECT 1)",
            "PREPARE p AS INSERT INTO t VALUES (1)",
            "SET a = 1; SELECT 'INSERT INTO t'; ; SHOW b;",
            "SELECT 1; -- DELETE FROM t",
        ] {
            assert!(!is_write(sql), "{sql}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(sql in any::<String>()) {
            let _ = is_write(&sql);
        }

        #[test]
        fn never_panics_on_sql_like_input(parts in prop::collection::vec(prop_oneof![
            Just("'"), Just("\""), Just("$"), Just("$$"), Just("$a$"), Just("E'"), Just("\\"),
            Just("/*"), Just("*/"), Just("--"), Just("\n"), Just("("), Just(")"), Just("WITH "),
            Just("INSERT "), Just("COPY "), Just("EXPLAIN "), Just("ANALYZE "), Just("é"), Just(" "),
        ], 0..24)) {
            let _ = is_write(&parts.concat());
        }
    }
}
