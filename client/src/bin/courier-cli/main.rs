//! `courier-cli`: one-shot commands for scripts, and an interactive chat for people.

mod chat;
mod config;
mod error;
mod oneshot;
mod output;
mod prompt;

use clap::{Parser, Subcommand};

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
        /// The text; several words are joined with spaces.
        #[arg(required = true, num_args = 1..)]
        text: Vec<String>,
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

/// Result of a CLI command.
pub type CliResult<T = ()> = Result<T, CliError>;
