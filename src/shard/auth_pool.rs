//! The auth workers: password hashing off the event loops.
//!
//! argon2id costs tens of milliseconds by design; run on a shard it would stall every
//! connection of that shard. Shards hand `REGISTER` and `LOGIN` to this small pool through a
//! bounded channel and get the result back in their mailbox as [`ShardMsg::AuthDone`].

use std::net::IpAddr;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};

use super::mailbox::{Mailbox, ShardMsg};
use super::Faults;
use crate::caller::ConnRef;
use crate::session::{Accounts, AuthError};

/// Jobs waiting for a worker before shards refuse new ones (`LOGIN_THROTTLED`, retry later).
pub const QUEUE: usize = 4096;

/// Threads of the pool.
pub const WORKERS: usize = 2;

pub enum Job {
    Register {
        handle: String,
        password: String,
        device: String,
        from: IpAddr,
    },
    Login {
        handle: String,
        password: String,
        device: String,
        from: IpAddr,
    },
}

/// One job and where its answer goes.
pub struct AuthRequest {
    pub to: ConnRef,
    pub request_id: u32,
    pub job: Job,
}

/// Starts the workers; they exit when every sender of the returned channel is gone.
pub fn spawn(
    accounts: Arc<Accounts>,
    mailboxes: Arc<[Mailbox]>,
    faults: &Faults,
) -> std::io::Result<Sender<AuthRequest>> {
    let (tx, rx) = crossbeam_channel::bounded(QUEUE);
    for i in 0..WORKERS {
        let (accounts, mailboxes, rx): (_, _, Receiver<AuthRequest>) =
            (accounts.clone(), mailboxes.clone(), rx.clone());
        let panic_on_register = faults.panic_on_register.clone();
        std::thread::Builder::new()
            .name(format!("auth-{i}"))
            .spawn(move || {
                for req in rx {
                    // A job holds no state of the worker's, so a panic in one costs only its
                    // answer (INTERNAL, logged). A dying worker would leave REGISTER and
                    // LOGIN waiting forever once the last one was gone.
                    let result = std::panic::catch_unwind(AssertUnwindSafe(|| match &req.job {
                        Job::Register {
                            handle,
                            password,
                            device,
                            from,
                        } => {
                            if panic_on_register.as_deref() == Some(handle.as_str()) {
                                panic!("fault injection: REGISTER of {handle}");
                            }
                            accounts.register_from(handle, password, device, *from)
                        }
                        Job::Login {
                            handle,
                            password,
                            device,
                            from,
                        } => accounts.login(handle, password, device, *from),
                    }))
                    .unwrap_or_else(|panic| {
                        tracing::error!(
                            "an authentication job panicked: {}; answered INTERNAL",
                            super::panic_message(&*panic)
                        );
                        Err(AuthError::Internal)
                    });
                    if let Some(mailbox) = mailboxes.get(req.to.shard as usize) {
                        mailbox.send_blocking(ShardMsg::AuthDone {
                            to: req.to,
                            request_id: req.request_id,
                            result,
                        });
                    }
                }
            })?;
    }
    Ok(tx)
}
