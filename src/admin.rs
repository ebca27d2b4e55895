//! `courier admin`: offline operations on a stopped server's data directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::session::{Accounts, AuthConfig, AuthError, UserRef};
use crate::store::{self, FsyncMode, Store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{0} (the server must be stopped: `courier admin` works on its data directory offline)"
    )]
    Store(#[from] store::Error),
    #[error("{0}")]
    Accounts(#[from] AuthError),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Options of `courier admin provision`.
#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// The data directory of a stopped server.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// Accounts to create.
    #[arg(long)]
    pub users: u64,
    /// Handles are PREFIX0, PREFIX1, …
    #[arg(long, default_value = "load")]
    pub prefix: String,
    /// The one password every account gets.
    #[arg(long)]
    pub password: String,
    /// Where to write one `user_id handle token_hex` line per account.
    #[arg(long)]
    pub out: PathBuf,
    /// argon2id memory cost in KiB of the (one) password hash.
    #[arg(long, default_value_t = 19 * 1024)]
    pub argon2_m_kib: u32,
}

/// Options of `courier admin grant` and `courier admin revoke`: one account, by id or handle.
#[derive(Debug, clap::Args)]
#[command(group(clap::ArgGroup::new("account").required(true).args(["user", "handle"])))]
pub struct GrantArgs {
    /// The data directory of a stopped server.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// The account's user id (as in its AUTH_OK).
    #[arg(long)]
    pub user: Option<u64>,
    /// The account's handle.
    #[arg(long)]
    pub handle: Option<String>,
}

impl GrantArgs {
    fn target(&self) -> UserRef {
        match (&self.user, &self.handle) {
            (Some(id), _) => UserRef::Id(*id),
            (None, Some(handle)) => UserRef::Handle(handle.clone()),
            // clap's required group guarantees one of them.
            (None, None) => UserRef::Id(0),
        }
    }
}

/// Options of `courier admin list`.
#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// The data directory of a stopped server.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
}

fn open_accounts(data_dir: &Path) -> Result<(Store, Accounts), Error> {
    let store = Store::open(data_dir, FsyncMode::Always)?;
    let accounts = Accounts::new(store.clone(), AuthConfig::default())?;
    Ok((store, accounts))
}

/// Grants admin rights (ADMIN_STATS) to one account; the server reads grants at each admin
/// request. Returns a line for the operator.
pub fn grant(args: &GrantArgs) -> Result<String, Error> {
    let (store, accounts) = open_accounts(&args.data_dir)?;
    let (user, handle) = accounts.find_user(&args.target())?;
    let new = accounts.grant_admin(user)?;
    store.sync()?;
    Ok(if new {
        format!("granted admin rights to user {user} ({handle})")
    } else {
        format!("user {user} ({handle}) already has admin rights")
    })
}

/// Revokes the admin rights of one account. Returns a line for the operator.
pub fn revoke(args: &GrantArgs) -> Result<String, Error> {
    let (store, accounts) = open_accounts(&args.data_dir)?;
    let (user, handle) = accounts.find_user(&args.target())?;
    let had = accounts.revoke_admin(user)?;
    store.sync()?;
    Ok(if had {
        format!("revoked the admin rights of user {user} ({handle})")
    } else {
        format!("user {user} ({handle}) has no admin rights")
    })
}

/// One `user_id handle granted_at_unix_secs` line per admin, by user id.
pub fn list(args: &ListArgs) -> Result<String, Error> {
    let (_store, accounts) = open_accounts(&args.data_dir)?;
    Ok(accounts
        .admins()?
        .into_iter()
        .map(|(user, handle, at)| format!("{user} {handle} {}\n", at / 1_000_000))
        .collect())
}

/// Creates load-test accounts with tokens (the load generator resumes with them) and writes
/// them to `args.out`. Returns how many were created (existing handles are skipped).
pub fn provision(args: &ProvisionArgs) -> Result<u64, Error> {
    let store = Store::open(&args.data_dir, FsyncMode::Never)?;
    let accounts = Accounts::new(
        store.clone(),
        AuthConfig {
            argon2_m_kib: args.argon2_m_kib,
            ..AuthConfig::default()
        },
    )?;
    let file = std::fs::File::create(&args.out).map_err(|source| write_error(&args.out, source))?;
    let mut out = std::io::BufWriter::new(file);
    let mut failed = None;
    let made = accounts.provision(
        &args.prefix,
        args.users,
        &args.password,
        |user, handle, token| {
            if failed.is_none() {
                if let Err(e) = writeln!(out, "{user} {handle} {}", hex::encode(token)) {
                    failed = Some(e);
                }
            }
        },
    )?;
    if let Some(e) = failed {
        return Err(write_error(&args.out, e));
    }
    out.flush()
        .map_err(|source| write_error(&args.out, source))?;
    store.sync()?;
    Ok(made)
}

fn write_error(path: &Path, source: std::io::Error) -> Error {
    Error::Write {
        path: path.to_owned(),
        source,
    }
}
