//! Echo bot on the tokio client: logs in (registering the account on first run) and sends
//! every text message it receives back into the thread it came from. The same bot as
//! `echo_bot.rs`, written with [`AsyncClient`].
//!
//! ```text
//! cargo run -p courier-client --features tokio --example echo_bot_async -- [SERVER] [HANDLE] [PASSWORD]
//! ```
//! Defaults: `127.0.0.1:7878`, `echo`, `echo-bot-password`. Set `COURIER_SERVER_KEY` to the
//! server's public key (`courier keys show`) to pin it; without it the bot speaks plain TCP.

use std::time::Duration;

use courier_client::protocol::noise::PublicKey;
use courier_client::{AsyncClient, ClientConfig, ErrorCode, Event, MessageKind, ReceiptKind};

#[tokio::main(flavor = "current_thread")]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("echo_bot_async: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let server = args.next().unwrap_or_else(|| "127.0.0.1:7878".into());
    let handle = args.next().unwrap_or_else(|| "echo".into());
    let password = args.next().unwrap_or_else(|| "echo-bot-password".into());

    let client = AsyncClient::connect(
        &server,
        transport(ClientConfig::reconnecting())?.with_device("echo-bot"),
    )
    .await?;
    let me = match client.login(&handle, &password).await {
        Ok(auth) => auth,
        // First run: the account does not exist yet.
        Err(e) if e.code() == Some(ErrorCode::BadCredentials) => {
            client.register(&handle, &password).await?
        }
        Err(e) => return Err(e.into()),
    };
    println!(
        "echo_bot_async: logged in as {} (user {}) on {server}",
        me.handle, me.user
    );

    while let Some(event) = client.recv_event().await {
        match event {
            Event::Message(m)
                if m.sender != me.user && m.kind == MessageKind::Text && !m.recalled =>
            {
                let _ = client.receipt(m.thread, ReceiptKind::Read, m.id).await;
                // Retried with the same client_msg_id across a reconnect: echoed exactly once.
                let echoed = client
                    .send_with_retry(
                        m.thread,
                        MessageKind::Text,
                        m.body.clone(),
                        Duration::from_secs(60),
                    )
                    .await?;
                println!(
                    "echo_bot_async: thread {} message {} echoed as {}",
                    m.thread, m.id, echoed.message
                );
            }
            Event::Disconnected { reason } => {
                println!("echo_bot_async: disconnected ({reason:?}), reconnecting")
            }
            Event::Reconnected { addr } => println!("echo_bot_async: reconnected to {addr}"),
            Event::SessionEnded { reason } => {
                println!("echo_bot_async: session ended ({reason:?})")
            }
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
