//! Generating realistic row changes with context.

/// The table the benchmarks write: mixed column types and row sizes.
pub(crate) const SCHEMA: &str = "CREATE TABLE item (
    id bigserial PRIMARY KEY,
    account_id int NOT NULL,
    name text NOT NULL,
    description text NOT NULL,
    price numeric(12,2) NOT NULL,
    tags text[] NOT NULL,
    attrs jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
) WITH (autovacuum_enabled = false);";

/// A context like a web request's.
fn context(request: usize) -> String {
    format!(
        "/*Bemi {{\"user_id\":{},\"endpoint\":\"\\u002fitems\",\"method\":\"POST\",\"request_id\":\"req-{request:08}\"}} Bemi*/",
        request % 5_000
    )
}

/// Inserts `rows` rows in one tagged statement (one transaction).
pub(crate) fn insert(request: usize, rows: usize) -> String {
    format!(
        "INSERT INTO item (account_id, name, description, price, tags, attrs) \
         SELECT i % 97, 'item ' || i, repeat(md5(i::text), 1 + i % 8), (i % 10000) / 100.0, \
         ARRAY['tag' || (i % 7), 'tag' || (i % 11)], \
         jsonb_build_object('color', 'c' || (i % 5), 'weight', i % 1000, 'fragile', i % 2 = 0) \
         FROM generate_series(1, {rows}) AS i {}",
        context(request)
    )
}

/// Updates the `rows` rows from `first_id` in one tagged statement.
pub(crate) fn update(request: usize, first_id: usize, rows: usize) -> String {
    format!(
        "UPDATE item SET price = price + 1, updated_at = now() \
         WHERE id BETWEEN {first_id} AND {} {}",
        first_id + rows - 1,
        context(request)
    )
}

/// Statements producing `changes` row changes: three quarters inserts, one quarter updates, in
/// transactions of `per_transaction` rows.
pub(crate) fn mixed(changes: usize, per_transaction: usize) -> Vec<String> {
    let transactions = changes.div_ceil(per_transaction);
    let inserts = transactions - transactions / 4;
    let mut statements = Vec::with_capacity(transactions);
    for request in 0..inserts {
        statements.push(insert(request, per_transaction));
    }
    for (n, request) in (inserts..transactions).enumerate() {
        statements.push(update(request, 1 + n * per_transaction, per_transaction));
    }
    statements
}
