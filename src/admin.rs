//! `courier admin`: offline operations on a stopped server's data directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::session::{Accounts, AuthConfig, AuthError};
use crate::store::{self, FsyncMode, Store};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] store::Error),
    #[error("cannot provision: {0}")]
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
