//! Which authentication attempts may go ahead: the thresholds (PROTOCOL.md section 9) and how
//! the throttles of [`throttle`](super::throttle) combine.
//!
//! * `LOGIN`: failures per (account, source address) with backoff, so an attacker's failures
//!   never delay the owner logging in from elsewhere; failures per source address across
//!   accounts, with backoff; and a global rate of failures, which bounds the password hashing
//!   an attacker with many addresses can make the auth pool do. An attempt is charged to all
//!   three *before* the password is checked and refunded if it succeeds, so concurrent attempts
//!   on the auth workers cannot slip past a limit together.
//! * `RESUME`: failures (unknown tokens) per source address, with backoff.
//! * `REGISTER`: attempts per source address per window (`--register-per-address`,
//!   `--register-window-secs`).
//!
//! A source address is an IPv4 address or an IPv6 /64 ([`Source`]).

use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::throttle::{hint_secs, Bucket, Policy, Source, Table};
use super::AuthError;

const MINUTE: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

/// Every threshold of the authentication throttles.
#[derive(Debug, Clone)]
pub struct Thresholds {
    /// Failed logins per (account, source address).
    pub login_per_account_source: Policy,
    /// Failed logins per source address, whatever the accounts.
    pub login_per_source: Policy,
    /// Failed logins per second on the whole server, and how many may come at once.
    pub login_failures_per_sec: u32,
    pub login_failures_burst: u32,
    /// Failed resumes (unknown tokens) per source address.
    pub resume_per_source: Policy,
    /// Registrations per source address.
    pub register_per_source: Policy,
    /// Keys each table keeps at most.
    pub table_cap: usize,
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            login_per_account_source: Policy::Backoff {
                free: 5,
                base: Duration::from_secs(1),
                max: 15 * MINUTE,
                reset: HOUR,
            },
            login_per_source: Policy::Backoff {
                free: 20,
                base: Duration::from_secs(1),
                max: 15 * MINUTE,
                reset: HOUR,
            },
            // Failed logins are recorded at most this fast, so 100,000 keys take 5,000 s to
            // churn through: longer than the one-hour reset, after which an evicted entry
            // would have counted nothing anyway.
            login_failures_per_sec: 20,
            login_failures_burst: 40,
            resume_per_source: Policy::Backoff {
                free: 10,
                base: Duration::from_secs(1),
                max: 15 * MINUTE,
                reset: HOUR,
            },
            register_per_source: Policy::Window {
                limit: 20,
                window: HOUR,
            },
            table_cap: 100_000,
        }
    }
}

struct LoginState {
    by_account_source: Table<(u64, Source)>,
    by_source: Table<Source>,
    global: Bucket,
}

/// The authentication throttles of one server.
pub struct Gate {
    login: Mutex<LoginState>,
    resume: Mutex<Table<Source>>,
    register: Mutex<Table<Source>>,
}

fn throttled(scope: &'static str, wait: Duration) -> AuthError {
    AuthError::Throttled {
        scope,
        retry_after_secs: hint_secs(wait),
    }
}

impl Gate {
    pub fn new(t: &Thresholds) -> Gate {
        Gate {
            login: Mutex::new(LoginState {
                by_account_source: Table::new(t.login_per_account_source, t.table_cap),
                by_source: Table::new(t.login_per_source, t.table_cap),
                global: Bucket::new(t.login_failures_per_sec, t.login_failures_burst),
            }),
            resume: Mutex::new(Table::new(t.resume_per_source, t.table_cap)),
            register: Mutex::new(Table::new(t.register_per_source, t.table_cap)),
        }
    }

    /// Admits a login attempt for `account` (`None`: no such handle) from `from` and charges
    /// it as a failure; [`end_login`](Self::end_login) refunds it if the password was right.
    pub fn begin_login(
        &self,
        account: Option<u64>,
        from: Source,
        now: Instant,
    ) -> Result<(), AuthError> {
        let mut s = self.login.lock();
        if let Some(wait) = account.and_then(|a| s.by_account_source.wait(&(a, from), now)) {
            return Err(throttled(
                "too many failed logins for this account from your address",
                wait,
            ));
        }
        if let Some(wait) = s.by_source.wait(&from, now) {
            return Err(throttled("too many failed logins from your address", wait));
        }
        if let Some(wait) = s.global.wait(now) {
            return Err(throttled(
                "too many failed logins on this server right now",
                wait,
            ));
        }
        if let Some(a) = account {
            s.by_account_source.record((a, from), now);
        }
        s.by_source.record(from, now);
        s.global.take(now);
        Ok(())
    }

    /// Settles an attempt [`begin_login`](Self::begin_login) admitted: a success clears the
    /// account's failures from that address and refunds the rest; a failure stays charged.
    pub fn end_login(&self, account: Option<u64>, from: Source, ok: bool) {
        if !ok {
            return;
        }
        let mut s = self.login.lock();
        if let Some(a) = account {
            s.by_account_source.forget(&(a, from));
        }
        s.by_source.refund(&from);
        s.global.give_back();
    }

    /// Whether `from` may try a RESUME now.
    pub fn check_resume(&self, from: Source, now: Instant) -> Result<(), AuthError> {
        match self.resume.lock().wait(&from, now) {
            Some(wait) => Err(throttled(
                "too many unknown session tokens from your address",
                wait,
            )),
            None => Ok(()),
        }
    }

    /// A RESUME from `from` named no valid token.
    pub fn resume_failed(&self, from: Source, now: Instant) {
        self.resume.lock().record(from, now);
    }

    /// Admits and counts a registration from `from` (every attempt that gets as far as
    /// hashing its password counts, whether or not the account is then created).
    pub fn begin_register(&self, from: Source, now: Instant) -> Result<(), AuthError> {
        let mut table = self.register.lock();
        if let Some(wait) = table.wait(&from, now) {
            return Err(throttled(
                "too many accounts registered from your address",
                wait,
            ));
        }
        table.record(from, now);
        Ok(())
    }

    /// Keys held by the login, resume and register tables (for tests of the bound).
    #[cfg(test)]
    pub fn sizes(&self) -> [usize; 4] {
        let s = self.login.lock();
        [
            s.by_account_source.len(),
            s.by_source.len(),
            self.resume.lock().len(),
            self.register.lock().len(),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn src(last: u8) -> Source {
        Source::of(std::net::IpAddr::from([127, 0, 0, last]))
    }

    #[test]
    fn an_attackers_failures_do_not_delay_the_owner_from_another_address() {
        let gate = Gate::new(&Thresholds::default());
        let now = Instant::now();
        let mut refused = 0;
        for _ in 0..20 {
            match gate.begin_login(Some(7), src(2), now) {
                Ok(()) => gate.end_login(Some(7), src(2), false),
                Err(AuthError::Throttled {
                    retry_after_secs, ..
                }) => {
                    assert!(retry_after_secs >= 1);
                    refused += 1;
                }
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(refused, 15, "5 free failures, then a wait");
        gate.begin_login(Some(7), src(3), now).unwrap();
        gate.end_login(Some(7), src(3), true);
        assert_eq!(
            gate.sizes()[0],
            1,
            "the owner's success left nothing behind"
        );
    }

    #[test]
    fn one_address_failing_on_many_accounts_is_throttled() {
        let gate = Gate::new(&Thresholds::default());
        let now = Instant::now();
        for account in 0..20 {
            gate.begin_login(Some(account), src(2), now).unwrap();
        }
        let err = gate.begin_login(Some(99), src(2), now).unwrap_err();
        assert!(err.to_string().contains("from your address"), "{err}");
        gate.begin_login(Some(99), src(3), now).unwrap();
    }

    #[test]
    fn the_global_rate_of_failures_is_bounded_and_refills() {
        let gate = Gate::new(&Thresholds {
            login_failures_per_sec: 2,
            login_failures_burst: 4,
            ..Thresholds::default()
        });
        let now = Instant::now();
        for i in 0..4 {
            gate.begin_login(None, src(10 + i), now).unwrap();
        }
        let err = gate.begin_login(None, src(50), now).unwrap_err();
        assert!(
            matches!(
                err,
                AuthError::Throttled {
                    retry_after_secs: 1,
                    ..
                }
            ),
            "{err}"
        );
        gate.begin_login(None, src(50), now + Duration::from_millis(500))
            .unwrap();
    }

    #[test]
    fn the_tables_stay_bounded_under_a_flood_of_addresses() {
        let gate = Gate::new(&Thresholds {
            table_cap: 100,
            login_failures_per_sec: 1_000_000,
            login_failures_burst: 1_000_000,
            ..Thresholds::default()
        });
        let now = Instant::now();
        for i in 0..10_000u32 {
            let from = Source::of(std::net::IpAddr::from(i.to_be_bytes()));
            let _ = gate.begin_login(Some(u64::from(i)), from, now);
            gate.resume_failed(from, now);
            let _ = gate.begin_register(from, now);
        }
        assert_eq!(gate.sizes(), [100; 4]);
    }

    #[test]
    fn failed_resumes_are_throttled_per_address() {
        let gate = Gate::new(&Thresholds::default());
        let now = Instant::now();
        for _ in 0..10 {
            gate.check_resume(src(2), now).unwrap();
            gate.resume_failed(src(2), now);
        }
        let err = gate.check_resume(src(2), now).unwrap_err();
        assert!(
            matches!(
                err,
                AuthError::Throttled {
                    retry_after_secs: 1,
                    ..
                }
            ),
            "{err}"
        );
        gate.check_resume(src(3), now).unwrap();
        gate.check_resume(src(2), now + Duration::from_secs(1))
            .unwrap();
    }

    #[test]
    fn registrations_are_counted_per_address_per_window() {
        let gate = Gate::new(&Thresholds::default());
        let now = Instant::now();
        for _ in 0..20 {
            gate.begin_register(src(2), now).unwrap();
        }
        let err = gate.begin_register(src(2), now).unwrap_err();
        assert!(
            matches!(
                err,
                AuthError::Throttled {
                    retry_after_secs: 3600,
                    ..
                }
            ),
            "{err}"
        );
        gate.begin_register(src(3), now).unwrap();
        gate.begin_register(src(2), now + HOUR).unwrap();
    }
}
