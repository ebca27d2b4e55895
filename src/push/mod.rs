//! Push notifications for offline devices.
//!
//! ```text
//!  REGISTER_PUSH ──► Pushers ──► `pushers` (user → every device's registrations)
//!
//!  SEND (engine, thread's owner shard)
//!    └─ Gate::stage: each member but the sender with no device online (Directory), homed
//!       here, not muting the thread, with a registration ──► OutboxOp::Event merged into
//!       `push_outbox` (user → one pending row) IN THE MESSAGE'S OWN BATCH
//!       members homed on another node, not muting the thread ──► listed in the message's
//!       PUSH_BATCH to their home (`notify`), whose link thread runs Gate::stage_home:
//!       no device online there, a registration ──► the same merge, in the home's own write
//!
//!  push-notifier thread: scans `push_outbox` (bounded pages, due rows only) ──► POST
//!    <gateway>/_matrix/push/v1/notify (Matrix push gateway format) ──► outcome merged back:
//!    2xx: Settled (the row goes unless a newer event overwrote it), `rejected` keys removed;
//!    5xx, 429, timeout: Retry with exponential backoff; other 4xx: Settled, counted.
//!
//!  AUTH_OK of any device of the user ──► Gate::connected deletes the pending row (it syncs).
//! ```
//!
//! Coalescing is the row itself: one per user, overwritten by each newer message, so a
//! burst is one notification carrying the count of messages it stands for. The outbox is
//! only written when a gateway is configured (`--push-gateway`); registrations are always
//! kept, so a gateway configured later reaches devices that registered before.

mod notifier;
mod outbox;
mod pushers;

pub use notifier::{Notifier, NotifierConfig, NotifierThread, Outcome};
pub use outbox::Gate;
pub use pushers::Pushers;

use courier_protocol::ErrorCode;

/// Registrations one device may have.
pub const MAX_PER_DEVICE: usize = 10;
/// Registrations one user may have, all devices together.
pub const MAX_PER_USER: usize = 20;
/// Longest `app_id`, bytes.
pub const MAX_APP_ID: usize = 64;
/// Longest `pushkey`, bytes (APNs tokens are 64 hex digits, FCM tokens about 160 bytes,
/// Web Push endpoints a few hundred).
pub const MAX_PUSHKEY: usize = 1024;
/// Longest `platform` and `lang`, bytes.
pub const MAX_PLATFORM: usize = 16;
pub const MAX_LANG: usize = 16;
/// Longest `data` (a JSON object), bytes.
pub const MAX_DATA: usize = 1024;

/// What can go wrong with push registrations and deliveries.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("REGISTER_PUSH.{field} must be {rule}; register again with a valid one")]
    InvalidField {
        field: &'static str,
        rule: &'static str,
    },
    #[error("this device already has {max} push registrations, the most it may; unregister one (UNREGISTER_PUSH) or register one of its push keys again to replace it")]
    TooManyForDevice { max: usize },
    #[error("this account already has {max} push registrations on all its devices, the most it may; unregister one (UNREGISTER_PUSH) first")]
    TooManyForUser { max: usize },
    #[error("--push-gateway {url:?} is not usable: {why}")]
    GatewayUrl { url: String, why: &'static str },
    #[error("cannot start the push notifier thread: {0}")]
    Spawn(#[source] std::io::Error),
}

impl Error {
    /// The code a client gets for this error (`Store` is answered INTERNAL by the caller).
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidField { .. } => ErrorCode::InvalidArgument,
            Error::TooManyForDevice { .. } | Error::TooManyForUser { .. } => {
                ErrorCode::TooManyPushers
            }
            Error::Store(_) | Error::GatewayUrl { .. } | Error::Spawn(_) => ErrorCode::Internal,
        }
    }

    /// Whether the server failed (logged, answered with a generic INTERNAL) rather than the
    /// request.
    pub fn is_internal(&self) -> bool {
        self.code() == ErrorCode::Internal
    }
}
