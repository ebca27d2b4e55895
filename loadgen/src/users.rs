//! The users a run connects as: read from a provisioned file, or registered on the spot.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use courier_protocol as proto;
use courier_protocol::session::Encryption;

use crate::blocking::SessionConn;
use crate::{Error, Result};

/// One account the loadgen can RESUME as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub id: u64,
    pub handle: String,
    pub token: Vec<u8>,
}

/// Parses the output of `courier admin provision`: one `user_id handle token_hex` per line;
/// blank lines and lines starting with `#` are skipped.
pub fn parse_users(text: &str, path: &Path) -> Result<Vec<UserRecord>> {
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || Error::UsersLine {
            path: path.to_path_buf(),
            line: n + 1,
        };
        let mut f = line.split_whitespace();
        let id = f.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
        let handle = f.next().ok_or_else(bad)?.to_string();
        let token = f.next().and_then(|v| hex::decode(v).ok()).ok_or_else(bad)?;
        out.push(UserRecord { id, handle, token });
    }
    Ok(out)
}

pub fn read_users_file(path: &Path) -> Result<Vec<UserRecord>> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::UsersFile {
        path: path.to_path_buf(),
        source,
    })?;
    parse_users(&text, path)
}

/// The users file line of a user, as `courier admin provision` writes it.
pub fn format_user(u: &UserRecord) -> String {
    format!("{} {} {}", u.id, u.handle, hex::encode(&u.token))
}

/// The password every registered loadgen user gets.
pub const PASSWORD: &str = "loadgen-password";

/// Registers `n` users named `{prefix}{i}` with REGISTER, on `threads` connections at a time.
pub fn register_users(
    n: usize,
    server: SocketAddr,
    encryption: Encryption,
    prefix: &str,
    threads: usize,
) -> Result<Vec<UserRecord>> {
    let threads = threads.clamp(1, n.max(1));
    let results: Vec<Result<Vec<(usize, UserRecord)>>> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                scope.spawn(move || {
                    (t..n)
                        .step_by(threads)
                        .map(|i| {
                            register_one(server, encryption, &format!("{prefix}{i}"))
                                .map(|u| (i, u))
                        })
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("register thread panicked"))
            .collect()
    });
    let mut all = Vec::with_capacity(n);
    for r in results {
        all.extend(r?);
    }
    all.sort_by_key(|(i, _)| *i);
    Ok(all.into_iter().map(|(_, u)| u).collect())
}

fn register_one(server: SocketAddr, encryption: Encryption, handle: &str) -> Result<UserRecord> {
    let fail = |e: Error| Error::Register {
        handle: handle.to_string(),
        server: server.to_string(),
        reason: e.to_string(),
    };
    let mut conn = SessionConn::connect(
        server,
        encryption,
        "courier-loadgen",
        Duration::from_secs(30),
    )
    .map_err(fail)?;
    let register = proto::Register {
        handle: handle.into(),
        password: PASSWORD.into(),
        device: "loadgen".into(),
    };
    let auth = conn.authenticate(register.into()).map_err(fail)?;
    Ok(UserRecord {
        id: auth.user,
        handle: auth.handle,
        token: auth.token.to_vec(),
    })
}

/// A token's bytes for a RESUME frame.
pub fn token_bytes(u: &UserRecord) -> Bytes {
    Bytes::copy_from_slice(&u.token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_provisioned_lines_and_reports_the_bad_one() {
        let p = Path::new("users.txt");
        let users = parse_users("# comment\n\n1 load0 00ff\n2 load1 abcd\n", p).unwrap();
        assert_eq!(users.len(), 2);
        assert_eq!(
            users[0],
            UserRecord {
                id: 1,
                handle: "load0".into(),
                token: vec![0, 255]
            }
        );
        assert_eq!(format_user(&users[1]), "2 load1 abcd");
        match parse_users("1 a 00\nx b 00\n", p) {
            Err(Error::UsersLine { line: 2, .. }) => {}
            other => panic!("expected a line-2 error, got {other:?}"),
        }
        assert!(parse_users("1 a zz\n", p).is_err());
    }
}
