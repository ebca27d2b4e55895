//! The directory: which connections (devices) each online user has, across all shards.
//!
//! Shards register a connection when it authenticates and unregister it when it closes; pushes
//! look up every device of a recipient here. A user is *online* while they have at least one
//! registered connection.
//!
//! # Lock order
//!
//! The map is split into [`STRIPES`] stripes, each behind its own `RwLock`, chosen by user id.
//! A caller holds **one stripe at a time**, only inside a method of this type, and never across
//! another lock, a channel send or any I/O: every method copies what it needs out and releases
//! the stripe before returning. There is therefore no lock order to get wrong.
//!
//! # Memory
//!
//! One entry per online user: the key, and [`Devices`] (one `ConnRef` inline, a `Vec` only for
//! users with several devices online). See `size_of_entry_is_small` below.

use crate::hash::Map;
use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::RwLock;

use crate::caller::ConnRef;

/// Stripes of the map: enough that 2–64 shards rarely contend on one.
pub const STRIPES: usize = 64;

/// The online devices of one user: the common single-device case needs no allocation.
#[derive(Debug, Clone)]
enum Devices {
    One(ConnRef),
    Many(Vec<ConnRef>),
}

impl Devices {
    fn iter(&self) -> impl Iterator<Item = &ConnRef> {
        match self {
            Devices::One(c) => std::slice::from_ref(c).iter(),
            Devices::Many(v) => v.iter(),
        }
    }
}

/// Online connections by user, shared by every shard.
pub struct Directory {
    stripes: Box<[RwLock<Map<u64, Devices>>]>,
    /// Orders presence changes: taken while the user's stripe is held, so a user's changes get
    /// increasing numbers in the order they happened, whichever shards they happened on.
    change_seq: AtomicU64,
}

impl Default for Directory {
    fn default() -> Self {
        Self::new()
    }
}

impl Directory {
    pub fn new() -> Directory {
        Directory {
            stripes: (0..STRIPES).map(|_| RwLock::new(Map::default())).collect(),
            change_seq: AtomicU64::new(0),
        }
    }

    fn stripe(&self, user: u64) -> &RwLock<Map<u64, Devices>> {
        // Multiplicative hash: consecutive user ids spread over all stripes.
        let h = user.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58;
        &self.stripes[h as usize % STRIPES]
    }

    /// The next presence change number; call with the user's stripe held.
    fn next_change(&self) -> Option<u64> {
        Some(self.change_seq.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Adds `conn` as an online device of `user`. When it is the user's first (the user just
    /// came online), returns the change's sequence number (see [`Directory::change_seq`]).
    pub fn register(&self, user: u64, conn: ConnRef) -> Option<u64> {
        let mut map = self.stripe(user).write();
        match map.get_mut(&user) {
            None => {
                map.insert(user, Devices::One(conn));
                self.next_change()
            }
            Some(Devices::One(existing)) => {
                let first = *existing;
                map.insert(user, Devices::Many(vec![first, conn]));
                None
            }
            Some(Devices::Many(v)) => {
                v.push(conn);
                None
            }
        }
    }

    /// Removes `conn`. When it was the user's last device (the user just went offline),
    /// returns the change's sequence number. Removing a connection that is not registered
    /// changes nothing and returns `None`.
    pub fn unregister(&self, user: u64, conn: ConnRef) -> Option<u64> {
        let mut map = self.stripe(user).write();
        let devices = map.get_mut(&user)?;
        match devices {
            Devices::One(c) if *c == conn => {
                map.remove(&user);
                self.next_change()
            }
            Devices::One(_) => None,
            Devices::Many(v) => {
                v.retain(|c| *c != conn);
                match v.len() {
                    0 => {
                        map.remove(&user);
                        self.next_change()
                    }
                    1 => {
                        let only = v[0];
                        *devices = Devices::One(only);
                        None
                    }
                    _ => None,
                }
            }
        }
    }

    /// Appends every online connection of `user` to `out`.
    pub fn devices_into(&self, user: u64, out: &mut Vec<ConnRef>) {
        if let Some(d) = self.stripe(user).read().get(&user) {
            out.extend(d.iter().copied());
        }
    }

    /// Whether `user` is online, with the newest presence change number so far, read under the
    /// user's stripe: a change of `user` this state does not reflect has a higher number.
    pub fn presence_state(&self, user: u64) -> (bool, u64) {
        let map = self.stripe(user).read();
        (
            map.contains_key(&user),
            self.change_seq.load(Ordering::Relaxed),
        )
    }

    pub fn is_online(&self, user: u64) -> bool {
        self.stripe(user).read().contains_key(&user)
    }

    /// Users with at least one device online (sums the stripes one by one: a moment's view).
    pub fn online_users(&self) -> usize {
        self.stripes.iter().map(|s| s.read().len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn(slot: u32) -> ConnRef {
        ConnRef {
            shard: 0,
            slot,
            gen: 1,
            node: 0,
        }
    }

    #[test]
    fn first_and_last_device_are_reported() {
        let d = Directory::new();
        let online = d.register(7, conn(1)).expect("first device");
        assert_eq!(d.register(7, conn(2)), None);
        assert_eq!(d.register(7, conn(3)), None);
        let mut out = Vec::new();
        d.devices_into(7, &mut out);
        assert_eq!(out, vec![conn(1), conn(2), conn(3)]);
        assert_eq!(d.unregister(7, conn(2)), None);
        assert_eq!(
            d.unregister(7, conn(9)),
            None,
            "an unknown connection is not the last one"
        );
        assert_eq!(d.unregister(7, conn(1)), None);
        assert!(d.is_online(7));
        let offline = d.unregister(7, conn(3)).expect("last device");
        assert!(
            offline > online,
            "changes are numbered in the order they happen"
        );
        assert!(!d.is_online(7));
        assert_eq!(d.unregister(7, conn(3)), None);
        assert_eq!(d.online_users(), 0);
    }

    #[test]
    fn size_of_entry_is_small() {
        // Key + value of the per-user entry, before the hash table's own control byte.
        assert!(
            size_of::<(u64, Devices)>() <= 40,
            "{}",
            size_of::<(u64, Devices)>()
        );
    }
}
