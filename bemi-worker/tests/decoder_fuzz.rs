//! A bounded-time mutation fuzzer for the pgoutput decoder, run by CI: valid messages of every
//! kind, mutated (bit flips, interesting bytes, huge lengths, non-UTF-8 names, truncations,
//! splices), must decode or fail with an error: never panic, never allocate what a length field
//! claims. `BEMI_FUZZ_SECONDS` sets the time (default 3). For open-ended runs with coverage
//! guidance, see `bemi-worker/fuzz` (cargo-fuzz).

use std::time::{Duration, Instant};

use bemi_worker::pgoutput::decode;

/// xorshift64*: fast, deterministic per seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound.max(1) as u64) as usize
    }
}

fn u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_be_bytes());
}

fn string(out: &mut Vec<u8>, value: &[u8]) {
    out.extend_from_slice(value);
    out.push(0);
}

/// A tuple: a NULL, an unchanged TOAST value, and text values.
fn tuple(out: &mut Vec<u8>, texts: &[&[u8]]) {
    u16(out, u16::try_from(texts.len() + 2).unwrap_or(u16::MAX));
    out.push(b'n');
    out.push(b'u');
    for text in texts {
        out.push(b't');
        u32(out, u32::try_from(text.len()).unwrap_or(u32::MAX));
        out.extend_from_slice(text);
    }
}

/// One valid message of each kind the decoder reads.
fn corpus() -> Vec<Vec<u8>> {
    let mut relation = vec![b'R'];
    u32(&mut relation, 16_384);
    string(&mut relation, b"public");
    string(&mut relation, "Tàble \"q\"".as_bytes());
    relation.push(b'f');
    u16(&mut relation, 3);
    for (flags, name, type_id) in [(1_u8, "id", 23_u32), (0, "note", 25), (0, "doc", 3802)] {
        relation.push(flags);
        string(&mut relation, name.as_bytes());
        u32(&mut relation, type_id);
        u32(&mut relation, u32::MAX);
    }
    let mut insert = vec![b'I'];
    u32(&mut insert, 16_384);
    insert.push(b'N');
    tuple(&mut insert, &[b"1", br#"{"k": [1, 2]}"#]);
    let mut update = vec![b'U'];
    u32(&mut update, 16_384);
    update.push(b'O');
    tuple(&mut update, &[b"1", b"old"]);
    update.push(b'N');
    tuple(&mut update, &[b"1", b"new"]);
    let mut delete = vec![b'D'];
    u32(&mut delete, 16_384);
    delete.push(b'K');
    tuple(&mut delete, &[b"1"]);
    let mut truncate = vec![b'T'];
    u32(&mut truncate, 2);
    truncate.push(1);
    u32(&mut truncate, 16_384);
    u32(&mut truncate, 16_385);
    let mut type_message = vec![b'Y'];
    u32(&mut type_message, 70_000);
    string(&mut type_message, b"public");
    string(&mut type_message, b"mood");
    let mut origin = vec![b'O'];
    origin.extend_from_slice(&42_u64.to_be_bytes());
    string(&mut origin, b"upstream");
    vec![
        relation,
        insert,
        update,
        delete,
        truncate,
        type_message,
        origin,
    ]
}

const INTERESTING: [u8; 12] = [
    0, 1, 0x7f, 0x80, 0xfe, 0xff, b'n', b'u', b't', b'b', b'K', b'N',
];

/// Applies 1 to 4 random mutations.
fn mutate(rng: &mut Rng, input: &[u8], corpus: &[Vec<u8>]) -> Vec<u8> {
    let mut data = input.to_vec();
    for _ in 0..=rng.below(4) {
        let at = rng.below(data.len().max(1));
        match rng.below(8) {
            0 if !data.is_empty() => data[at] ^= 1 << rng.below(8),
            1 if !data.is_empty() => data[at] = INTERESTING[rng.below(INTERESTING.len())],
            2 if data.len() >= at + 4 => {
                // A length or count claiming far more than there is.
                let huge = [0xff, 0xff, 0xff, 0xf0 | (rng.below(16) as u8)];
                data[at..at + 4].copy_from_slice(&huge);
            }
            3 => data.truncate(at),
            4 => {
                let byte = [0xc3, 0x28, 0xff, 0x00][rng.below(4)];
                data.insert(at.min(data.len()), byte);
            }
            5 if !data.is_empty() => {
                data.remove(at);
            }
            6 => {
                let other = &corpus[rng.below(corpus.len())];
                let from = rng.below(other.len());
                let to = from + rng.below(other.len() - from + 1);
                let at = at.min(data.len());
                data.splice(at..at, other[from..to].iter().copied());
            }
            _ => {
                let repeat = rng.below(64);
                let byte = INTERESTING[rng.below(INTERESTING.len())];
                let at = at.min(data.len());
                data.splice(at..at, std::iter::repeat_n(byte, repeat));
            }
        }
    }
    data
}

#[test]
fn the_decoder_survives_mutated_messages() {
    let seconds = std::env::var("BEMI_FUZZ_SECONDS")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3);
    let corpus = corpus();
    for message in &corpus {
        assert!(
            decode(message).is_ok(),
            "corpus entry {:?}",
            message[0] as char
        );
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut runs, mut errors) = (0_u64, 0_u64);
    while Instant::now() < deadline {
        for _ in 0..1_000 {
            let input = &corpus[rng.below(corpus.len())];
            let data = mutate(&mut rng, input, &corpus);
            if decode(&data).is_err() {
                errors += 1;
            }
            runs += 1;
        }
    }
    eprintln!("decoder fuzz: {runs} inputs in {seconds} s, {errors} rejected with an error");
    assert!(runs > 10_000, "only {runs} inputs");
    assert!(
        errors > 0 && errors < runs,
        "mutations must hit both outcomes"
    );
}
