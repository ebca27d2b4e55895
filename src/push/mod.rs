//! Push notifications for offline devices: the registrations (`REGISTER_PUSH`), kept per
//! user in `pushers` and removed with a device's token.

mod pushers;

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
}

impl Error {
    /// The code a client gets for this error (`Store` is answered INTERNAL by the caller).
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::InvalidField { .. } => ErrorCode::InvalidArgument,
            Error::TooManyForDevice { .. } | Error::TooManyForUser { .. } => {
                ErrorCode::TooManyPushers
            }
            Error::Store(_) => ErrorCode::Internal,
        }
    }

    /// Whether the server failed (logged, answered with a generic INTERNAL) rather than the
    /// request.
    pub fn is_internal(&self) -> bool {
        self.code() == ErrorCode::Internal
    }
}
