//! Accounts over real TCP against a real `courier serve`: admin rights by grant, login,
//! resume and register throttling, device names, token lifetime and revocation.

mod util;

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use courier_protocol::{retry_after_secs, AdminStats, ErrorCode, Frame, Logout, LogoutAll};
use util::{error_code, has_error, Server, TestConn, PASSWORD, REPLY_TIMEOUT};

fn login(server: &Server, handle: &str) -> util::TestConn {
    let mut c = server.connect();
    c.hello();
    c.login(handle, PASSWORD, "test");
    c
}

#[test]
fn the_removed_admin_handle_option_is_refused_with_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("courier.toml");
    std::fs::write(&file, "admin = [\"root\"]\n").unwrap();
    for args in [
        vec!["--admin", "root"],
        vec!["--config", file.to_str().unwrap()],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_courier"))
            .arg("serve")
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir.path().join("data"))
            .args(&args)
            .output()
            .expect("run courier serve");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} started a server: {stderr}");
        assert!(
            stderr.contains("courier admin grant"),
            "{args:?}: the error must say what to do: {stderr}"
        );
    }
}

#[test]
fn admin_rights_belong_to_granted_user_ids_not_to_a_handle() {
    let mut server = Server::start();
    // "root" was the handle a configuration typically named: registering it gives nothing.
    let (mut root, root_ok) = server.user("root");
    assert_eq!(
        error_code(&root.request(AdminStats {})),
        ErrorCode::Forbidden
    );
    drop(root);
    server.user("someone");

    // Grants are made offline: against a running server's data directory the command says so.
    let busy = Command::new(env!("CARGO_BIN_EXE_courier"))
        .args(["admin", "grant", "--handle", "root", "--data-dir"])
        .arg(&server.data_dir)
        .output()
        .expect("run courier admin grant");
    let stderr = String::from_utf8_lossy(&busy.stderr);
    assert!(!busy.status.success(), "granted while the server runs");
    assert!(stderr.contains("server must be stopped"), "{stderr}");

    let said = server.admin(&["grant", "--handle", "root"]);
    assert!(said.contains(&format!("user {}", root_ok.user)), "{said}");
    let mut root = login(&server, "root");
    match root.request(AdminStats {}) {
        Frame::Stats(s) => assert!(s.entries.iter().any(|e| e.name == "connections"), "{s:?}"),
        other => panic!("a granted user gets STATS, got {other:?}"),
    }
    let mut someone = login(&server, "someone");
    assert_eq!(
        error_code(&someone.request(AdminStats {})),
        ErrorCode::Forbidden
    );
    drop((root, someone));

    let listed = server.admin(&["list"]);
    assert!(
        listed.starts_with(&format!("{} root ", root_ok.user)),
        "{listed}"
    );
    server.admin(&["revoke", "--user", &root_ok.user.to_string()]);
    let mut root = login(&server, "root");
    assert_eq!(
        error_code(&root.request(AdminStats {})),
        ErrorCode::Forbidden
    );
    assert_eq!(server.admin(&["list"]), "");
}

/// The loopback addresses an attacker and the owner connect from: two source addresses.
fn loopback(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

#[test]
fn an_attacker_failing_from_one_address_does_not_lock_the_owner_out() {
    let server = Server::start();
    server.user("victim");
    let mut attacker = TestConn::connect_from(server.addr, loopback(2), server.encryption());
    attacker.hello();
    let (mut failed, mut throttled) = (0, Vec::new());
    for _ in 0..20 {
        match attacker.try_login("victim", "not-the-password", "evil") {
            Frame::ErrorReply(e) if e.code == ErrorCode::BadCredentials as u16 => failed += 1,
            Frame::ErrorReply(e) if e.code == ErrorCode::LoginThrottled as u16 => {
                throttled.push(e.message)
            }
            other => panic!("expected BAD_CREDENTIALS or LOGIN_THROTTLED, got {other:?}"),
        }
    }
    assert!(failed >= 5, "the first five failures are free: {failed}");
    let message = throttled.last().expect("the attacker was throttled");
    let hint = retry_after_secs(message).unwrap_or_else(|| panic!("no retry hint: {message}"));
    assert!((1..=900).contains(&hint), "{message}");

    // The owner, from another address, logs in at once, with the right password only.
    let mut owner = TestConn::connect_from(server.addr, loopback(3), server.encryption());
    owner.hello();
    owner.login("victim", PASSWORD, "phone");
    // The attacker's address is still throttled for this account.
    assert_eq!(
        error_code(&attacker.try_login("victim", PASSWORD, "evil")),
        ErrorCode::LoginThrottled
    );
}

#[test]
fn forged_resume_tokens_are_throttled_per_address() {
    let server = Server::start_with(&["--metrics", "127.0.0.1:0"]);
    let (_alice, ok) = server.user("alice");
    let mut forger = TestConn::connect_from(server.addr, loopback(2), server.encryption());
    forger.hello();
    let (mut invalid, mut throttled) = (0, Vec::new());
    for i in 0..300u32 {
        let mut token = [0u8; 32];
        token[..4].copy_from_slice(&i.to_be_bytes());
        match forger.try_resume(&Bytes::copy_from_slice(&token)) {
            Frame::ErrorReply(e) if e.code == ErrorCode::InvalidToken as u16 => invalid += 1,
            Frame::ErrorReply(e) if e.code == ErrorCode::LoginThrottled as u16 => {
                throttled.push(e.message)
            }
            other => panic!("expected INVALID_TOKEN or LOGIN_THROTTLED, got {other:?}"),
        }
    }
    assert!(
        (10..60).contains(&invalid),
        "{invalid} of 300 forged tokens were checked"
    );
    let message = throttled.last().expect("the forger was throttled");
    assert!(retry_after_secs(message).is_some(), "{message}");
    // A device with a real token, from another address, resumes at once.
    let mut device = TestConn::connect_from(server.addr, loopback(3), server.encryption());
    device.hello();
    assert_eq!(device.resume(&ok.token).user, ok.user);
    let counted = Server::metric_sum(&server.metrics(), "courier_auth_throttled_total");
    assert_eq!(counted, throttled.len() as f64);
}

#[test]
fn a_registration_flood_from_one_address_is_throttled() {
    let server = Server::start_with(&["--register-per-address", "3"]);
    let mut flood = TestConn::connect_from(server.addr, loopback(2), server.encryption());
    flood.hello();
    for i in 0..3 {
        let mut c = TestConn::connect_from(server.addr, loopback(2), server.encryption());
        c.hello();
        c.register(&format!("bot{i}"), PASSWORD, "d");
    }
    let refused = flood.try_register("bot3", PASSWORD, "d");
    assert_eq!(error_code(&refused), ErrorCode::LoginThrottled);
    let Frame::ErrorReply(e) = refused else {
        unreachable!()
    };
    let hint = retry_after_secs(&e.message).unwrap_or_else(|| panic!("no hint: {}", e.message));
    assert!((3500..=3600).contains(&hint), "{}", e.message);
    // Nothing was created, and another address registers as usual.
    let mut other = TestConn::connect_from(server.addr, loopback(3), server.encryption());
    other.hello();
    other.register("human", PASSWORD, "d");
    let mut check = TestConn::connect_from(server.addr, loopback(3), server.encryption());
    check.hello();
    assert_eq!(
        error_code(&check.try_login("bot3", PASSWORD, "d")),
        ErrorCode::BadCredentials,
        "the refused registration created no account"
    );
}

#[test]
fn device_names_must_be_printable_text() {
    let server = Server::start();
    let mut c = server.connect();
    c.hello();
    for bad in ["phone\n", "\u{7}bell", "\u{202E}enohp", "   "] {
        let refused = c.try_register("alice", PASSWORD, bad);
        assert_eq!(error_code(&refused), ErrorCode::InvalidArgument, "{bad:?}");
        let Frame::ErrorReply(e) = refused else {
            unreachable!()
        };
        assert!(e.message.contains("printable"), "{}", e.message);
    }
    c.register("alice", PASSWORD, "Alice's phone \u{1F4F1}");
    let mut d = server.connect();
    d.hello();
    assert_eq!(
        error_code(&d.try_login("alice", PASSWORD, "tab\there")),
        ErrorCode::InvalidArgument
    );
}

#[test]
fn logging_in_again_as_the_same_device_replaces_its_token_at_once() {
    let server = Server::start();
    let (mut first, reg) = server.user("alice");
    let mut again = server.connect();
    again.hello();
    let renewed = again.login("alice", PASSWORD, "test");
    assert_eq!(renewed.device, reg.device);
    assert_ne!(renewed.token, reg.token);
    // The connection still on the old token is closed, and the old token is refused.
    let closed = first.expect_closed(REPLY_TIMEOUT);
    assert!(has_error(&closed, ErrorCode::SessionRevoked), "{closed:?}");
    let mut c = server.connect();
    c.hello();
    assert_eq!(
        error_code(&c.try_resume(&reg.token)),
        ErrorCode::InvalidToken
    );
    c.resume(&renewed.token);
    again.ping();
}

#[test]
fn logout_revokes_the_token_on_every_connection_at_once() {
    let server = Server::start();
    let (mut phone, reg) = server.user("alice");
    // A second connection on the same token (a reconnect that overlapped the old one).
    let mut twin = server.resumed(&reg.token);
    let mut laptop = server.connect();
    laptop.hello();
    let laptop_ok = laptop.login("alice", PASSWORD, "laptop");

    assert!(matches!(phone.request(Logout {}), Frame::Done(_)));
    let closed = twin.expect_closed(REPLY_TIMEOUT);
    assert!(has_error(&closed, ErrorCode::SessionRevoked), "{closed:?}");
    laptop.ping();
    let mut c = server.connect();
    c.hello();
    assert_eq!(
        error_code(&c.try_resume(&reg.token)),
        ErrorCode::InvalidToken
    );

    // LOGOUT_ALL: the other connections go, and no token of the user resumes.
    let mut laptop_twin = server.resumed(&laptop_ok.token);
    let mut tablet = server.connect();
    tablet.hello();
    let tablet_ok = tablet.login("alice", PASSWORD, "tablet");
    assert!(matches!(laptop.request(LogoutAll {}), Frame::Done(_)));
    for c in [&mut laptop_twin, &mut tablet] {
        let closed = c.expect_closed(REPLY_TIMEOUT);
        assert!(has_error(&closed, ErrorCode::SessionRevoked), "{closed:?}");
    }
    for token in [&laptop_ok.token, &tablet_ok.token] {
        let mut c = server.connect();
        c.hello();
        assert_eq!(error_code(&c.try_resume(token)), ErrorCode::InvalidToken);
    }
}

#[test]
fn a_token_unused_for_the_idle_time_expires() {
    // Tokens expire after 2 s idle here (days in production, `--token-idle-days`).
    let server = Server::start_with_env(&[], &[("COURIER_TEST_TOKEN_IDLE_MS", "2000")]);
    let (c, reg) = server.user("alice");
    drop(c);
    // Well past the idle time (no race: the token can only be more idle than that).
    std::thread::sleep(Duration::from_millis(3000));
    let mut c = server.connect();
    c.hello();
    let refused = c.try_resume(&reg.token);
    assert_eq!(error_code(&refused), ErrorCode::InvalidToken);
    let Frame::ErrorReply(e) = refused else {
        unreachable!()
    };
    assert!(e.message.contains("expired"), "{}", e.message);
    // It was removed when presented: now it is simply unknown.
    let Frame::ErrorReply(e) = c.try_resume(&reg.token) else {
        panic!("an expired token resumed")
    };
    assert!(!e.message.contains("expired"), "{}", e.message);
    c.login("alice", PASSWORD, "test");
}

#[test]
fn internal_failures_reach_the_client_as_a_code_and_a_generic_sentence() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("disk-full");
    let flag_env = flag.to_str().unwrap().to_owned();
    let server = Server::start_with_env(&[], &[("COURIER_FAULT_FULL_DISK_FLAG", &flag_env)]);
    server.user("alice");
    // From now on every write is refused as if the disk were full.
    std::fs::write(&flag, b"").unwrap();
    let mut c = server.connect();
    c.hello();
    let refused = [
        c.try_register("bob", PASSWORD, "d"),
        c.try_login("alice", PASSWORD, "new-device"),
    ];
    let data_dir = server.data_dir.to_string_lossy().into_owned();
    for frame in &refused {
        assert_eq!(error_code(frame), ErrorCode::Internal, "{frame:?}");
        let Frame::ErrorReply(e) = frame else {
            unreachable!()
        };
        for internal in ["disk", "bytes", "RocksDB", "/", data_dir.as_str()] {
            assert!(
                !e.message.contains(internal),
                "the client was told internal detail {internal:?}: {}",
                e.message
            );
        }
        assert!(e.message.contains("retry"), "{}", e.message);
    }
    // The detail is in the log.
    assert!(
        server.log().contains("disk is nearly full"),
        "{}",
        server.log()
    );
}
