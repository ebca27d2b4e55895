//! `courier admin`: offline operations on a stopped server's data directory.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::cluster::Router;
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
    #[error("--node {spec:?}: write a node as ID=DATA_DIR, once per node of the cluster, e.g. --node node1=/srv/courier1")]
    BadNode { spec: String },
    #[error("--node {id} is given twice: list each node of the cluster once")]
    DuplicateNode { id: String },
}

/// Options of `courier admin provision`.
#[derive(Debug, clap::Args)]
pub struct ProvisionArgs {
    /// The data directory of a stopped server.
    #[arg(long, default_value = "./data")]
    pub data_dir: PathBuf,
    /// For a cluster: every node as ID=DATA_DIR (the ids of `serve --node-id` and `--peer`),
    /// repeated once per node, all of them stopped. Each account is created in its home
    /// node's data directory; the users file lists every account.
    #[arg(long = "node", value_name = "ID=DATA_DIR", conflicts_with = "data_dir")]
    pub nodes: Vec<String>,
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
///
/// With `--node`, each node's run creates the accounts whose handles are homed on it (the
/// cluster's ring over the given ids), so every user resumes on its home node; the users file
/// lists them node by node, in the same `user_id handle token_hex` format.
pub fn provision(args: &ProvisionArgs) -> Result<u64, Error> {
    let nodes = parse_nodes(&args.nodes)?;
    let file = std::fs::File::create(&args.out).map_err(|source| write_error(&args.out, source))?;
    let mut out = std::io::BufWriter::new(file);
    let mut made = 0;
    if nodes.is_empty() {
        made += provision_into(args, &args.data_dir, None, &mut out)?;
    }
    for (id, dir) in &nodes {
        let peers: Vec<(String, String)> = nodes
            .iter()
            .map(|(peer, _)| (peer.clone(), String::new()))
            .collect();
        let router = Router::new(id, &peers);
        made += provision_into(args, dir, Some(router), &mut out)?;
    }
    out.flush()
        .map_err(|source| write_error(&args.out, source))?;
    Ok(made)
}

/// `ID=DIR` specs, checked.
fn parse_nodes(specs: &[String]) -> Result<Vec<(String, PathBuf)>, Error> {
    let mut nodes: Vec<(String, PathBuf)> = Vec::with_capacity(specs.len());
    for spec in specs {
        let (id, dir) = spec
            .split_once('=')
            .filter(|(id, dir)| !id.is_empty() && !dir.is_empty())
            .ok_or_else(|| Error::BadNode { spec: spec.clone() })?;
        if nodes.iter().any(|(seen, _)| seen == id) {
            return Err(Error::DuplicateNode { id: id.to_owned() });
        }
        nodes.push((id.to_owned(), PathBuf::from(dir)));
    }
    Ok(nodes)
}

/// Provisions into the data directory `dir`; with a `router`, only the accounts homed on its
/// local node.
fn provision_into(
    args: &ProvisionArgs,
    dir: &Path,
    router: Option<Router>,
    out: &mut impl Write,
) -> Result<u64, Error> {
    let store = Store::open(dir, FsyncMode::Never)?;
    let accounts = Accounts::new(
        store.clone(),
        AuthConfig {
            argon2_m_kib: args.argon2_m_kib,
            router,
            ..AuthConfig::default()
        },
    )?;
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
    store.sync()?;
    Ok(made)
}

fn write_error(path: &Path, source: std::io::Error) -> Error {
    Error::Write {
        path: path.to_owned(),
        source,
    }
}
