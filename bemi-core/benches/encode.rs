//! CPU cost of tagging a write with a typical request context.
//!
//! `cargo bench -p bemi-core --bench encode`

#![allow(missing_docs, clippy::unwrap_used)]

use std::hint::black_box;

use bemi_core::{CommentEncoder, Context, is_write};
use criterion::{Criterion, criterion_group, criterion_main};
use serde_json::json;

fn typical_context() -> Context {
    Context::try_from(json!({
        "user_id": 187234,
        "endpoint": "/todo",
        "method": "POST",
        "request_id": "8f14e45f-ceea-467f-a0e6-ab8f0d6e3b2c",
        "params": {"task": "Sleep", "done": false}
    }))
    .unwrap()
}

const INSERT: &str = r#"INSERT INTO "todo" ("task", "done") VALUES ($1, $2) RETURNING "todo"."id", "todo"."task", "todo"."done""#;

fn encode(c: &mut Criterion) {
    let encoder = CommentEncoder::default();
    let context = typical_context();
    c.bench_function("comment for a typical context", |b| {
        b.iter(|| encoder.comment(black_box(&context)));
    });
    c.bench_function("tag an INSERT (detect + encode + append)", |b| {
        b.iter(|| encoder.tag(black_box(INSERT), black_box(&context)));
    });
    c.bench_function("is_write on an INSERT", |b| {
        b.iter(|| is_write(black_box(INSERT)))
    });
    c.bench_function("is_write on a WITH ... SELECT", |b| {
        b.iter(|| {
            is_write(black_box(
                "WITH recent AS (SELECT * FROM todo WHERE done) SELECT count(*) FROM recent",
            ))
        })
    });
}

criterion_group!(benches, encode);
criterion_main!(benches);
