//! Connections per client address, across every shard: `--max-conns-per-addr` stops one host
//! from taking the whole connection capacity.
//!
//! An address is counted by a 32-bit keyed hash of its IPv4 address, or of the /64 of an IPv6
//! address (one host usually holds a whole /64). The key is random per process, so nobody can
//! pick addresses that share a count with someone else's; two addresses that happen to share a
//! hash only share a cap. The hash fits in the padding of [`Conn`](super::conn::Conn), which
//! keeps it to give the count back on close. Counts live in striped maps whose entries are
//! removed at zero: the maps hold at most one entry per open connection.

use std::collections::HashMap;
use std::net::IpAddr;

use parking_lot::Mutex;
use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Stripes of the count map: accepts on different shards rarely wait for each other.
const STRIPES: usize = 64;

pub struct PerAddr {
    stripes: Box<[Mutex<HashMap<u32, u32>>]>,
    seed: u64,
    /// The most connections one address may hold.
    pub max: u32,
}

impl PerAddr {
    pub fn new(max: u32) -> PerAddr {
        PerAddr {
            stripes: (0..STRIPES).map(|_| Mutex::new(HashMap::new())).collect(),
            seed: rand::random(),
            max,
        }
    }

    /// The key an address is counted under.
    pub fn key(&self, ip: IpAddr) -> u32 {
        let hash = match ip {
            IpAddr::V4(v4) => xxh3_64_with_seed(&v4.octets(), self.seed),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => xxh3_64_with_seed(&v4.octets(), self.seed),
                None => xxh3_64_with_seed(&v6.octets()[..8], self.seed),
            },
        };
        hash as u32
    }

    /// Counts one more connection of `key`; false (nothing counted) when it holds the most.
    pub fn try_add(&self, key: u32) -> bool {
        let mut counts = self.stripe(key).lock();
        let n = counts.entry(key).or_insert(0);
        if *n >= self.max {
            if *n == 0 {
                counts.remove(&key);
            }
            return false;
        }
        *n += 1;
        true
    }

    /// Gives back one connection of `key`.
    pub fn remove(&self, key: u32) {
        let mut counts = self.stripe(key).lock();
        if let Some(n) = counts.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&key);
            }
        }
    }

    /// Connections counted for `key`.
    pub fn count(&self, key: u32) -> u32 {
        self.stripe(key).lock().get(&key).copied().unwrap_or(0)
    }

    fn stripe(&self, key: u32) -> &Mutex<HashMap<u32, u32>> {
        &self.stripes[key as usize % STRIPES]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_capped_and_a_close_gives_its_place_back() {
        let per = PerAddr::new(2);
        let a = per.key("10.0.0.1".parse().unwrap());
        let b = per.key("10.0.0.2".parse().unwrap());
        assert!(per.try_add(a) && per.try_add(a));
        assert!(!per.try_add(a), "the third from one address is refused");
        assert!(per.try_add(b), "another address has its own count");
        per.remove(a);
        assert!(per.try_add(a));
        per.remove(a);
        per.remove(a);
        per.remove(b);
        assert!(
            per.stripes.iter().all(|s| s.lock().is_empty()),
            "entries go at zero: the maps hold only open connections"
        );
    }

    #[test]
    fn an_ipv6_host_is_counted_by_its_64_and_mapped_ipv4_as_ipv4() {
        let per = PerAddr::new(1);
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(per.key(one), per.key(same_64));
        assert_ne!(per.key(one), per.key(other_64));
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(per.key(v4), per.key(mapped));
    }

    #[test]
    fn a_cap_of_zero_refuses_all_and_leaves_no_entry() {
        let per = PerAddr::new(0);
        let a = per.key("10.0.0.1".parse().unwrap());
        assert!(!per.try_add(a));
        assert_eq!(per.count(a), 0);
        assert!(per.stripes.iter().all(|s| s.lock().is_empty()));
    }
}
