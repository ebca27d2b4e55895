//! The per-user CLI file: server, handle, token, sync watermark and known user names.
//!
//! Found at `$COURIER_CONFIG`, else `$XDG_CONFIG_HOME/courier/cli.toml`, else
//! `~/.config/courier/cli.toml`. Written with mode 0600: the token logs in without a password.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use courier_client::protocol::noise::PublicKey;
use serde::{Deserialize, Serialize};

use crate::error::CliError;

/// What the CLI remembers between runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CliConfig {
    /// The server the token belongs to.
    pub server: Option<String>,
    pub handle: Option<String>,
    pub user: Option<u64>,
    /// The session token, hex.
    pub token: Option<String>,
    /// The last sync watermark.
    pub watermark: Option<u64>,
    /// Against a cluster: the per-node watermarks `watermark` is the minimum of.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub watermarks: Vec<u64>,
    /// User id → handle, learned from lookups and `GET_USERS`, so each id is asked once.
    #[serde(default)]
    pub users: BTreeMap<String, String>,
    /// Server address → its public key (hex), pinned: from `--server-key` or trust on first
    /// use.
    #[serde(default)]
    pub server_keys: BTreeMap<String, String>,
}

impl CliConfig {
    /// Where the file lives.
    pub fn path() -> Result<PathBuf, CliError> {
        if let Some(p) = std::env::var_os("COURIER_CONFIG") {
            return Ok(PathBuf::from(p));
        }
        if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|x| !x.is_empty()) {
            return Ok(PathBuf::from(x).join("courier/cli.toml"));
        }
        match std::env::var_os("HOME") {
            Some(home) => Ok(PathBuf::from(home).join(".config/courier/cli.toml")),
            None => Err(CliError::NoConfigDir),
        }
    }

    /// Reads the file; a missing file is an empty config.
    pub fn load() -> Result<CliConfig, CliError> {
        let path = Self::path()?;
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text).map_err(|e| CliError::Config {
                path,
                reason: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(CliConfig::default()),
            Err(e) => Err(CliError::Config {
                path,
                reason: e.to_string(),
            }),
        }
    }

    /// Writes the file atomically (temp file, then rename). Pinned keys are written only by
    /// [`save_server_key`](Self::save_server_key), straight to the file: the file's keys are
    /// kept over this copy's, which may have been read before a key was pinned.
    pub fn save(&self) -> Result<(), CliError> {
        let path = Self::path()?;
        let mut merged = self.clone();
        if let Ok(on_disk) = Self::load() {
            merged.server_keys = on_disk.server_keys;
        }
        Self::write(&path, &merged)
    }

    fn write(path: &Path, cfg: &CliConfig) -> Result<(), CliError> {
        let path = path.to_path_buf();
        let text = toml::to_string_pretty(cfg).map_err(|e| CliError::Config {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        write_private(&path, &text).map_err(|e| CliError::Config {
            path,
            reason: e.to_string(),
        })
    }

    /// The key pinned for `server`, if any.
    pub fn server_key(&self, server: &str) -> Result<Option<PublicKey>, CliError> {
        let Some(text) = self.server_keys.get(server) else {
            return Ok(None);
        };
        PublicKey::parse(text, "the saved server key")
            .map(Some)
            .map_err(|e| CliError::Config {
                path: Self::path().unwrap_or_default(),
                reason: format!("server_keys.\"{server}\": {e}"),
            })
    }

    /// Pins `key` for `server` in the file (read, changed, written at once).
    pub fn save_server_key(server: &str, key: PublicKey) -> Result<(), CliError> {
        let mut cfg = Self::load()?;
        if cfg.server_key(server).ok().flatten() == Some(key) {
            return Ok(());
        }
        cfg.server_keys.insert(server.to_string(), key.to_string());
        Self::write(&Self::path()?, &cfg)
    }

    /// The saved token if it belongs to `server`.
    pub fn token_for(&self, server: &str) -> Option<Vec<u8>> {
        if self.server.as_deref() != Some(server) {
            return None;
        }
        self.token.as_deref().and_then(|t| hex::decode(t).ok())
    }

    /// Remembers a login.
    pub fn remember_auth(&mut self, server: &str, auth: &courier_client::protocol::AuthOk) {
        if self.server.as_deref() != Some(server) || self.user != Some(auth.user) {
            // Another account or server: the old watermark means nothing there.
            self.watermark = None;
            self.watermarks.clear();
        }
        self.server = Some(server.to_string());
        self.handle = Some(auth.handle.clone());
        self.user = Some(auth.user);
        self.token = Some(hex::encode(&auth.token));
        self.users
            .insert(auth.user.to_string(), auth.handle.clone());
    }

    /// Forgets the session.
    pub fn forget_auth(&mut self) {
        self.token = None;
        self.watermark = None;
        self.watermarks.clear();
    }

    /// Saves the client's watermark (and per-node watermarks), if it has one.
    pub fn remember_watermark(&mut self, client: &courier_client::Client) {
        if let Some(w) = client.watermark() {
            self.watermark = Some(w);
            self.watermarks = client.watermarks();
        }
    }

    /// Gives the client the saved watermark (and per-node watermarks), if any.
    pub fn restore_watermark(&self, client: &courier_client::Client) {
        if let Some(w) = self.watermark {
            client.set_watermarks(w, self.watermarks.clone());
        }
    }

    /// A user's handle if known, else `user#ID`.
    pub fn name(&self, user: u64) -> String {
        self.users
            .get(&user.to_string())
            .cloned()
            .unwrap_or_else(|| format!("user#{user}"))
    }

    /// The ids among `ids` whose handle is not known yet, each once.
    pub fn unknown(&self, ids: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let mut out: Vec<u64> = ids
            .into_iter()
            .filter(|id| *id != 0 && !self.users.contains_key(&id.to_string()))
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Remembers a user's handle.
    pub fn learn(&mut self, user: u64, handle: &str) {
        self.users.insert(user.to_string(), handle.to_string());
    }
}

fn write_private(path: &Path, text: &str) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("toml.tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(&tmp)?;
        std::io::Write::write_all(&mut file, text.as_bytes())?;
        file.sync_all()?;
    }
    std::fs::rename(tmp, path)
}
