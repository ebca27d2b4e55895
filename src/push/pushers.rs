//! Push registrations: one `pushers` row per user holding every device's registrations,
//! changed under one lock (registrations are rare; a read-modify-write of one small row).

use courier_protocol::RegisterPush;
use parking_lot::Mutex;

use super::{
    Error, MAX_APP_ID, MAX_DATA, MAX_LANG, MAX_PER_DEVICE, MAX_PER_USER, MAX_PLATFORM, MAX_PUSHKEY,
};
use crate::clock::wall_us;
use crate::store::{Pusher, Store};

/// The registrations of every user, for the shards (REGISTER_PUSH, logout) and the notifier
/// (keys the gateway rejected).
pub struct Pushers {
    store: Store,
    /// Serialises the read-modify-write of `pushers` rows, so the caps hold whatever shard or
    /// thread changes a user's registrations. Held only around one read and one commit.
    writes: Mutex<()>,
}

fn check(
    field: &'static str,
    value: &str,
    min: usize,
    max: usize,
    rule: &'static str,
) -> Result<(), Error> {
    let printable = !value.chars().any(char::is_control);
    if value.len() < min || value.len() > max || !printable {
        return Err(Error::InvalidField { field, rule });
    }
    Ok(())
}

/// Checks the fields of a registration (PROTOCOL.md section 9).
fn validate(f: &RegisterPush) -> Result<(), Error> {
    check(
        "app_id",
        &f.app_id,
        1,
        MAX_APP_ID,
        "1 to 64 bytes of printable text",
    )?;
    check(
        "pushkey",
        &f.pushkey,
        1,
        MAX_PUSHKEY,
        "1 to 1024 bytes of printable text",
    )?;
    check(
        "platform",
        &f.platform,
        1,
        MAX_PLATFORM,
        "1 to 16 bytes of printable text, e.g. apns, fcm or web",
    )?;
    check(
        "lang",
        &f.lang,
        0,
        MAX_LANG,
        "0 to 16 bytes of printable text, e.g. en",
    )?;
    if !f.data.is_empty() {
        let object = f.data.len() <= MAX_DATA
            && serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&f.data).is_ok();
        if !object {
            return Err(Error::InvalidField {
                field: "data",
                rule: "empty or a JSON object of at most 1024 bytes",
            });
        }
    }
    Ok(())
}

impl Pushers {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            writes: Mutex::new(()),
        }
    }

    /// Registers a push key of `device`. The same (`app_id`, `pushkey`) registered before, by
    /// this device or another of the user's, is replaced (a key belongs to one device).
    pub fn register(&self, user: u64, device: u32, f: RegisterPush) -> Result<(), Error> {
        validate(&f)?;
        let _writes = self.writes.lock();
        let mut all = self.store.pushers(user)?;
        all.retain(|p| !(p.app_id == f.app_id && p.pushkey == f.pushkey));
        if all.iter().filter(|p| p.device == device).count() >= MAX_PER_DEVICE {
            return Err(Error::TooManyForDevice {
                max: MAX_PER_DEVICE,
            });
        }
        if all.len() >= MAX_PER_USER {
            return Err(Error::TooManyForUser { max: MAX_PER_USER });
        }
        all.push(Pusher {
            device,
            app_id: f.app_id,
            pushkey: f.pushkey,
            platform: f.platform,
            lang: f.lang,
            data: f.data,
            registered_at: wall_us(),
        });
        self.write(user, all)
    }

    /// Removes the user's registration of (`app_id`, `pushkey`), if any.
    pub fn unregister(&self, user: u64, app_id: &str, pushkey: &str) -> Result<(), Error> {
        self.remove(user, |p| p.app_id == app_id && p.pushkey == pushkey)
            .map(drop)
    }

    /// Removes every registration of `device` (its token was revoked or replaced).
    pub fn forget_device(&self, user: u64, device: u32) -> Result<(), Error> {
        self.remove(user, |p| p.device == device).map(drop)
    }

    /// Removes every registration of `user` (LOGOUT_ALL).
    pub fn forget_user(&self, user: u64) -> Result<(), Error> {
        self.remove(user, |_| true).map(drop)
    }

    /// Removes the registrations of `user` with these push keys (the gateway rejected them);
    /// returns how many went.
    pub fn reject(&self, user: u64, pushkeys: &[String]) -> Result<usize, Error> {
        self.remove(user, |p| pushkeys.contains(&p.pushkey))
    }

    /// Every registration of `user`.
    pub fn of(&self, user: u64) -> Result<Vec<Pusher>, Error> {
        Ok(self.store.pushers(user)?)
    }

    /// Removes the registrations of `user` that `gone` picks; writes only if one did.
    fn remove(&self, user: u64, gone: impl Fn(&Pusher) -> bool) -> Result<usize, Error> {
        if !self.store.has_pushers(user)? {
            return Ok(0);
        }
        let _writes = self.writes.lock();
        let mut all = self.store.pushers(user)?;
        let before = all.len();
        all.retain(|p| !gone(p));
        let removed = before - all.len();
        if removed > 0 {
            self.write(user, all)?;
        }
        Ok(removed)
    }

    fn write(&self, user: u64, all: Vec<Pusher>) -> Result<(), Error> {
        let mut batch = self.store.batch();
        batch.put_pushers(user, all);
        self.store.commit(batch)?;
        Ok(())
    }
}
