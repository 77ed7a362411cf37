//! `trigger-cost`: server CPU per single-row INSERT with bemi's statement trigger, untagged and
//! tagged, against a table without it. Each measurement is one `DO` block running the INSERT
//! many times in one transaction (no commit or network cost), timed by the server's clock.

use crate::environment::Environment;
use crate::stats::summary;

const SCHEMA: &str = "CREATE TABLE todo (id bigserial PRIMARY KEY, task text NOT NULL, done boolean NOT NULL DEFAULT false) \
    WITH (autovacuum_enabled = false);
    CREATE TABLE todo_untracked (LIKE todo INCLUDING ALL) WITH (autovacuum_enabled = false);";

const CONTEXT: &str = r#"/*Bemi {"endpoint":"\u002ftodo","method":"POST","request_id":"8f14e45f-ceea-467f-a0e6-ab8f0d6e3b2c","user_id":187234} Bemi*/"#;

/// Microseconds per INSERT into `table`, the `DO` block tagged with a context or not.
async fn per_statement(
    env: &Environment,
    table: &str,
    tagged: bool,
    statements: u32,
) -> anyhow::Result<f64> {
    let sql = format!(
        "DO $$ BEGIN FOR i IN 1..{statements} LOOP INSERT INTO {table} (task) VALUES ('buy milk'); END LOOP; END $$ {}",
        if tagged { CONTEXT } else { "" }
    );
    let started = std::time::Instant::now();
    env.client.batch_execute(&sql).await?;
    Ok(started.elapsed().as_secs_f64() * 1e6 / f64::from(statements))
}

pub(crate) async fn run(repetitions: usize, statements: u32) -> anyhow::Result<()> {
    let env = Environment::start_tracking("trigger-cost", SCHEMA, &["todo"]).await?;
    let mut plain = Vec::new();
    let mut untagged = Vec::new();
    let mut tagged = Vec::new();
    for repetition in 0..repetitions {
        let mut order = [0, 1, 2];
        order.rotate_left(repetition % 3);
        for variant in order {
            env.client
                .batch_execute("TRUNCATE todo, todo_untracked; CHECKPOINT")
                .await?;
            match variant {
                0 => plain.push(per_statement(&env, "todo_untracked", true, statements).await?),
                1 => untagged.push(per_statement(&env, "todo", false, statements).await?),
                _ => tagged.push(per_statement(&env, "todo", true, statements).await?),
            }
        }
    }
    let extra = |values: &[f64]| -> Vec<f64> {
        values
            .iter()
            .zip(&plain)
            .map(|(value, base)| value - base)
            .collect()
    };
    println!(
        "## trigger-cost: server time per single-row INSERT, {statements} INSERTs per DO block"
    );
    println!();
    println!(
        "{}; median [min–max] of {repetitions} repetitions",
        env.machine().await?
    );
    println!();
    println!("| table | µs per INSERT | added by bemi (µs) |");
    println!("| --- | --- | --- |");
    println!("| not tracked | {} | - |", summary(&plain, 2));
    println!(
        "| tracked, statement without context | {} | {} |",
        summary(&untagged, 2),
        summary(&extra(&untagged), 2)
    );
    println!(
        "| tracked, statement with a context | {} | {} |",
        summary(&tagged, 2),
        summary(&extra(&tagged), 2)
    );
    Ok(())
}
