//! The interactive CLI in a pseudo-terminal (tmux): log in, open a thread, send, receive.

mod util;

use std::path::Path;
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

struct Tmux {
    session: String,
}

impl Tmux {
    fn start(session: &str, command: &str) -> Tmux {
        let status = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                session,
                "-x",
                "200",
                "-y",
                "50",
                command,
            ])
            .status()
            .expect("tmux");
        assert!(status.success());
        Tmux {
            session: session.into(),
        }
    }

    fn keys(&self, text: &str) {
        let status = Command::new("tmux")
            .args(["send-keys", "-t", &self.session, "-l", text])
            .status()
            .unwrap();
        assert!(status.success());
        Command::new("tmux")
            .args(["send-keys", "-t", &self.session, "Enter"])
            .status()
            .unwrap();
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.session, "-S", "-200"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared; screen:\n{screen}"
            );
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.session])
            .status();
    }
}

fn cli(config: &Path, server: &str, args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_courier-cli"))
        .env("COURIER_CONFIG", config)
        .env("COURIER_SERVER", server)
        .args(args)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn interactive_login_send_receive_and_ticks() {
    if Command::new("tmux").arg("-V").output().is_err() {
        eprintln!("tmux not installed; skipping");
        return;
    }
    let server = util::Server::start();
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let (alice_cfg, bob_cfg) = (dir.path().join("alice.toml"), dir.path().join("bob.toml"));
    cli(
        &bob_cfg,
        &addr,
        &["register", "bob", "--password", "bob-password"],
    );

    let command = format!(
        "COURIER_CONFIG={} COURIER_SERVER={} {}",
        alice_cfg.display(),
        addr,
        env!("CARGO_BIN_EXE_courier-cli")
    );
    let session = format!("courier-cli-test-{}", std::process::id());
    let tui = Tmux::start(&session, &command);

    tui.wait_for("(l)ogin or (r)egister?");
    tui.keys("r");
    tui.wait_for("handle:");
    tui.keys("alice");
    tui.wait_for("password:");
    tui.keys("alice-password");
    let screen = tui.wait_for("logged in as alice");
    assert!(
        !screen.contains("alice-password"),
        "the password is not echoed"
    );

    tui.keys("/open bob");
    tui.wait_for("── bob");
    tui.keys("hello from the terminal");
    tui.wait_for("you: hello from the terminal ✓");

    // Bob replies with the one-shot CLI. Sending moves his own cursors to his message, which
    // is past alice's: her message turns read (blue ✓✓) on her screen.
    cli(&bob_cfg, &addr, &["send", "--to", "alice", "hi alice"]);
    tui.wait_for("bob: hi alice");
    tui.wait_for("read: hello from the terminal");

    tui.keys("/threads");
    tui.wait_for("#");
    tui.keys("/help");
    tui.wait_for("/recall");
    tui.keys("/recall");
    tui.wait_for("recalled your last message");
    tui.keys("/quit");
    thread::sleep(Duration::from_millis(300));
    let saved = std::fs::read_to_string(&alice_cfg).unwrap();
    assert!(
        saved.contains("watermark"),
        "watermark saved on quit: {saved}"
    );
    server.stop();
}
