//! Accounts: handles, argon2id password hashes, session tokens bound to devices.
//!
//! A session token is 32 bytes, given to the client once: the first two name the partition of
//! its user (so any node of a cluster can send it to the user's home without a lookup), the
//! other 30 are random. The store keeps only its digest (BLAKE2b, 16 bytes, of all 32), so a
//! copy of the data directory cannot be used to log in.

use std::net::IpAddr;
use std::time::Instant;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use blake2::digest::consts::U16;
use blake2::{Blake2b, Digest};
use parking_lot::Mutex;

use super::limits::{Gate, Thresholds};
use super::throttle::Source;
use super::AuthError;
use crate::clock::wall_us;
use crate::cluster::{partition, Router};
use crate::store::keys::TOKEN_DIGEST;
use crate::store::{Store, TokenRecord, UserRecord};

/// The stored form of a session token.
pub type TokenDigest = [u8; TOKEN_DIGEST];

/// Bytes of a session token.
pub const TOKEN_LEN: usize = 32;
/// Longest device name, in bytes.
pub const MAX_DEVICE_NAME: usize = 64;

/// A device name is shown to people (device lists, logs): 1 to 64 bytes of printable text,
/// without control characters or the invisible ones that reorder or hide text (bidi
/// overrides, zero-width characters), and not only spaces.
fn check_device(name: &str) -> Result<(), AuthError> {
    let invisible = |c: char| matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}');
    let printable = !name.chars().any(|c| c.is_control() || invisible(c));
    if name.len() > MAX_DEVICE_NAME || name.trim().is_empty() || !printable {
        Err(AuthError::InvalidDevice)
    } else {
        Ok(())
    }
}

/// Microseconds in a day.
const DAY_US: u64 = 86_400_000_000;

#[derive(Debug, Clone)]
pub struct AuthConfig {
    /// argon2id memory cost in KiB (OWASP's minimum, 19 MiB, by default).
    pub argon2_m_kib: u32,
    pub argon2_t: u32,
    /// The authentication throttles (PROTOCOL.md section 9).
    pub limits: Thresholds,
    /// Device names one account may use (each keeps its device number for good).
    pub max_devices: u32,
    /// In a cluster: [`Accounts::provision`] creates only the accounts homed on this node.
    /// (`REGISTER`, `LOGIN` and `RESUME` reach the home node: the shard redirects them there.)
    pub router: Option<Router>,
    /// A token unused for longer than this (µs) expires (`--token-idle-days`, 90 by default).
    pub token_idle_us: u64,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            argon2_m_kib: 19 * 1024,
            argon2_t: 2,
            limits: Thresholds::default(),
            max_devices: 100,
            router: None,
            token_idle_us: 90 * DAY_US,
        }
    }
}

/// How an operator names an account: by id or by handle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserRef {
    Id(u64),
    Handle(String),
}

impl std::fmt::Display for UserRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UserRef::Id(id) => write!(f, "id {id}"),
            UserRef::Handle(h) => write!(f, "handle {h:?}"),
        }
    }
}

/// A logged-in device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authed {
    pub user: u64,
    pub device: u32,
    pub handle: String,
    /// The token to give the client (all zero after [`Accounts::resume`]: the client has it).
    pub token: [u8; TOKEN_LEN],
    pub digest: TokenDigest,
    /// Tokens this login replaced (the device's earlier ones): connections still using them
    /// are to be closed.
    pub replaced: Vec<TokenDigest>,
}

pub struct Accounts {
    store: Store,
    argon: Argon2<'static>,
    config: AuthConfig,
    gate: Gate,
    /// Serialises the writes that delete tokens with the one that refreshes a token's last use,
    /// so a refresh never brings back a token that was revoked meanwhile.
    token_writes: Mutex<()>,
}

pub fn digest(token: &[u8]) -> TokenDigest {
    Blake2b::<U16>::digest(token).into()
}

/// A new session token of `user`: its partition, then random bytes.
fn new_token(user: u64) -> [u8; TOKEN_LEN] {
    let mut token: [u8; TOKEN_LEN] = rand::random();
    partition::stamp_token(&mut token, partition::of_id(user));
    token
}

fn valid_handle(handle: &str) -> bool {
    (3..=32).contains(&handle.len())
        && handle
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_.-".contains(&b))
}

impl Accounts {
    pub fn new(store: Store, config: AuthConfig) -> Result<Self, AuthError> {
        let params = Params::new(config.argon2_m_kib, config.argon2_t, 1, None)
            .map_err(|e| AuthError::Hash(e.to_string()))?;
        Ok(Self {
            store,
            argon: Argon2::new(Algorithm::Argon2id, Version::V0x13, params),
            gate: Gate::new(&config.limits),
            token_writes: Mutex::new(()),
            config,
        })
    }

    fn hash(&self, password: &str) -> Result<String, AuthError> {
        let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
            .map_err(|e| AuthError::Hash(e.to_string()))?;
        self.argon
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Hash(e.to_string()))
    }

    fn check_password(password: &str) -> Result<(), AuthError> {
        if (8..=256).contains(&password.len()) {
            Ok(())
        } else {
            Err(AuthError::WeakPassword)
        }
    }

    /// [`register`](Self::register) for a client at `from`, counted against that address
    /// (PROTOCOL.md section 9). Slow (argon2id): call off the event loop.
    pub fn register_from(
        &self,
        handle: &str,
        password: &str,
        device: &str,
        from: IpAddr,
    ) -> Result<Authed, AuthError> {
        if !valid_handle(handle) {
            return Err(AuthError::InvalidHandle);
        }
        Self::check_password(password)?;
        check_device(device)?;
        self.gate.begin_register(Source::of(from), Instant::now())?;
        self.register(handle, password, device)
    }

    /// Creates an account and logs `device` in, unthrottled (tools and tests; clients go
    /// through [`register_from`](Self::register_from)). Slow (argon2id): call off the event
    /// loop.
    pub fn register(
        &self,
        handle: &str,
        password: &str,
        device: &str,
    ) -> Result<Authed, AuthError> {
        if !valid_handle(handle) {
            return Err(AuthError::InvalidHandle);
        }
        Self::check_password(password)?;
        check_device(device)?;
        let hash = self.hash(password)?;
        let user = self
            .store
            .create_user(handle, &hash, wall_us())
            .map_err(|e| match e {
                crate::store::Error::HandleTaken => AuthError::HandleTaken,
                other => AuthError::Store(other),
            })?;
        self.issue(user, handle, device)
    }

    /// Checks a password and logs `device` in. Slow (argon2id): call off the event loop.
    pub fn login(
        &self,
        handle: &str,
        password: &str,
        device: &str,
        from: IpAddr,
    ) -> Result<Authed, AuthError> {
        check_device(device)?;
        let from = Source::of(from);
        let user = self.store.user_id_by_handle(handle)?;
        // Charged as a failure before the (slow) check, refunded below if it succeeds.
        self.gate.begin_login(user, from, Instant::now())?;
        let record = match user {
            Some(user) => self.store.user(user)?.map(|r| (user, r)),
            None => None,
        };
        let ok = match &record {
            Some((_, rec)) => PasswordHash::new(&rec.password_hash)
                .map(|parsed| {
                    self.argon
                        .verify_password(password.as_bytes(), &parsed)
                        .is_ok()
                })
                .unwrap_or(false),
            None => {
                // Spend the same time on an unknown handle, so timing does not reveal which
                // handles exist.
                let _ = self.hash(password);
                false
            }
        };
        self.gate.end_login(user, from, ok);
        match record {
            Some((user, rec)) if ok => self.issue(user, &rec.handle, device),
            _ => Err(AuthError::BadCredentials),
        }
    }

    /// Gives `device_name` of `user` a new token, replacing the device's earlier ones (a
    /// device holds one token; the replaced ones stop working at once).
    fn issue(&self, user: u64, handle: &str, device_name: &str) -> Result<Authed, AuthError> {
        let device = self
            .store
            .device_id(user, device_name, self.config.max_devices)
            .map_err(|e| match e {
                crate::store::Error::TooManyDevices { max } => AuthError::TooManyDevices { max },
                other => AuthError::Store(other),
            })?;
        let token = new_token(user);
        let digest = digest(&token);
        let now = wall_us();
        let _writes = self.token_writes.lock();
        let mut batch = self.store.batch();
        let mut replaced = Vec::new();
        // One token per device, so this reads at most one row per device name (bounded by
        // `max_devices`), plus rows whose token compaction removed, which are dropped here.
        for old in self.store.user_tokens(user)? {
            match self.store.token(&old)? {
                Some(rec) if rec.device != device => {}
                Some(_) => {
                    batch.delete_token(user, &old);
                    replaced.push(old);
                }
                None => batch.delete_token(user, &old),
            }
        }
        batch.put_token(
            &digest,
            &TokenRecord {
                user,
                device,
                device_name: device_name.into(),
                created_at: now,
                last_used: now,
            },
        );
        self.store.commit(batch)?;
        Ok(Authed {
            user,
            device,
            handle: handle.into(),
            token,
            digest,
            replaced,
        })
    }

    /// Logs in with a session token: one digest and two point reads, no password hashing.
    /// Unknown tokens count against the source address `from` (PROTOCOL.md section 9).
    pub fn resume(&self, token: &[u8], from: IpAddr) -> Result<Authed, AuthError> {
        let from = Source::of(from);
        let now = Instant::now();
        self.gate.check_resume(from, now)?;
        let found = self.find_token(token);
        if matches!(found, Err(AuthError::InvalidToken)) {
            self.gate.resume_failed(from, now);
        }
        found
    }

    fn find_token(&self, token: &[u8]) -> Result<Authed, AuthError> {
        if token.len() != TOKEN_LEN {
            return Err(AuthError::InvalidToken);
        }
        let digest = digest(token);
        let rec = self.store.token(&digest)?.ok_or(AuthError::InvalidToken)?;
        let now = wall_us();
        if rec.expired(self.config.token_idle_us, now) {
            let _writes = self.token_writes.lock();
            let mut batch = self.store.batch();
            batch.delete_token(rec.user, &digest);
            self.store.commit_relaxed(batch)?;
            return Err(AuthError::TokenExpired {
                idle_days: self.config.token_idle_us.div_ceil(DAY_US),
            });
        }
        let user = self
            .store
            .user_at_connect(rec.user)?
            .ok_or(AuthError::InvalidToken)?;
        if now.saturating_sub(rec.last_used) > self.refresh_after() {
            self.touch(&digest, now)?;
        }
        let mut t = [0u8; TOKEN_LEN];
        t.copy_from_slice(token);
        Ok(Authed {
            user: rec.user,
            device: rec.device,
            handle: user.handle,
            token: t,
            digest,
            replaced: Vec::new(),
        })
    }

    /// How stale a token's recorded last use may get: a day, or an eighth of the idle time if
    /// that is shorter. So RESUME writes at most once a day per token, and a token in use
    /// never expires.
    fn refresh_after(&self) -> u64 {
        DAY_US.min(self.config.token_idle_us / 8)
    }

    /// Records that the token `digest` was used at `now`, unless it was revoked meanwhile.
    /// Not synced: a refresh lost in a power cut only brings the expiry a little closer.
    fn touch(&self, digest: &TokenDigest, now: u64) -> Result<(), AuthError> {
        let _writes = self.token_writes.lock();
        let Some(mut rec) = self.store.token(digest)? else {
            return Ok(());
        };
        rec.last_used = now;
        let mut batch = self.store.batch();
        batch.put_token(digest, &rec);
        self.store.commit_relaxed(batch)?;
        Ok(())
    }

    /// Revokes one token.
    pub fn logout(&self, user: u64, digest: &TokenDigest) -> Result<(), AuthError> {
        let _writes = self.token_writes.lock();
        let mut batch = self.store.batch();
        batch.delete_token(user, digest);
        self.store.commit(batch)?;
        Ok(())
    }

    /// Revokes every token of `user`; returns their digests so live sessions can be closed.
    pub fn logout_all(&self, user: u64) -> Result<Vec<TokenDigest>, AuthError> {
        let _writes = self.token_writes.lock();
        let digests = self.store.user_tokens(user)?;
        let mut batch = self.store.batch();
        for d in &digests {
            batch.delete_token(user, d);
        }
        self.store.commit(batch)?;
        Ok(digests)
    }

    /// Creates `count` users named `{prefix}{i}` sharing one password, each with a token for
    /// device "load": one argon2 hash in all, so millions of load-test users take seconds.
    /// Returns (user id, handle, token) per user. Existing handles are skipped, and in a
    /// cluster so are handles homed on other nodes (each node's run creates its own).
    pub fn provision(
        &self,
        prefix: &str,
        count: u64,
        password: &str,
        mut out: impl FnMut(u64, &str, &[u8; TOKEN_LEN]),
    ) -> Result<u64, AuthError> {
        Self::check_password(password)?;
        // Every handle is the prefix plus a number: check the shortest and the longest.
        let last = count.saturating_sub(1);
        if !valid_handle(&format!("{prefix}0")) || !valid_handle(&format!("{prefix}{last}")) {
            return Err(AuthError::InvalidPrefix);
        }
        let hash = self.hash(password)?;
        let now = wall_us();
        let mut made = 0;
        let mut batch = self.store.batch();
        for i in 0..count {
            let handle = format!("{prefix}{i}");
            let home = partition::of_handle(&handle);
            if self.config.router.as_ref().is_some_and(|r| !r.owns(home))
                || self.store.user_id_by_handle(&handle)?.is_some()
            {
                continue;
            }
            let user = self.store.next_user_id(home)?;
            batch.put_user(
                user,
                &UserRecord {
                    handle: handle.clone(),
                    password_hash: hash.clone(),
                    created_at: now,
                },
            );
            batch.put_device(user, "load", 1);
            let token = new_token(user);
            batch.put_token(
                &digest(&token),
                &TokenRecord {
                    user,
                    device: 1,
                    device_name: "load".into(),
                    created_at: now,
                    last_used: now,
                },
            );
            out(user, &handle, &token);
            made += 1;
            if batch.len() >= 10_000 {
                self.store
                    .commit(std::mem::replace(&mut batch, self.store.batch()))?;
            }
        }
        self.store.commit(batch)?;
        Ok(made)
    }

    /// Whether `user` holds an admin grant. Read from the store on every call (admin requests
    /// are rare), so a grant or revocation takes effect at the next request, without a login.
    pub fn is_admin(&self, user: u64) -> Result<bool, AuthError> {
        Ok(self.store.is_admin(user)?)
    }

    /// The user a `courier admin` target names: `--user ID` or `--handle H`.
    pub fn find_user(&self, target: &UserRef) -> Result<(u64, String), AuthError> {
        let id = match target {
            UserRef::Id(id) => Some(*id),
            UserRef::Handle(handle) => self.store.user_id_by_handle(handle)?,
        };
        let record = match id {
            Some(id) => self.store.user(id)?.map(|r| (id, r.handle)),
            None => None,
        };
        record.ok_or_else(|| AuthError::UnknownUser(target.to_string()))
    }

    /// Grants admin rights to `user` (who must exist). Returns false if they had them already.
    pub fn grant_admin(&self, user: u64) -> Result<bool, AuthError> {
        if self.store.is_admin(user)? {
            return Ok(false);
        }
        let mut batch = self.store.batch();
        batch.put_admin(user, wall_us());
        self.store.commit(batch)?;
        Ok(true)
    }

    /// Revokes the admin rights of `user`. Returns false if they had none.
    pub fn revoke_admin(&self, user: u64) -> Result<bool, AuthError> {
        if !self.store.is_admin(user)? {
            return Ok(false);
        }
        let mut batch = self.store.batch();
        batch.delete_admin(user);
        self.store.commit(batch)?;
        Ok(true)
    }

    /// Every admin: (user id, handle, microseconds of the grant), by user id. A grant whose
    /// user record is missing lists an empty handle.
    pub fn admins(&self) -> Result<Vec<(u64, String, u64)>, AuthError> {
        self.store
            .admins()?
            .into_iter()
            .map(|(user, at)| {
                let handle = self.store.user(user)?.map(|r| r.handle).unwrap_or_default();
                Ok((user, handle, at))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::FsyncMode;
    use courier_protocol::ErrorCode;

    fn fast() -> AuthConfig {
        AuthConfig {
            argon2_m_kib: 256,
            argon2_t: 1,
            ..AuthConfig::default()
        }
    }

    fn accounts() -> (tempfile::TempDir, Accounts) {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), FsyncMode::Never).unwrap();
        (dir, Accounts::new(store, fast()).unwrap())
    }

    #[test]
    fn register_login_resume_logout() {
        let (_d, a) = accounts();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let reg = a.register("alice", "password1", "phone").unwrap();
        assert!(matches!(
            a.register("alice", "password1", "x"),
            Err(AuthError::HandleTaken)
        ));
        assert!(matches!(
            a.login("alice", "wrong-pass", "laptop", ip),
            Err(AuthError::BadCredentials)
        ));
        let laptop = a.login("alice", "password1", "laptop", ip).unwrap();
        assert_eq!(laptop.user, reg.user);
        assert_ne!(laptop.device, reg.device);
        assert_eq!(
            a.login("alice", "password1", "phone", ip).unwrap().device,
            reg.device
        );
        let resumed = a.resume(&laptop.token, ip).unwrap();
        assert_eq!((resumed.user, resumed.device), (laptop.user, laptop.device));
        a.logout(laptop.user, &laptop.digest).unwrap();
        assert!(matches!(
            a.resume(&laptop.token, ip),
            Err(AuthError::InvalidToken)
        ));
        // The phone's second login replaced its first token: one token is left.
        assert_eq!(a.logout_all(reg.user).unwrap().len(), 1);
        assert!(matches!(
            a.resume(&reg.token, ip),
            Err(AuthError::InvalidToken)
        ));
    }

    #[test]
    fn a_device_logging_in_again_gets_a_new_token_and_the_old_one_stops_working() {
        let (_d, a) = accounts();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let first = a.register("dora", "password1", "phone").unwrap();
        let laptop = a.login("dora", "password1", "laptop", ip).unwrap();
        let again = a.login("dora", "password1", "phone", ip).unwrap();
        assert_eq!(again.device, first.device);
        assert_eq!(again.replaced, vec![first.digest]);
        assert!(matches!(
            a.resume(&first.token, ip),
            Err(AuthError::InvalidToken)
        ));
        a.resume(&again.token, ip).unwrap();
        a.resume(&laptop.token, ip).unwrap();
        assert_eq!(a.store.user_tokens(first.user).unwrap().len(), 2);
    }

    #[test]
    fn an_idle_token_expires_and_a_used_one_is_refreshed_at_most_daily() {
        let (_d, a) = accounts();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let reg = a.register("erin", "password1", "phone").unwrap();
        let set_last_used = |at: u64| {
            let mut rec = a.store.token(&reg.digest).unwrap().unwrap();
            rec.last_used = at;
            let mut b = a.store.batch();
            b.put_token(&reg.digest, &rec);
            a.store.commit(b).unwrap();
        };
        let last_used = || a.store.token(&reg.digest).unwrap().unwrap().last_used;
        // Used an hour ago: no write.
        let hour_ago = wall_us() - 3_600_000_000;
        set_last_used(hour_ago);
        a.resume(&reg.token, ip).unwrap();
        assert_eq!(last_used(), hour_ago);
        // Used two days ago: refreshed.
        set_last_used(wall_us() - 2 * DAY_US);
        a.resume(&reg.token, ip).unwrap();
        assert!(wall_us() - last_used() < DAY_US);
        // Idle past 90 days: refused as expired, and removed.
        set_last_used(wall_us() - 91 * DAY_US);
        let err = a.resume(&reg.token, ip).unwrap_err();
        assert!(
            matches!(err, AuthError::TokenExpired { idle_days: 90 }),
            "{err}"
        );
        assert_eq!(err.code(), ErrorCode::InvalidToken);
        assert!(a.store.token(&reg.digest).unwrap().is_none());
        assert!(matches!(
            a.resume(&reg.token, ip),
            Err(AuthError::InvalidToken)
        ));
    }

    #[test]
    fn device_names_must_be_printable() {
        let (_d, a) = accounts();
        for bad in [
            "",
            "   ",
            "ph\none",
            "\u{7}",
            "\u{202E}enohp",
            "a\u{200B}b",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(
                    a.register("fay", "password1", bad),
                    Err(AuthError::InvalidDevice)
                ),
                "{bad:?}"
            );
        }
        a.register("fay", "password1", "Fay's phone (2) \u{1F4F1}")
            .unwrap();
    }

    #[test]
    fn bad_input_is_refused() {
        let (_d, a) = accounts();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(matches!(
            a.register("A!", "password1", "d"),
            Err(AuthError::InvalidHandle)
        ));
        assert!(matches!(
            a.register("bob", "short", "d"),
            Err(AuthError::WeakPassword)
        ));
        assert!(matches!(
            a.resume(b"short", ip),
            Err(AuthError::InvalidToken)
        ));
    }

    #[test]
    fn repeated_failures_are_throttled() {
        let (_d, a) = accounts();
        let ip: IpAddr = "127.0.0.2".parse().unwrap();
        a.register("carol", "password1", "d").unwrap();
        for _ in 0..5 {
            assert!(matches!(
                a.login("carol", "nope-nope", "d", ip),
                Err(AuthError::BadCredentials)
            ));
        }
        assert!(matches!(
            a.login("carol", "password1", "d", ip),
            Err(AuthError::Throttled { .. })
        ));
        // The owner, from another address, is not delayed by those failures.
        let elsewhere: IpAddr = "2001:db8::1".parse().unwrap();
        a.login("carol", "password1", "d", elsewhere).unwrap();
    }

    #[test]
    fn admin_rights_are_granted_and_revoked_by_user_id_and_read_at_each_check() {
        let (_d, a) = accounts();
        let root = a.register("root", "password1", "d").unwrap();
        let other = a.register("other", "password1", "d").unwrap();
        assert!(!a.is_admin(root.user).unwrap());
        let by_handle = a.find_user(&UserRef::Handle("root".into())).unwrap();
        assert_eq!(by_handle, (root.user, "root".to_owned()));
        assert!(a.grant_admin(root.user).unwrap());
        assert!(
            !a.grant_admin(root.user).unwrap(),
            "a second grant changes nothing"
        );
        // The same Accounts sees the grant at once: nothing is cached past a check.
        assert!(a.is_admin(root.user).unwrap());
        assert!(!a.is_admin(other.user).unwrap());
        let listed: Vec<(u64, String)> = a
            .admins()
            .unwrap()
            .into_iter()
            .map(|(u, h, _)| (u, h))
            .collect();
        assert_eq!(listed, vec![(root.user, "root".to_owned())]);
        assert!(a.revoke_admin(root.user).unwrap());
        assert!(!a.is_admin(root.user).unwrap());
        assert!(!a.revoke_admin(root.user).unwrap());
        let err = a.find_user(&UserRef::Id(999)).unwrap_err();
        assert!(matches!(err, AuthError::UnknownUser(_)), "{err}");
        assert!(a.find_user(&UserRef::Handle("nobody".into())).is_err());
    }

    #[test]
    fn provision_refuses_a_prefix_that_makes_bad_handles() {
        let (_d, a) = accounts();
        let err = a.provision("u", 5, "password1", |_, _, _| {}).unwrap_err();
        assert!(matches!(err, AuthError::InvalidPrefix), "{err}");
        assert!(err.to_string().contains("prefix"));
    }

    #[test]
    fn provision_creates_resumable_users() {
        let (_d, a) = accounts();
        let mut tokens = Vec::new();
        let made = a
            .provision("load", 50, "password1", |u, h, t| {
                tokens.push((u, h.to_string(), *t))
            })
            .unwrap();
        assert_eq!(made, 50);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for (u, h, t) in &tokens {
            let r = a.resume(t, ip).unwrap();
            assert_eq!((&r.user, &r.handle), (u, h));
        }
    }
}
