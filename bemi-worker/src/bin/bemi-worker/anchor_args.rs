//! The anchors stream's options, shared by `run`, `ingest` (which publish to it) and `verify`
//! (which reads it back).

use clap::Args;

/// Where seal hashes are published in NATS JetStream.
#[derive(Debug, Args)]
pub(crate) struct AnchorNatsArgs {
    /// A NATS server to publish each seal's hash to, in a JetStream stream that refuses
    /// deletion and purging (`verify` reads it back).
    #[arg(long, env = "BEMI_ANCHOR_NATS_URL", hide_env_values = true)]
    anchor_nats_url: Option<String>,
    /// The anchors' JetStream stream (created if missing).
    #[arg(long, env = "BEMI_ANCHOR_NATS_STREAM", default_value = bemi_worker::seal::DEFAULT_ANCHOR_STREAM)]
    anchor_nats_stream: String,
    /// The anchors' subject.
    #[arg(long, env = "BEMI_ANCHOR_NATS_SUBJECT", default_value = bemi_worker::seal::DEFAULT_ANCHOR_SUBJECT)]
    anchor_nats_subject: String,
}

impl AnchorNatsArgs {
    /// The stream's options, when a server is given.
    pub(crate) fn options(&self) -> Option<bemi_worker::NatsOptions> {
        self.anchor_nats_url.as_ref().map(|url| {
            let mut options = bemi_worker::NatsOptions::new(url.clone());
            options.stream = self.anchor_nats_stream.clone();
            options.subject = self.anchor_nats_subject.clone();
            options
        })
    }
}
