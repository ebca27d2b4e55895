//! The one-shot CLI against a real server, as a script would use it.

mod util;

use std::path::Path;
use std::process::{Command, Output};

fn cli(config: &Path, server: &str, args: &[&str]) -> Output {
    Command::new(util::cli_bin())
        .env("COURIER_CONFIG", config)
        .env("COURIER_SERVER", server)
        .env_remove("COURIER_PASSWORD")
        .args(util::client_args_for(server))
        .args(args)
        .output()
        .expect("run courier-cli")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "unexpectedly succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let err = String::from_utf8(out.stderr.clone()).unwrap();
    assert_eq!(err.trim_end().lines().count(), 1, "one clear line: {err}");
    err
}

#[test]
fn register_send_history_json() {
    let server = util::Server::start();
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let (alice, bob) = (dir.path().join("alice.toml"), dir.path().join("bob.toml"));

    ok(&cli(
        &alice,
        &addr,
        &["register", "alice", "--password", "alice-password"],
    ));
    ok(&cli(
        &bob,
        &addr,
        &["register", "bob", "--password", "bob-password"],
    ));
    let saved = std::fs::read_to_string(&alice).unwrap();
    assert!(
        saved.contains("token") && saved.contains("alice") && saved.contains(&addr),
        "{saved}"
    );

    let sent: serde_json::Value = serde_json::from_str(&ok(&cli(
        &alice,
        &addr,
        &["--json", "send", "--to", "bob", "hello", "bob"],
    )))
    .unwrap();
    let thread = sent["thread"].as_u64().unwrap();
    ok(&cli(
        &alice,
        &addr,
        &["send", "--thread", &thread.to_string(), "second"],
    ));

    let history: serde_json::Value = serde_json::from_str(&ok(&cli(
        &bob,
        &addr,
        &["--json", "history", "--thread", &thread.to_string()],
    )))
    .unwrap();
    let texts: Vec<&str> = history
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["kind"] == "text")
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["hello bob", "second"], "oldest first");
    assert_eq!(history[0]["id"], sent["message"]);

    let threads: serde_json::Value =
        serde_json::from_str(&ok(&cli(&bob, &addr, &["--json", "threads"]))).unwrap();
    assert_eq!(threads[0]["id"].as_u64(), Some(thread));
    assert!(threads[0]["unread"].as_u64().unwrap() >= 2);

    let synced: serde_json::Value =
        serde_json::from_str(&ok(&cli(&bob, &addr, &["--json", "sync"]))).unwrap();
    assert!(synced["watermark"].as_u64().unwrap() > 0);
    let texts: Vec<&str> = synced["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        ["hello bob", "second"],
        "everything since bob registered, even on a server that had no messages yet"
    );
    let again: serde_json::Value =
        serde_json::from_str(&ok(&cli(&bob, &addr, &["--json", "sync"]))).unwrap();
    assert_eq!(
        again["messages"].as_array().unwrap().len(),
        0,
        "the watermark was saved"
    );

    let readable = ok(&cli(
        &bob,
        &addr,
        &["history", "--thread", &thread.to_string()],
    ));
    assert!(readable.contains("alice: hello bob"), "{readable}");
    server.stop();
}

#[test]
fn errors_are_one_line_for_people() {
    let server = util::Server::start();
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("cli.toml");
    ok(&cli(
        &cfg,
        &addr,
        &["register", "alice", "--password", "alice-password"],
    ));

    let err = fails(&cli(
        &cfg,
        &addr,
        &["login", "alice", "--password", "wrong-password"],
    ));
    assert!(err.contains("wrong handle or password"), "{err}");
    let err = fails(&cli(&cfg, &addr, &["send", "--to", "nobody", "hi"]));
    assert!(err.contains("no user named 'nobody'"), "{err}");
    let err = fails(&cli(
        &cfg,
        &addr,
        &["register", "alice", "--password", "alice-password"],
    ));
    assert!(err.contains("already taken"), "{err}");

    let out = cli(&dir.path().join("other.toml"), &addr, &["threads"]);
    assert!(fails(&out).contains("not logged in"));

    server.stop();
    let out = cli(&cfg, &addr, &["threads"]);
    let err = fails(&out);
    assert!(err.contains(&addr) && err.contains("cannot reach"), "{err}");
    assert_eq!(out.status.code(), Some(3));
}

#[test]
fn push_register_unregister_and_the_limit() {
    let server = util::Server::start();
    let addr = server.addr.to_string();
    let dir = tempfile::tempdir().unwrap();
    let bob = dir.path().join("bob.toml");
    ok(&cli(
        &bob,
        &addr,
        &["register", "bob", "--password", "bob-password"],
    ));
    let register = |key: &str| {
        cli(
            &bob,
            &addr,
            &[
                "push",
                "register",
                "--app-id",
                "com.example.chat",
                "--pushkey",
                key,
                "--platform",
                "fcm",
            ],
        )
    };
    let said = ok(&register("key-0"));
    assert!(said.contains("registered push key key-0"), "{said}");
    for i in 1..10 {
        ok(&register(&format!("key-{i}")));
    }
    let err = fails(&register("key-10"));
    assert!(err.contains("UNREGISTER_PUSH"), "{err}");
    ok(&cli(
        &bob,
        &addr,
        &[
            "push",
            "unregister",
            "--app-id",
            "com.example.chat",
            "--pushkey",
            "key-0",
        ],
    ));
    ok(&register("key-10"));
}
