//! The `courier` command: `serve` runs the server, `admin` works on a stopped one, `keys show`
//! prints the public key clients pin.

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use courier::admin::{self, GrantArgs, ListArgs, ProvisionArgs};
use courier::config::{Config, ServeArgs};
use courier::server;

#[derive(Parser)]
#[command(name = "courier", version, about = "A chat push server")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server until SIGTERM or SIGINT.
    Serve(Box<ServeArgs>),
    /// Offline administration (the server must be stopped).
    #[command(subcommand)]
    Admin(AdminCommand),
    /// The server's Noise key pair (created on the first start in the data directory).
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Print the server's public key, the value clients pin (`courier-cli --server-key`).
    Show {
        /// The server's data directory [default: ./data].
        #[arg(long, default_value = "./data")]
        data_dir: std::path::PathBuf,
    },
    /// Create the data directory and its key pair if they do not exist yet (a server creates
    /// them on its first start), then print the public key: before a cluster's first start,
    /// to write every node's key into the --peer list.
    Init {
        /// The server's data directory [default: ./data].
        #[arg(long, default_value = "./data")]
        data_dir: std::path::PathBuf,
    },
}

#[derive(Subcommand)]
enum AdminCommand {
    /// Create load-test accounts and write `user_id handle token_hex` lines for the load generator.
    Provision(ProvisionArgs),
    /// Give an account admin rights (ADMIN_STATS), by --user ID or --handle H.
    Grant(GrantArgs),
    /// Take an account's admin rights away, by --user ID or --handle H.
    Revoke(GrantArgs),
    /// Print `user_id handle granted_at_unix_secs` for every admin.
    List(ListArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let result = match Cli::parse().command {
        Command::Serve(args) => Config::load(*args)
            .map_err(|e| e.to_string())
            .and_then(|config| server::serve(config).map_err(|e| e.to_string())),
        Command::Admin(AdminCommand::Provision(args)) => admin::provision(&args)
            .map(|made| println!("provisioned {made} users into {}", args.out.display()))
            .map_err(|e| e.to_string()),
        Command::Admin(AdminCommand::Grant(args)) => admin::grant(&args)
            .map(|line| println!("{line}"))
            .map_err(|e| e.to_string()),
        Command::Admin(AdminCommand::Revoke(args)) => admin::revoke(&args)
            .map(|line| println!("{line}"))
            .map_err(|e| e.to_string()),
        Command::Admin(AdminCommand::List(args)) => admin::list(&args)
            .map(|lines| print!("{lines}"))
            .map_err(|e| e.to_string()),
        Command::Keys(KeysCommand::Show { data_dir }) => courier::keys::load(&data_dir)
            .map(|key| println!("{}", key.public()))
            .map_err(|e| e.to_string()),
        Command::Keys(KeysCommand::Init { data_dir }) => std::fs::create_dir_all(&data_dir)
            .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))
            .and_then(|()| courier::keys::load_or_create(&data_dir).map_err(|e| e.to_string()))
            .map(|key| println!("{}", key.public())),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("courier: {message}");
            ExitCode::FAILURE
        }
    }
}
