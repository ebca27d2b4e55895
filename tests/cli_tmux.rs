//! The interactive CLI in a pseudo-terminal (tmux): log in, open a thread, send, receive.

mod util;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long a line may take to appear on the screen.
const SCREEN_WAIT: Duration = Duration::from_secs(10);

/// One tmux session on a tmux server of its own (`-L`, a socket named after the session), so a
/// test never touches anyone else's tmux; dropping it kills that session and that server only.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    /// Runs `command` in a new 200x50 session named `courier-cli-test-PID-N-LABEL`. When the
    /// command exits, the pane says so and stays, so a failure shows the last screen.
    fn start(label: &str, command: &str) -> Tmux {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let session = format!(
            "courier-cli-test-{}-{}-{label}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let tmux = Tmux {
            socket: session.clone(),
            session,
        };
        let wrapped = format!("{command}; echo \"[courier-cli exited: $?]\"; sleep 600");
        let out = tmux
            .cmd()
            .args(["-f", "/dev/null", "new-session", "-d", "-s", &tmux.session])
            .args(["-x", "200", "-y", "50", &wrapped])
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run tmux ({e}): install it with scripts/install-deps.sh")
            });
        assert!(
            out.status.success(),
            "tmux new-session failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tmux
    }

    fn cmd(&self) -> Command {
        let mut cmd = Command::new("tmux");
        cmd.args(["-L", &self.socket]);
        cmd
    }

    /// Types `text` literally, then Enter.
    fn keys(&self, text: &str) {
        let status = self
            .cmd()
            .args(["send-keys", "-t", &self.session, "-l", text])
            .status()
            .unwrap();
        assert!(status.success());
        let status = self
            .cmd()
            .args(["send-keys", "-t", &self.session, "Enter"])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// The pane with its scrollback, as plain text.
    fn screen(&self) -> String {
        let out = self
            .cmd()
            .args(["capture-pane", "-p", "-t", &self.session, "-S", "-500"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `needle` is on the screen; panics with the screen after [`SCREEN_WAIT`].
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + SCREEN_WAIT;
        loop {
            let screen = self.screen();
            if screen.contains(needle) {
                return screen;
            }
            assert!(
                Instant::now() < deadline,
                "{needle:?} never appeared on {}; screen:\n{screen}",
                self.session
            );
            thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self
            .cmd()
            .args(["kill-session", "-t", &self.session])
            .output();
        let _ = self.cmd().arg("kill-server").output();
    }
}

/// The `courier-cli` binary, built next to `courier` by `cargo build --workspace` (this package
/// cannot name another package's binary with `CARGO_BIN_EXE_*`).
fn cli_bin() -> PathBuf {
    let bin = Path::new(env!("CARGO_BIN_EXE_courier")).with_file_name("courier-cli");
    assert!(
        bin.is_file(),
        "{} is missing: run `cargo build --workspace` first (`cargo test -p courier` alone does not build courier-cli)",
        bin.display()
    );
    bin
}

fn cli(config: &Path, server: &str, args: &[&str]) -> String {
    let out = Command::new(cli_bin())
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
        cli_bin().display()
    );
    let tui = Tmux::start("alice", &command);

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
