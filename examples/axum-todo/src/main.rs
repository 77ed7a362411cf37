//! Runs the todo service: `DATABASE_URL=postgres://... cargo run -p axum-todo`.
//!
//! Audit trail: run `bemi-worker setup` once and `bemi-worker run` alongside, then query
//! `bemi.changes`.

use diesel_async::SimpleAsyncConnection;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let database_url =
        std::env::var("DATABASE_URL").map_err(|_| anyhow::anyhow!("set DATABASE_URL"))?;
    let pool = axum_todo::pool(&database_url)?;
    pool.get().await?.batch_execute(axum_todo::SCHEMA).await?;
    let address = std::env::var("LISTEN").unwrap_or_else(|_| "127.0.0.1:3000".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await?;
    println!("listening on http://{address}");
    axum::serve(listener, axum_todo::app(pool))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
