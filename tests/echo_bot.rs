//! The echo bot examples (`client/examples/echo_bot.rs`, blocking, and `echo_bot_async.rs`,
//! tokio) run as their own processes against a real server and echo what a user sends them.
//!
//! `cargo test --workspace` builds both examples before it runs any test (the async one needs
//! courier-client's `tokio` feature, which this package's dev-dependency turns on).

mod util;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

use courier_client::{Client, ClientConfig, Event, MessageKind};

const WAIT: Duration = Duration::from_secs(20);

/// An example's binary, built next to the workspace's binaries by `cargo test --workspace`.
fn example(name: &str) -> PathBuf {
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_courier"))
        .with_file_name("examples")
        .join(name);
    assert!(
        bin.exists(),
        "{} is missing: run `cargo test --workspace` (it builds the examples), or \
         `cargo build -p courier-client --features tokio --examples` first",
        bin.display()
    );
    bin
}

/// A running example; killed when dropped.
struct Bot {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl Bot {
    fn start(name: &str, server: &str, key: &str) -> Bot {
        let mut child = Command::new(example(name))
            .args([server, "echo", "echo-bot-password"])
            .env("COURIER_SERVER_KEY", key)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the example");
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Bot { child, lines }
    }

    /// Waits for a line of output containing `text`.
    fn wait_line(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(text) => return line,
                Ok(_) => {}
                Err(_) => panic!("the bot printed no line with {text:?} within {WAIT:?}"),
            }
        }
    }
}

impl Drop for Bot {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts the example, sends it two messages as a new user and checks both come back.
fn echoes(example_name: &str) {
    let server = util::Server::start();
    let addr = server.addr.to_string();
    let key = server.key.expect("an encrypted server printed its key");
    let bot = Bot::start(example_name, &addr, &key.to_string());
    bot.wait_line("logged in as echo");

    let alice = Client::connect(&addr, ClientConfig::default().with_server_key(key)).unwrap();
    alice.register("alice", "correct-horse-battery").unwrap();
    let echo = alice.lookup_user("echo").unwrap();
    let thread = alice.open_direct(echo.id).unwrap();
    for text in ["hello echo", "second"] {
        alice.send_text(thread.id, text).unwrap();
        let deadline = Instant::now() + WAIT;
        let echoed = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match alice.recv_event_timeout(left) {
                Some(Event::Message(m)) if m.sender == echo.id && m.kind == MessageKind::Text => {
                    break m
                }
                Some(_) => {}
                None => panic!("{example_name} echoed nothing within {WAIT:?}"),
            }
        };
        assert_eq!(&echoed.body[..], text.as_bytes());
        assert_eq!(echoed.thread, thread.id);
    }
    bot.wait_line("echoed as");
    drop(bot);
    server.stop();
}

#[test]
fn the_blocking_echo_bot_echoes() {
    echoes("echo_bot");
}

#[test]
fn the_async_echo_bot_echoes() {
    echoes("echo_bot_async");
}
