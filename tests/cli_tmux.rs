//! The interactive CLI in a pseudo-terminal (tmux): log in, open a thread, send, receive.

mod util;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// How long a line may take to appear on the screen.
const SCREEN_WAIT: Duration = Duration::from_secs(10);

/// One tmux session on a tmux server of its own (`-S`, a socket in a temporary directory), so
/// a test never touches anyone else's tmux; dropping it kills that session and that server and
/// removes the socket.
struct Tmux {
    socket: PathBuf,
    session: String,
    /// Where [`wait_for`](Self::wait_for) starts looking: the screen's end at the last mark.
    mark: Cell<usize>,
    _dir: tempfile::TempDir,
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
        let dir = tempfile::tempdir().unwrap();
        let tmux = Tmux {
            socket: dir.path().join("tmux.sock"),
            session,
            mark: Cell::new(0),
            _dir: dir,
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
        cmd.arg("-S").arg(&self.socket);
        cmd
    }

    /// From now on, [`wait_for`](Self::wait_for) looks only at what appears after this point.
    fn mark(&self) {
        self.mark.set(self.screen().trim_end().len());
    }

    /// Marks the screen, then types `text` literally and Enter: what the keys cause comes after
    /// the mark.
    fn keys(&self, text: &str) {
        self.mark();
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
            .args(["capture-pane", "-p", "-t", &self.session, "-S", "-"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Waits until `needle` appears after the mark; panics with the screen after
    /// [`SCREEN_WAIT`].
    fn wait_for(&self, needle: &str) -> String {
        let deadline = Instant::now() + SCREEN_WAIT;
        loop {
            let screen = self.screen();
            if screen
                .get(self.mark.get()..)
                .is_some_and(|s| s.contains(needle))
            {
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

fn cli(config: &Path, server: &str, args: &[&str]) -> String {
    let out = Command::new(util::cli_bin())
        .env("COURIER_CONFIG", config)
        .env("COURIER_SERVER", server)
        .args(util::client_args_for(server))
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

/// The shell command that runs the interactive chat for one person.
fn chat_command(config: &Path, server: &str) -> String {
    format!(
        "COURIER_CONFIG={} COURIER_SERVER={server} {} {}",
        config.display(),
        util::cli_bin().display(),
        util::client_args_for(server).join(" ")
    )
}

/// The README's two-terminal walkthrough, one step at a time: alice logs in interactively, bob
/// writes while she has no thread open, she opens it and answers while he is offline, he comes
/// back and sees it (her ✓✓ delivered), opens it (her ✓✓ read) and answers.
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

    let alice = Tmux::start("alice", &chat_command(&alice_cfg, &addr));
    alice.wait_for("(l)ogin or (r)egister?");
    alice.keys("r");
    alice.wait_for("handle:");
    alice.keys("alice");
    alice.wait_for("password:");
    alice.keys("alice-password");
    let screen = alice.wait_for("logged in as alice");
    assert!(
        !screen.contains("alice-password"),
        "the password is not echoed"
    );
    alice.wait_for("no threads yet");

    // A message in a thread that is not open shows with its thread number.
    alice.mark();
    cli(&bob_cfg, &addr, &["send", "--to", "alice", "hi alice"]);
    alice.wait_for("bob: hi alice");

    alice.keys("/open bob");
    alice.wait_for("── bob (#");
    alice.wait_for("bob is offline");
    alice.keys("hello bob");
    alice.wait_for("you: hello bob ✓");

    // Bob comes back: what he missed arrives, which is alice's second tick.
    alice.mark();
    let bob = Tmux::start("bob", &chat_command(&bob_cfg, &addr));
    bob.wait_for("logged in as bob");
    bob.wait_for("alice: hello bob");
    alice.wait_for("✓✓ delivered: hello bob");
    alice.wait_for("bob is online");

    alice.mark();
    bob.keys("/open alice");
    bob.wait_for("── alice (#");
    alice.wait_for("✓✓ read: hello bob");

    alice.mark();
    bob.keys("hi again");
    bob.wait_for("you: hi again ✓");
    alice.wait_for("bob: hi again");
    // Alice has the thread open: she reads it at once.
    bob.wait_for("✓✓ read: hi again");

    alice.keys("/threads");
    alice.wait_for("bob");
    alice.keys("/help");
    alice.wait_for("/recall");
    bob.mark();
    alice.keys("/recall");
    alice.wait_for("recalled your last message");
    bob.wait_for("alice recalled a message");
    alice.keys("/quit");
    alice.wait_for("[courier-cli exited: 0]");
    let saved = std::fs::read_to_string(&alice_cfg).unwrap();
    assert!(
        saved.contains("watermark"),
        "watermark saved on quit: {saved}"
    );
    bob.keys("/quit");
    bob.wait_for("[courier-cli exited: 0]");
    server.stop();
}

/// Replies, reactions and edits in the interactive chat: each shows on both screens as it
/// happens, and reopening the thread shows the end state from history.
#[test]
fn interactive_replies_reactions_and_edits() {
    let server = util::Server::start();
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let (alice_cfg, bob_cfg) = (dir.path().join("alice.toml"), dir.path().join("bob.toml"));
    cli(
        &alice_cfg,
        &addr,
        &["register", "alice", "--password", "alice-password"],
    );
    cli(
        &bob_cfg,
        &addr,
        &["register", "bob", "--password", "bob-password"],
    );
    cli(&alice_cfg, &addr, &["send", "--to", "bob", "lunch?"]);

    let alice = Tmux::start("alice", &chat_command(&alice_cfg, &addr));
    alice.wait_for("logged in as alice");
    alice.keys("/open bob");
    alice.wait_for("you: lunch?");
    let bob = Tmux::start("bob", &chat_command(&bob_cfg, &addr));
    bob.wait_for("logged in as bob");
    bob.keys("/open alice");
    bob.wait_for("alice: lunch?");

    // A reply quotes the last message from the other person.
    alice.mark();
    bob.keys("/reply yes");
    bob.wait_for("you: yes");
    bob.wait_for("↪ reply to alice: \"lunch?\"");
    alice.wait_for("bob: yes");
    alice.wait_for("↪ reply to alice: \"lunch?\"");

    alice.mark();
    bob.keys("/react 👍");
    alice.wait_for("bob reacted 👍");
    alice.wait_for("on alice: \"lunch?\": 👍 1");

    bob.mark();
    alice.keys("/edit lunch at 1?");
    bob.wait_for("alice edited a message: lunch at 1?");

    // Reopened, the thread shows where things ended up.
    bob.keys("/open alice");
    bob.wait_for("alice: lunch at 1? (edited)");
    bob.wait_for("👍 1 (you: 👍)");
    bob.wait_for("↪ reply to alice: \"lunch at 1?\"");

    alice.mark();
    bob.keys("/react");
    alice.wait_for("bob removed their reaction");
    alice.keys("/quit");
    alice.wait_for("[courier-cli exited: 0]");
    bob.keys("/quit");
    bob.wait_for("[courier-cli exited: 0]");
    server.stop();
}
