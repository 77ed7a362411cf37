//! The bemi-rs worker: reads logical replication (pgoutput), attributes the application context
//! to each row change and stores it in the `changes` table, exactly once.
