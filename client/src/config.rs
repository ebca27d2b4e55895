//! Client settings.

use std::time::Duration;

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
}

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
        }
    }
}
