//! The server's Noise static key pair: created on first start in the data directory, read on
//! every later one, printed by `courier keys show` (NOISE.md section 4).
//!
//! The file is [`KEY_FILE`] in the data directory, mode 0600, in the text form of
//! [`Keypair::to_file_text`]. A file that others may read (any of the group or other mode bits),
//! cannot be read, or does not parse is refused with a message that says what to do: the server
//! never replaces an existing key, since every client that pinned it would then refuse the
//! server.

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use courier_protocol::noise::{self, Keypair};

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "noise.key";

/// Why the key pair cannot be read or created.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "{path} has mode {mode:04o}: it holds the server's private key, so only its owner may \
         read it. Run `chmod 600 {path}` (and consider the key exposed if others could read \
         it: then delete it and pin the new key on every client)"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("cannot read the server key {path}: {source}. Check its owner and permissions")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot create the server key {path}: {source}. Check that the data directory is writable"
    )]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the server key {path} is not usable: {source}")]
    Parse { path: PathBuf, source: noise::Error },
    #[error(
        "no server key in {dir}: the server creates {KEY_FILE} there on its first start \
         (without --insecure-plaintext); start it once, or check --data-dir"
    )]
    Missing { dir: PathBuf },
    #[error("cannot generate a key: {0}")]
    Generate(noise::Error),
}

/// The path of the key file in `data_dir`.
pub fn path(data_dir: &Path) -> PathBuf {
    data_dir.join(KEY_FILE)
}

/// Reads the key pair in `data_dir`, or creates it (mode 0600) if there is none. Creating the
/// data directory is left to the caller (the store does it).
pub fn load_or_create(data_dir: &Path) -> Result<Keypair, Error> {
    match load(data_dir) {
        Err(Error::Missing { .. }) => create(data_dir),
        other => other,
    }
}

/// Reads the key pair in `data_dir`; [`Error::Missing`] when there is none.
pub fn load(data_dir: &Path) -> Result<Keypair, Error> {
    let path = path(data_dir);
    let meta = match fs::metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            return Err(Error::Missing {
                dir: data_dir.to_path_buf(),
            })
        }
        Err(source) => return Err(Error::Read { path, source }),
    };
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(Error::TooOpen { path, mode });
    }
    let text = fs::read_to_string(&path).map_err(|source| Error::Read {
        path: path.clone(),
        source,
    })?;
    Keypair::from_file_text(&text).map_err(|source| Error::Parse { path, source })
}

/// Creates a fresh key pair in `data_dir` with mode 0600. Refuses to overwrite a file (two
/// servers starting at once on one directory: the second reads the first's key).
fn create(data_dir: &Path) -> Result<Keypair, Error> {
    let path = path(data_dir);
    let keypair = Keypair::generate().map_err(Error::Generate)?;
    let created = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path);
    let mut file = match created {
        Ok(file) => file,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => return load(data_dir),
        Err(source) => return Err(Error::Create { path, source }),
    };
    let written = file
        .write_all(keypair.to_file_text().as_bytes())
        .and_then(|()| file.sync_all());
    if let Err(source) = written {
        // A half-written key would stop every later start: remove it and say why.
        let _ = fs::remove_file(&path);
        return Err(Error::Create { path, source });
    }
    tracing::info!(path = %path.display(), "created the server's Noise key pair");
    Ok(keypair)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_is_created_once_with_mode_0600_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(load(dir.path()), Err(Error::Missing { .. })));
        let first = load_or_create(dir.path()).unwrap();
        let mode = fs::metadata(path(dir.path())).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = load_or_create(dir.path()).unwrap();
        assert_eq!(first.public(), again.public(), "never replaced");
    }

    #[test]
    fn a_key_others_can_read_is_refused_with_the_fix() {
        let dir = tempfile::tempdir().unwrap();
        load_or_create(dir.path()).unwrap();
        let file = path(dir.path());
        fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, Error::TooOpen { mode: 0o644, .. }), "{err}");
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn a_damaged_key_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let file = path(dir.path());
        OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&file)
            .unwrap()
            .write_all(b"private = 12\n")
            .unwrap();
        let err = load_or_create(dir.path()).unwrap_err();
        assert!(matches!(err, Error::Parse { .. }), "{err}");
        assert_eq!(fs::read(&file).unwrap(), b"private = 12\n");
    }
}
