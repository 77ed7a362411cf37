//! [`AuditKey`]: a model's primary-key value, written the way the `primary_key` column stores it.
//!
//! The worker stores the text PostgreSQL prints for a key value (`7`, `b3c5...-...`, `t`), and
//! for a composite key a JSON array of those texts (`["7","2024-01-01"]`). A Rust key value is
//! turned into exactly that text, so history lookups use the `(table, primary_key)` index.

use serde_json::Value;

/// One column of a primary key: its value printed as PostgreSQL prints it.
pub trait KeyPart {
    /// The text PostgreSQL's output function gives for this value.
    fn key_text(&self) -> String;
}

macro_rules! display_key_part {
    ($($type:ty),*) => {$(
        impl KeyPart for $type {
            fn key_text(&self) -> String {
                self.to_string()
            }
        }
    )*};
}

display_key_part!(i16, i32, i64, String, str, uuid::Uuid, chrono::NaiveDate);

/// `boolean` prints as `t` / `f`.
impl KeyPart for bool {
    fn key_text(&self) -> String {
        if *self { "t" } else { "f" }.to_owned()
    }
}

impl<T: KeyPart + ?Sized> KeyPart for &T {
    fn key_text(&self) -> String {
        (**self).key_text()
    }
}

/// A whole primary-key value: one [`KeyPart`], or a tuple of them for a composite key (in the
/// key's column order).
///
/// # Examples
///
/// ```
/// use bemi_core::AuditKey;
///
/// assert_eq!(7_i64.to_stored_key(), "7");
/// assert_eq!((7_i32, "eu").to_stored_key(), r#"["7","eu"]"#);
/// ```
pub trait AuditKey {
    /// The texts of the key's columns, in key order.
    fn key_texts(&self) -> Vec<String>;

    /// The key as the `primary_key` column stores it.
    fn to_stored_key(&self) -> String {
        let mut texts = self.key_texts();
        if texts.len() == 1 {
            texts.pop().unwrap_or_default()
        } else {
            Value::from(texts).to_string()
        }
    }
}

macro_rules! single_audit_key {
    ($($type:ty),*) => {$(
        impl AuditKey for $type {
            fn key_texts(&self) -> Vec<String> {
                vec![self.key_text()]
            }
        }
    )*};
}

single_audit_key!(
    i16,
    i32,
    i64,
    bool,
    String,
    &str,
    uuid::Uuid,
    chrono::NaiveDate
);

macro_rules! tuple_audit_key {
    ($(($($part:ident),+)),*) => {$(
        impl<$($part: KeyPart),+> AuditKey for ($($part,)+) {
            #[allow(non_snake_case)]
            fn key_texts(&self) -> Vec<String> {
                let ($($part,)+) = self;
                vec![$($part.key_text()),+]
            }
        }
    )*};
}

tuple_audit_key!((A, B), (A, B, C), (A, B, C, D));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_written_as_postgres_prints_them() {
        assert_eq!((-3_i16).to_stored_key(), "-3");
        assert_eq!(true.to_stored_key(), "t");
        assert_eq!(String::from("a \"b\"").to_stored_key(), "a \"b\"");
        let id = uuid::Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef);
        assert_eq!(id.to_stored_key(), "01234567-89ab-cdef-0123-456789abcdef");
        let day = chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap();
        assert_eq!(day.to_stored_key(), "2024-02-29");
        assert_eq!(
            (1_i64, "x\"y", false).to_stored_key(),
            r#"["1","x\"y","f"]"#
        );
    }
}
