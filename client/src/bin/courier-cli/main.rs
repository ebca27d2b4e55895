//! `courier-cli`: one-shot commands for scripts, and an interactive chat for people.

mod chat;
mod config;
mod error;
mod oneshot;
mod output;
mod prompt;

use clap::{Parser, Subcommand};
use courier_client::protocol::noise::PublicKey;
use courier_client::protocol::session::Encryption;
use courier_client::Client;

use crate::error::CliError;

/// The server address when neither `--server`, `COURIER_SERVER` nor a saved login names one.
pub const DEFAULT_SERVER: &str = "127.0.0.1:7878";

/// Courier chat from the terminal. Without a subcommand, starts the interactive chat.
#[derive(Debug, Parser)]
#[command(name = "courier-cli", version)]
pub struct Cli {
    /// Server address (host:port). Default: the saved login's server, else 127.0.0.1:7878.
    #[arg(long, global = true, env = "COURIER_SERVER")]
    pub server: Option<String>,
    /// Print results as JSON (one document on stdout).
    #[arg(long, global = true)]
    pub json: bool,
    /// The server's public key, 64 hex digits (`courier keys show` on the server prints it).
    /// The connection is encrypted and refused if the server holds another key. Saved in
    /// cli.toml for this server, so later runs pin it without the flag.
    #[arg(long, global = true, env = "COURIER_SERVER_KEY")]
    pub server_key: Option<String>,
    /// First contact with a server whose key you do not have: accept the key it presents,
    /// print it and save it for this server (check it with the operator). Later runs pin it.
    #[arg(long, global = true, conflicts_with = "server_key")]
    pub trust_on_first_use: bool,
    /// Plain TCP, for a server run with --insecure-plaintext (local benchmarks only).
    #[arg(long, global = true, conflicts_with_all = ["server_key", "trust_on_first_use"])]
    pub insecure_plaintext: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create an account and save the session.
    Register {
        handle: String,
        /// Prompted for when not given.
        #[arg(long, env = "COURIER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Log in and save the session token to the config file.
    Login {
        handle: String,
        /// Prompted for when not given.
        #[arg(long, env = "COURIER_PASSWORD", hide_env_values = true)]
        password: Option<String>,
    },
    /// Revoke this device's token and forget it.
    Logout,
    /// Send a text message to a user (direct thread) or a thread.
    Send {
        /// The recipient's handle.
        #[arg(long, conflicts_with = "thread", required_unless_present = "thread")]
        to: Option<String>,
        /// The thread id.
        #[arg(long)]
        thread: Option<u64>,
        /// Reply to (quote) this message of the same thread.
        #[arg(long, value_name = "MESSAGE")]
        reply_to: Option<u64>,
        /// The text; several words are joined with spaces.
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// Replace the text of one of your messages (within the server's edit window).
    Edit {
        #[arg(long)]
        thread: u64,
        #[arg(long)]
        message: u64,
        /// The new text; several words are joined with spaces.
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
    },
    /// React to a message (one reaction per message; a new one replaces yours); without a
    /// reaction, remove yours.
    React {
        #[arg(long)]
        thread: u64,
        #[arg(long)]
        message: u64,
        /// E.g. 👍; omit to remove your reaction.
        reaction: Option<String>,
    },
    /// List threads with unread counts.
    Threads,
    /// Show a thread's latest messages, oldest first.
    History {
        #[arg(long)]
        thread: u64,
        #[arg(long, default_value_t = 20)]
        limit: u16,
    },
    /// Groups.
    #[command(subcommand)]
    Group(GroupCommand),
    /// Recall one of your messages.
    Recall {
        #[arg(long)]
        thread: u64,
        #[arg(long)]
        message: u64,
    },
    /// Contacts.
    #[command(subcommand)]
    Contacts(ContactsCommand),
    /// Push notifications for this device (courier-cli's own login) while it is offline.
    #[command(subcommand)]
    Push(PushCommand),
    /// Whether a contact is online, and when they were last seen.
    Presence { handle: String },
    /// Fetch everything new since the last sync.
    Sync,
    /// Upload a file (resuming an upload of the same file that was cut short); prints its
    /// media id. With --to or --thread, also send it there as a MEDIA message.
    Upload {
        file: std::path::PathBuf,
        /// The MIME type.
        #[arg(long, default_value = "application/octet-stream")]
        mime: String,
        /// Send it to this user (direct thread).
        #[arg(long, conflicts_with = "thread")]
        to: Option<String>,
        /// Send it to this thread.
        #[arg(long)]
        thread: Option<u64>,
    },
    /// Download media by id (hex) into a file; a partial file is continued, not restarted.
    Download {
        id: String,
        file: std::path::PathBuf,
        /// The thread the media was sent in (lets the server check permission at once).
        #[arg(long, default_value_t = 0)]
        thread: u64,
    },
    /// The interactive chat (the default).
    Chat,
}

#[derive(Debug, Subcommand)]
pub enum GroupCommand {
    /// Create a group.
    Create {
        name: String,
        /// Member handles, comma separated.
        #[arg(long, value_delimiter = ',')]
        members: Vec<String>,
    },
    /// Add members to a group.
    Add {
        #[arg(long)]
        thread: u64,
        #[arg(required = true)]
        handles: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum ContactsCommand {
    /// Add a contact.
    Add { handle: String },
    /// Remove a contact.
    Remove { handle: String },
    /// List contacts.
    List,
}

#[derive(Debug, Subcommand)]
pub enum PushCommand {
    /// Register a push key with the server's push gateway (replaces the same key's earlier
    /// registration).
    Register {
        /// The gateway's app id, e.g. com.example.chat.ios.
        #[arg(long)]
        app_id: String,
        /// The device token of APNs, FCM or Web Push.
        #[arg(long)]
        pushkey: String,
        /// apns, fcm, web, …
        #[arg(long)]
        platform: String,
        #[arg(long, default_value = "")]
        lang: String,
        /// A JSON object handed to the gateway with the device, e.g. '{"format":"event_id_only"}'.
        #[arg(long, default_value = "")]
        data: String,
    },
    /// Remove a push key's registration.
    Unregister {
        #[arg(long)]
        app_id: String,
        #[arg(long)]
        pushkey: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        None | Some(Command::Chat) => chat::run(&cli),
        Some(ref command) => oneshot::run(&cli, command),
    };
    if let Err(e) = result {
        eprintln!("courier-cli: error: {e}");
        std::process::exit(e.exit_code());
    }
}

/// The server to use: the flag or environment, else the saved login's, else the default.
pub fn server_addr(cli: &Cli, cfg: &config::CliConfig) -> String {
    cli.server
        .clone()
        .or_else(|| cfg.server.clone())
        .unwrap_or_else(|| DEFAULT_SERVER.to_string())
}

/// The transport for `server`: plaintext if asked, else the key given with `--server-key`
/// (parsed, and saved for the server), else the key saved for the server, else trust on first
/// use if asked; refused otherwise, with the ways out.
pub fn encryption(cli: &Cli, server: &str) -> CliResult<Encryption> {
    if cli.insecure_plaintext {
        return Ok(Encryption::Plaintext);
    }
    if let Some(text) = &cli.server_key {
        let key = PublicKey::parse(text, "the --server-key value")
            .map_err(|e| CliError::Usage(e.to_string()))?;
        config::CliConfig::save_server_key(server, key)?;
        return Ok(Encryption::Pinned(key));
    }
    if let Some(key) = config::CliConfig::load()?.server_key(server)? {
        return Ok(Encryption::Pinned(key));
    }
    if cli.trust_on_first_use {
        return Ok(Encryption::TrustOnFirstUse);
    }
    Err(CliError::NoServerKey(server.to_string()))
}

/// After a connection with trust on first use: shows the key the server presented and saves
/// it, so that later runs pin it.
pub fn learned_key(cli: &Cli, server: &str, client: &Client) -> CliResult {
    // After a redirect the connection is to another node, whose key (named by the REDIRECT)
    // is not `server`'s: only the key of `server` itself is saved for it.
    if !cli.trust_on_first_use || cli.server_key.is_some() || client.server_addr() != server {
        return Ok(());
    }
    if let Some(key) = client.server_key()? {
        if config::CliConfig::load()?.server_key(server)? != Some(key) {
            config::CliConfig::save_server_key(server, key)?;
            eprintln!(
                "courier-cli: trusted the key of {server} on first use: {key}\n\
                 courier-cli: it is saved and pinned from now on; compare it with \
                 `courier keys show` on the server"
            );
        }
    }
    Ok(())
}

/// Result of a CLI command.
pub type CliResult<T = ()> = Result<T, CliError>;
