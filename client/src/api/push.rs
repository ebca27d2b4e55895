//! Push notifications: this device's registrations with the server's push gateway.

use courier_protocol::{RegisterPush, UnregisterPush};

requests! {
    /// Registers a push key of this device: while none of the user's devices is connected,
    /// the server notifies it through its push gateway (Matrix push gateway API) for `app_id`.
    /// `platform` (`apns`, `fcm`, `web`, …) and `lang` are passed along; `data` is a JSON
    /// object for the gateway (empty: none). The same (`app_id`, `pushkey`) again replaces the
    /// earlier registration. `TOO_MANY_PUSHERS` past 10 per device or 20 per user. The
    /// registration goes when this device logs out or logs in again.
    pub fn register_push(app_id: &str, pushkey: &str, platform: &str, lang: &str, data: &str) -> () {
        RegisterPush {
            app_id: app_id.into(),
            pushkey: pushkey.into(),
            platform: platform.into(),
            lang: lang.into(),
            data: data.into(),
        } => Done(_) => ()
    }

    /// Removes the user's registration of (`app_id`, `pushkey`); unknown ones are ignored.
    pub fn unregister_push(app_id: &str, pushkey: &str) -> () {
        UnregisterPush { app_id: app_id.into(), pushkey: pushkey.into() } => Done(_) => ()
    }
}
