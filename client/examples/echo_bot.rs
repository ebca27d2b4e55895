//! Echo bot: logs in (registering the account on first run) and sends every text message it
//! receives back into the thread it came from.
//!
//! ```text
//! cargo run -p courier-client --example echo_bot -- [SERVER] [HANDLE] [PASSWORD]
//! ```
//! Defaults: `127.0.0.1:7878`, `echo`, `echo-bot-password`. Set `COURIER_SERVER_KEY` to the
//! server's public key (`courier keys show`) to pin it; without it the bot speaks plain TCP.

use std::time::Duration;

use courier_client::protocol::noise::PublicKey;
use courier_client::{Client, ClientConfig, ErrorCode, Event, MessageKind, ReceiptKind};

fn main() {
    if let Err(e) = run() {
        eprintln!("echo_bot: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:7878".into());
    let handle = args.next().unwrap_or_else(|| "echo".into());
    let password = args.next().unwrap_or_else(|| "echo-bot-password".into());

    let client = Client::connect(
        &server,
        transport(ClientConfig::reconnecting())?.with_device("echo-bot"),
    )?;
    let me = match client.login(&handle, &password) {
        Ok(auth) => auth,
        // First run: the account does not exist yet.
        Err(e) if e.code() == Some(ErrorCode::BadCredentials) => {
            client.register(&handle, &password)?
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "echo_bot: logged in as {} (user {}) on {server}",
        me.handle, me.user
    );

    for event in client.events() {
        match event {
            Event::Message(m)
                if m.sender != me.user && m.kind == MessageKind::Text && !m.recalled =>
            {
                let _ = client.receipt(m.thread, ReceiptKind::Read, m.id);
                // Retried with the same client_msg_id across a reconnect: echoed exactly once.
                let echoed = client.send_with_retry(
                    m.thread,
                    MessageKind::Text,
                    m.body.clone(),
                    Duration::from_secs(60),
                )?;
                println!(
                    "echo_bot: thread {} message {} echoed as {}",
                    m.thread, m.id, echoed.message
                );
            }
            Event::Disconnected { reason } => {
                println!("echo_bot: disconnected ({reason:?}), reconnecting")
            }
            Event::Reconnected { addr } => println!("echo_bot: reconnected to {addr}"),
            Event::SessionEnded { reason } => println!("echo_bot: session ended ({reason:?})"),
            _ => {}
        }
    }
    Ok(())
}

/// Pins the server's public key from `COURIER_SERVER_KEY` (what `courier keys show` prints);
/// without it, plain TCP, which only a server run with `--insecure-plaintext` accepts.
fn transport(config: ClientConfig) -> Result<ClientConfig, Box<dyn std::error::Error>> {
    match std::env::var("COURIER_SERVER_KEY") {
        Ok(hex) => Ok(config.with_server_key(PublicKey::parse(&hex, "COURIER_SERVER_KEY")?)),
        Err(_) => Ok(config),
    }
}
