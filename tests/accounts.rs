//! Accounts over real TCP against a real `courier serve`: admin rights by grant, login,
//! resume and register throttling, device names, token lifetime and revocation.

mod util;

use std::process::Command;

use courier_protocol::{AdminStats, ErrorCode, Frame};
use util::{error_code, Server, PASSWORD};

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
