//! Client settings.

use std::time::Duration;

use courier_protocol::noise::PublicKey;
use courier_protocol::session::Encryption;

use crate::backoff::BackoffPolicy;

/// How a [`Client`](crate::Client) connects, waits and reconnects.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Sent in `HELLO` so server logs can tell clients apart.
    pub client_name: String,
    /// The device name sent with `REGISTER`/`LOGIN`; the server keeps one device id per
    /// user and device name, so keep it stable across runs.
    pub device: String,
    /// How long each request waits for its reply.
    pub request_timeout: Duration,
    /// How long a TCP connect may take.
    pub connect_timeout: Duration,
    /// Reconnect automatically (resume, then sync the gap) when the connection drops.
    pub auto_reconnect: bool,
    /// Delays between reconnect attempts.
    pub backoff: BackoffPolicy,
    /// Largest frame accepted before `WELCOME` says otherwise.
    pub max_frame_len: u32,
    /// Page size used by [`Client::sync`](crate::Client::sync).
    pub sync_page: u16,
    /// Requests that may wait for replies at once on one connection; one more fails with
    /// [`Error::Session`](crate::Error::Session) until a reply comes.
    pub max_outstanding: usize,
    /// The transport: the server's pinned key (the usual choice; `courier keys show` on the
    /// server prints it), trust on first use, or plaintext (the default, which a server
    /// refuses unless it runs with `--insecure-plaintext`). With trust on first use the key
    /// the server proves is pinned for the client's reconnects to that address (XX on first
    /// contact, IK after); read [`Client::server_key`](crate::Client::server_key) and pin it
    /// in the configuration from then on.
    pub encryption: Encryption,
    /// Pushes held back while a catch-up sync runs (they come out after its backlog). Past
    /// this bound the oldest held push is dropped and the catch-up syncs again from the
    /// watermark it just saved, which returns what was dropped; after
    /// [`MAX_CATCH_UP_ROUNDS`] such rounds, what is still dropped stays above the saved
    /// watermark and comes with the next sync. Nothing is lost; at least 1.
    pub max_held_pushes: usize,
}

/// The default of [`ClientConfig::max_held_pushes`].
pub const DEFAULT_MAX_HELD_PUSHES: usize = 4096;
/// Syncs one catch-up runs at most when held pushes were dropped (see
/// [`ClientConfig::max_held_pushes`]); past them, what is still dropped stays above the saved
/// watermark for the next sync.
pub const MAX_CATCH_UP_ROUNDS: usize = 8;

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            client_name: concat!("courier-client/", env!("CARGO_PKG_VERSION")).to_string(),
            device: "default".to_string(),
            request_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(5),
            auto_reconnect: false,
            backoff: BackoffPolicy::default(),
            max_frame_len: courier_protocol::MAX_FRAME_LEN,
            sync_page: 500,
            max_outstanding: courier_protocol::session::DEFAULT_MAX_OUTSTANDING,
            encryption: Encryption::Plaintext,
            max_held_pushes: DEFAULT_MAX_HELD_PUSHES,
        }
    }
}

impl ClientConfig {
    /// The defaults with automatic reconnect switched on.
    pub fn reconnecting() -> Self {
        Self {
            auto_reconnect: true,
            ..Self::default()
        }
    }

    /// Sets the device name.
    pub fn with_device(mut self, device: impl Into<String>) -> Self {
        self.device = device.into();
        self
    }

    /// Sets the per-request timeout.
    pub fn with_request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// What each connection's [`Session`](courier_protocol::Session) is made with.
    pub(crate) fn session_config(&self) -> courier_protocol::SessionConfig {
        courier_protocol::SessionConfig {
            client_name: self.client_name.clone(),
            max_frame_len: self.max_frame_len,
            max_outstanding: self.max_outstanding,
            encryption: self.encryption,
        }
    }

    /// Pins the server's key: encrypted, and only to the server holding it.
    pub fn with_server_key(mut self, key: PublicKey) -> Self {
        self.encryption = Encryption::Pinned(key);
        self
    }

    /// Sets the transport (see [`ClientConfig::encryption`]).
    pub fn with_encryption(mut self, encryption: Encryption) -> Self {
        self.encryption = encryption;
        self
    }
}
