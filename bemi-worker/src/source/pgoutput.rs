//! Decoder for the pgoutput messages (protocol version 1) that `pgwire-replication` forwards
//! raw: Relation, Type, Origin, Insert, Update, Delete and Truncate.
//!
//! Every read is bounds-checked: malformed input gives a [`DecodeError`], never a panic.
//! Values borrow from the input.

use std::fmt;

/// Why a message could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("pgoutput {message}: {problem}")]
pub struct DecodeError {
    message: &'static str,
    problem: String,
}

impl DecodeError {
    fn new(message: &'static str, problem: impl Into<String>) -> Self {
        Self {
            message,
            problem: problem.into(),
        }
    }
}

/// A decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message<'a> {
    /// Describes a relation; precedes the first change of the relation in a session and is
    /// re-sent after the relation changes.
    Relation(Relation),
    /// Describes a non-built-in type used by a relation's columns.
    Type {
        /// The type's OID.
        id: u32,
        /// The type's schema.
        namespace: String,
        /// The type's name.
        name: String,
    },
    /// The origin of a replicated transaction.
    Origin {
        /// The origin's name.
        name: String,
    },
    /// A row was inserted.
    Insert {
        /// The relation.
        relation_id: u32,
        /// The new row.
        new: Tuple<'a>,
    },
    /// A row was updated.
    Update {
        /// The relation.
        relation_id: u32,
        /// The old row: the whole row with `REPLICA IDENTITY FULL` (`O`), only the key columns
        /// when the key changed (`K`), absent otherwise.
        old: Option<Tuple<'a>>,
        /// Whether `old` holds only the key columns.
        old_is_key: bool,
        /// The new row.
        new: Tuple<'a>,
    },
    /// A row was deleted.
    Delete {
        /// The relation.
        relation_id: u32,
        /// The old row (whole with `REPLICA IDENTITY FULL`, else key columns).
        old: Tuple<'a>,
        /// Whether `old` holds only the key columns.
        old_is_key: bool,
    },
    /// Relations were truncated.
    Truncate {
        /// The truncated relations.
        relation_ids: Vec<u32>,
        /// `CASCADE` was given.
        cascade: bool,
        /// `RESTART IDENTITY` was given.
        restart_identity: bool,
    },
    /// A message kind this decoder does not interpret (e.g. Begin/Commit/Message, which
    /// `pgwire-replication` decodes itself, or streaming messages of later protocol versions).
    Other {
        /// The message's tag byte.
        tag: u8,
    },
}

/// A relation as described by a Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    /// The relation's OID.
    pub id: u32,
    /// Its schema.
    pub namespace: String,
    /// Its name.
    pub name: String,
    /// Its replica identity setting (`d`, `n`, `f` or `i`).
    pub replica_identity: u8,
    /// Its columns, in order.
    pub columns: Vec<Column>,
}

/// A column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// Whether the column is part of the replica identity key.
    pub is_key: bool,
    /// The column's name.
    pub name: String,
    /// The OID of the column's type.
    pub type_id: u32,
    /// The type modifier.
    pub type_modifier: i32,
}

/// The column values of a row.
#[derive(Clone, PartialEq, Eq)]
pub struct Tuple<'a> {
    /// The values, one per column of the relation.
    pub values: Vec<Value<'a>>,
}

impl fmt::Debug for Tuple<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.values).finish()
    }
}

/// One column value of a [`Tuple`].
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Value<'a> {
    /// SQL NULL.
    Null,
    /// An unchanged TOASTed value that the server did not send.
    UnchangedToast,
    /// A value in the type's text format.
    Text(&'a [u8]),
    /// A value in the type's binary format (only with the `binary` option, which bemi does not
    /// request).
    Binary(&'a [u8]),
}

impl fmt::Debug for Value<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("NULL"),
            Value::UnchangedToast => f.write_str("UNCHANGED-TOAST"),
            Value::Text(text) => write!(f, "{:?}", String::from_utf8_lossy(text)),
            Value::Binary(bytes) => write!(f, "binary {bytes:02x?}"),
        }
    }
}

/// Decodes one pgoutput message (the whole `XLogData` payload, tag byte first).
///
/// # Errors
///
/// A [`DecodeError`] when the message is empty, truncated or malformed.
pub fn decode(data: &[u8]) -> Result<Message<'_>, DecodeError> {
    let mut reader = Reader::new(data, "message");
    let tag = reader.u8()?;
    let message = match tag {
        b'R' => decode_relation(Reader::new(reader.rest(), "Relation"))?,
        b'Y' => {
            let mut reader = Reader::new(reader.rest(), "Type");
            Message::Type {
                id: reader.u32()?,
                namespace: reader.string()?,
                name: reader.string()?,
            }
        }
        b'O' => {
            let mut reader = Reader::new(reader.rest(), "Origin");
            let _origin_lsn = reader.u64()?;
            Message::Origin {
                name: reader.string()?,
            }
        }
        b'I' => {
            let mut reader = Reader::new(reader.rest(), "Insert");
            let relation_id = reader.u32()?;
            reader.expect(b'N')?;
            Message::Insert {
                relation_id,
                new: reader.tuple()?,
            }
        }
        b'U' => {
            let mut reader = Reader::new(reader.rest(), "Update");
            let relation_id = reader.u32()?;
            let (old, old_is_key) = match reader.u8()? {
                kind @ (b'K' | b'O') => {
                    let old = reader.tuple()?;
                    reader.expect(b'N')?;
                    (Some(old), kind == b'K')
                }
                b'N' => (None, false),
                other => {
                    return Err(DecodeError::new(
                        "Update",
                        format!("unexpected tuple kind {:?}", char::from(other)),
                    ));
                }
            };
            Message::Update {
                relation_id,
                old,
                old_is_key,
                new: reader.tuple()?,
            }
        }
        b'D' => {
            let mut reader = Reader::new(reader.rest(), "Delete");
            let relation_id = reader.u32()?;
            let old_is_key = match reader.u8()? {
                b'K' => true,
                b'O' => false,
                other => {
                    return Err(DecodeError::new(
                        "Delete",
                        format!("unexpected tuple kind {:?}", char::from(other)),
                    ));
                }
            };
            Message::Delete {
                relation_id,
                old: reader.tuple()?,
                old_is_key,
            }
        }
        b'T' => {
            let mut reader = Reader::new(reader.rest(), "Truncate");
            let count = reader.u32()?;
            let options = reader.u8()?;
            let mut relation_ids = Vec::with_capacity(reader.capacity_for(count, 4));
            for _ in 0..count {
                relation_ids.push(reader.u32()?);
            }
            Message::Truncate {
                relation_ids,
                cascade: options & 1 != 0,
                restart_identity: options & 2 != 0,
            }
        }
        tag => Message::Other { tag },
    };
    Ok(message)
}

fn decode_relation(mut reader: Reader<'_>) -> Result<Message<'_>, DecodeError> {
    let id = reader.u32()?;
    let namespace = reader.string()?;
    let name = reader.string()?;
    let replica_identity = reader.u8()?;
    let count = reader.u16()?;
    let mut columns = Vec::with_capacity(reader.capacity_for(u32::from(count), 10));
    for _ in 0..count {
        let flags = reader.u8()?;
        columns.push(Column {
            is_key: flags & 1 != 0,
            name: reader.string()?,
            type_id: reader.u32()?,
            type_modifier: reader.i32()?,
        });
    }
    Ok(Message::Relation(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    }))
}

/// A bounds-checked reader over a message's bytes.
struct Reader<'a> {
    data: &'a [u8],
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], message: &'static str) -> Self {
        Self { data, message }
    }

    fn rest(&self) -> &'a [u8] {
        self.data
    }

    fn truncated(&self, what: &str) -> DecodeError {
        DecodeError::new(self.message, format!("truncated while reading {what}"))
    }

    fn take(&mut self, len: usize, what: &str) -> Result<&'a [u8], DecodeError> {
        if self.data.len() < len {
            return Err(self.truncated(what));
        }
        let (head, tail) = self.data.split_at(len);
        self.data = tail;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, what)?;
        let mut array = [0; N];
        array.copy_from_slice(bytes);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>("a byte")?[0])
    }

    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array("an int16")?))
    }

    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array("an int32")?))
    }

    fn i32(&mut self) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array("an int32")?))
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array("an int64")?))
    }

    fn expect(&mut self, expected: u8) -> Result<(), DecodeError> {
        let found = self.u8()?;
        if found == expected {
            Ok(())
        } else {
            Err(DecodeError::new(
                self.message,
                format!(
                    "expected {:?}, found {:?}",
                    char::from(expected),
                    char::from(found)
                ),
            ))
        }
    }

    /// A NUL-terminated string (names are UTF-8 on UTF-8 servers; anything else is replaced).
    fn string(&mut self) -> Result<String, DecodeError> {
        let end = self
            .data
            .iter()
            .position(|&byte| byte == 0)
            .ok_or_else(|| self.truncated("a string"))?;
        let text = String::from_utf8_lossy(&self.data[..end]).into_owned();
        self.data = &self.data[end + 1..];
        Ok(text)
    }

    /// A capacity to reserve for `count` items of at least `min_size` bytes each, bounded by
    /// what the remaining input can hold (so a hostile count cannot allocate much).
    fn capacity_for(&self, count: u32, min_size: usize) -> usize {
        usize::try_from(count)
            .unwrap_or(usize::MAX)
            .min(self.data.len() / min_size.max(1))
    }

    fn tuple(&mut self) -> Result<Tuple<'a>, DecodeError> {
        let count = self.u16()?;
        let mut values = Vec::with_capacity(self.capacity_for(u32::from(count), 1));
        for _ in 0..count {
            let value = match self.u8()? {
                b'n' => Value::Null,
                b'u' => Value::UnchangedToast,
                kind @ (b't' | b'b') => {
                    let len =
                        usize::try_from(self.u32()?).map_err(|_| self.truncated("a value"))?;
                    let bytes = self.take(len, "a value")?;
                    if kind == b't' {
                        Value::Text(bytes)
                    } else {
                        Value::Binary(bytes)
                    }
                }
                other => {
                    return Err(DecodeError::new(
                        self.message,
                        format!("unknown column value kind {:?}", char::from(other)),
                    ));
                }
            };
            values.push(value);
        }
        Ok(Tuple { values })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    /// Builds pgoutput messages for tests.
    #[derive(Default)]
    struct Builder(Vec<u8>);

    impl Builder {
        fn tag(mut self, tag: u8) -> Self {
            self.0.push(tag);
            self
        }
        fn u8(mut self, value: u8) -> Self {
            self.0.push(value);
            self
        }
        fn u16(mut self, value: u16) -> Self {
            self.0.extend_from_slice(&value.to_be_bytes());
            self
        }
        fn u32(mut self, value: u32) -> Self {
            self.0.extend_from_slice(&value.to_be_bytes());
            self
        }
        fn u64(mut self, value: u64) -> Self {
            self.0.extend_from_slice(&value.to_be_bytes());
            self
        }
        fn string(mut self, value: &str) -> Self {
            self.0.extend_from_slice(value.as_bytes());
            self.0.push(0);
            self
        }
        fn text(self, value: &str) -> Self {
            let mut builder = self.u8(b't').u32(u32::try_from(value.len()).unwrap());
            builder.0.extend_from_slice(value.as_bytes());
            builder
        }
        fn build(self) -> Vec<u8> {
            self.0
        }
    }

    fn relation() -> Vec<u8> {
        Builder::default()
            .tag(b'R')
            .u32(16_384)
            .string("public")
            .string("Order Items")
            .u8(b'f')
            .u16(2)
            .u8(1)
            .string("id")
            .u32(23)
            .u32(u32::MAX) // typmod -1
            .u8(0)
            .string("note")
            .u32(25)
            .u32(u32::MAX)
            .build()
    }

    /// Every proper prefix of a valid message is an error, never a panic or a success.
    fn assert_truncations_fail(message: &[u8]) {
        for len in 0..message.len() {
            assert!(
                decode(&message[..len]).is_err(),
                "prefix of {len} bytes decoded"
            );
        }
        assert!(decode(message).is_ok());
    }

    #[test]
    fn relation_message() {
        let message = relation();
        assert_eq!(
            decode(&message).unwrap(),
            Message::Relation(Relation {
                id: 16_384,
                namespace: "public".into(),
                name: "Order Items".into(),
                replica_identity: b'f',
                columns: vec![
                    Column {
                        is_key: true,
                        name: "id".into(),
                        type_id: 23,
                        type_modifier: -1
                    },
                    Column {
                        is_key: false,
                        name: "note".into(),
                        type_id: 25,
                        type_modifier: -1
                    },
                ],
            })
        );
        assert_truncations_fail(&message);
    }

    #[test]
    fn insert_message() {
        let message = Builder::default()
            .tag(b'I')
            .u32(7)
            .u8(b'N')
            .u16(3)
            .text("42")
            .u8(b'n')
            .u8(b'u')
            .build();
        assert_eq!(
            decode(&message).unwrap(),
            Message::Insert {
                relation_id: 7,
                new: Tuple {
                    values: vec![Value::Text(b"42"), Value::Null, Value::UnchangedToast]
                },
            }
        );
        assert_truncations_fail(&message);
    }

    #[test]
    fn update_messages_with_and_without_old_rows() {
        let full = Builder::default()
            .tag(b'U')
            .u32(7)
            .u8(b'O')
            .u16(1)
            .text("a")
            .u8(b'N')
            .u16(1)
            .text("b")
            .build();
        assert_eq!(
            decode(&full).unwrap(),
            Message::Update {
                relation_id: 7,
                old: Some(Tuple {
                    values: vec![Value::Text(b"a")]
                }),
                old_is_key: false,
                new: Tuple {
                    values: vec![Value::Text(b"b")]
                },
            }
        );
        assert_truncations_fail(&full);

        let new_only = Builder::default()
            .tag(b'U')
            .u32(7)
            .u8(b'N')
            .u16(1)
            .text("b")
            .build();
        assert!(matches!(
            decode(&new_only).unwrap(),
            Message::Update { old: None, .. }
        ));
        assert_truncations_fail(&new_only);

        let key = Builder::default()
            .tag(b'U')
            .u32(7)
            .u8(b'K')
            .u16(1)
            .text("1")
            .u8(b'N')
            .u16(1)
            .text("2")
            .build();
        assert!(matches!(
            decode(&key).unwrap(),
            Message::Update {
                old_is_key: true,
                ..
            }
        ));

        let bad_kind = Builder::default().tag(b'U').u32(7).u8(b'X').build();
        assert!(decode(&bad_kind).is_err());
    }

    #[test]
    fn delete_message() {
        let message = Builder::default()
            .tag(b'D')
            .u32(9)
            .u8(b'O')
            .u16(1)
            .text("x")
            .build();
        assert_eq!(
            decode(&message).unwrap(),
            Message::Delete {
                relation_id: 9,
                old: Tuple {
                    values: vec![Value::Text(b"x")]
                },
                old_is_key: false,
            }
        );
        assert_truncations_fail(&message);
        let bad_kind = Builder::default().tag(b'D').u32(9).u8(b'N').u16(0).build();
        assert!(decode(&bad_kind).is_err());
    }

    #[test]
    fn truncate_message() {
        let message = Builder::default()
            .tag(b'T')
            .u32(2)
            .u8(3)
            .u32(10)
            .u32(11)
            .build();
        assert_eq!(
            decode(&message).unwrap(),
            Message::Truncate {
                relation_ids: vec![10, 11],
                cascade: true,
                restart_identity: true
            }
        );
        assert_truncations_fail(&message);
    }

    #[test]
    fn type_and_origin_messages() {
        let message = Builder::default()
            .tag(b'Y')
            .u32(99)
            .string("public")
            .string("mood")
            .build();
        assert_eq!(
            decode(&message).unwrap(),
            Message::Type {
                id: 99,
                namespace: "public".into(),
                name: "mood".into()
            }
        );
        assert_truncations_fail(&message);
        let origin = Builder::default().tag(b'O').u64(5).string("node_a").build();
        assert_eq!(
            decode(&origin).unwrap(),
            Message::Origin {
                name: "node_a".into()
            }
        );
        assert_truncations_fail(&origin);
    }

    #[test]
    fn empty_unknown_and_malformed_input() {
        assert!(decode(&[]).is_err());
        assert_eq!(decode(b"B\0\0").unwrap(), Message::Other { tag: b'B' });
        // A value claiming more bytes than there are.
        let lying = Builder::default()
            .tag(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b't')
            .u32(u32::MAX)
            .build();
        assert!(decode(&lying).is_err());
        // An unknown value kind.
        let unknown = Builder::default()
            .tag(b'I')
            .u32(1)
            .u8(b'N')
            .u16(1)
            .u8(b'z')
            .build();
        assert!(decode(&unknown).is_err());
        // A huge column count with no data allocates nothing big and fails.
        let huge = Builder::default()
            .tag(b'I')
            .u32(1)
            .u8(b'N')
            .u16(u16::MAX)
            .build();
        assert!(decode(&huge).is_err());
        let many_relations = Builder::default().tag(b'T').u32(u32::MAX).u8(0).build();
        assert!(decode(&many_relations).is_err());
    }

    #[test]
    fn non_utf8_names_are_replaced_not_rejected() {
        let mut message = Builder::default().tag(b'Y').u32(1).build();
        message.extend_from_slice(&[0xff, 0xfe, 0]);
        message.extend_from_slice(b"t\0");
        assert!(
            matches!(decode(&message).unwrap(), Message::Type { namespace, .. } if namespace == "\u{fffd}\u{fffd}")
        );
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&data);
        }

        #[test]
        fn never_panics_on_plausible_messages(
            tag in prop::sample::select(vec![b'R', b'Y', b'O', b'I', b'U', b'D', b'T']),
            body in prop::collection::vec(
                prop_oneof![Just(0_u8), Just(b'N'), Just(b'O'), Just(b'K'), Just(b't'), Just(b'n'), Just(b'u'), any::<u8>()],
                0..128,
            ),
        ) {
            let mut data = vec![tag];
            data.extend(body);
            let _ = decode(&data);
        }
    }
}
