//! Static key pairs and public keys: generation, the key file, and the text form of a pin.

use std::fmt;
use std::str::FromStr;

use curve25519_dalek::MontgomeryPoint;
use zeroize::Zeroize;

use super::{Error, NOISE_XX};

/// Bytes of an X25519 key, public or private.
pub const KEY_LEN: usize = 32;

/// An X25519 public key. Its text form is 64 lowercase hex digits; parsing also accepts
/// uppercase and surrounding whitespace.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct PublicKey([u8; KEY_LEN]);

impl PublicKey {
    pub const fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    pub const fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.0
    }

    /// Parses a pinned key given by a person (a flag or a config file): `what` names it in the
    /// error, e.g. "the --server-key value".
    pub fn parse(text: &str, what: &'static str) -> Result<Self, Error> {
        Ok(Self(parse_hex_key(text.trim(), what)?))
    }

    pub(crate) fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(Self)
    }
}

impl fmt::Display for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({self})")
    }
}

impl FromStr for PublicKey {
    type Err = Error;

    fn from_str(text: &str) -> Result<Self, Error> {
        Self::parse(text, "the public key")
    }
}

fn parse_hex_key(text: &str, what: &'static str) -> Result<[u8; KEY_LEN], Error> {
    let chars = text.chars().count();
    if chars != 2 * KEY_LEN {
        return Err(Error::KeyLength {
            what,
            expected: 2 * KEY_LEN,
            got: chars,
        });
    }
    let mut key = [0; KEY_LEN];
    hex::decode_to_slice(text, &mut key).map_err(|_| Error::KeyNotHex { what })?;
    Ok(key)
}

/// A static X25519 key pair: the server's identity, or a client's or cluster node's. The private
/// half is wiped from memory on drop and never printed by `Debug`.
#[derive(Clone)]
pub struct Keypair {
    private: [u8; KEY_LEN],
    public: PublicKey,
}

impl Keypair {
    /// A fresh key pair from the operating system's random number generator.
    pub fn generate() -> Result<Self, Error> {
        let params = NOISE_XX
            .parse()
            .expect("NOISE_XX is a valid Noise protocol name");
        let mut pair = snow::Builder::new(params)
            .generate_keypair()
            .map_err(Error::Random)?;
        let mut private = [0; KEY_LEN];
        private.copy_from_slice(&pair.private);
        pair.private.zeroize();
        let keypair = Self::from_private(private);
        debug_assert_eq!(keypair.public.as_bytes()[..], pair.public[..]);
        Ok(keypair)
    }

    /// The key pair of a private key (its public half is derived, as X25519 does: clamped).
    pub fn from_private(private: [u8; KEY_LEN]) -> Self {
        let public = PublicKey(MontgomeryPoint::mul_base_clamped(private).to_bytes());
        Self { private, public }
    }

    pub fn public(&self) -> PublicKey {
        self.public
    }

    pub(crate) fn private(&self) -> &[u8; KEY_LEN] {
        &self.private
    }

    /// The key file: two `name = hex` lines under a comment. The caller writes it with mode
    /// 0600 (the server keeps it in its data directory).
    pub fn to_file_text(&self) -> String {
        format!(
            "# Courier Noise static key pair (X25519). SECRET: keep this file mode 0600;\n\
             # clients pin the public key (`courier keys show`).\n\
             private = {}\n\
             public = {}\n",
            hex::encode(self.private),
            self.public
        )
    }

    /// Reads a key file written by [`Keypair::to_file_text`]: blank lines and `#` comments are
    /// skipped; the public key must be the one the private key derives.
    pub fn from_file_text(text: &str) -> Result<Self, Error> {
        let mut private = None;
        let mut public = None;
        for (index, raw) in text.lines().enumerate() {
            let line = index + 1;
            let entry = raw.trim();
            if entry.is_empty() || entry.starts_with('#') {
                continue;
            }
            let Some((name, value)) = entry.split_once('=') else {
                return Err(Error::KeyFile {
                    line,
                    problem: "expected `name = value`",
                });
            };
            let (slot, what) = match name.trim() {
                "private" => (&mut private, "the key file's private key"),
                "public" => (&mut public, "the key file's public key"),
                _ => {
                    return Err(Error::KeyFile {
                        line,
                        problem: "unknown name (only `private` and `public` are allowed)",
                    })
                }
            };
            if slot.is_some() {
                return Err(Error::KeyFile {
                    line,
                    problem: "the name appears twice",
                });
            }
            *slot = Some(parse_hex_key(value.trim(), what)?);
        }
        let private = private.ok_or(Error::KeyFileMissing("private"))?;
        let public = public.ok_or(Error::KeyFileMissing("public"))?;
        let keypair = Self::from_private(private);
        if keypair.public.0 != public {
            return Err(Error::KeyFileMismatch);
        }
        Ok(keypair)
    }
}

impl Drop for Keypair {
    fn drop(&mut self) {
        self.private.zeroize();
    }
}

impl fmt::Debug for Keypair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keypair")
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_differ_and_survive_the_key_file() {
        let a = Keypair::generate().unwrap();
        let b = Keypair::generate().unwrap();
        assert_ne!(a.public(), b.public());
        let text = a.to_file_text();
        let back = Keypair::from_file_text(&text).unwrap();
        assert_eq!(back.public(), a.public());
        assert_eq!(back.private(), a.private());
    }

    #[test]
    fn public_key_text_round_trips_and_accepts_case_and_whitespace() {
        let key = Keypair::from_private([7; KEY_LEN]).public();
        let text = key.to_string();
        assert_eq!(text.len(), 64);
        assert_eq!(text, text.to_lowercase());
        assert_eq!(text.parse::<PublicKey>().unwrap(), key);
        let shouted = format!("  {}\n", text.to_uppercase());
        assert_eq!(PublicKey::parse(&shouted, "the pin").unwrap(), key);
    }

    #[test]
    fn bad_pins_are_refused_with_what_was_wrong() {
        let short = PublicKey::parse("abcd", "the --server-key value").unwrap_err();
        assert_eq!(
            short.to_string(),
            "the --server-key value must be 64 hex digits, got 4 characters"
        );
        let not_hex = PublicKey::parse(&"zz".repeat(32), "the pin").unwrap_err();
        assert_eq!(not_hex, Error::KeyNotHex { what: "the pin" });
        // 64 bytes but 32 characters: counted as characters, as the person typed them.
        let wide = PublicKey::parse(&"é".repeat(32), "the pin").unwrap_err();
        assert_eq!(
            wide,
            Error::KeyLength {
                what: "the pin",
                expected: 64,
                got: 32
            }
        );
    }

    #[test]
    fn damaged_key_files_are_refused() {
        let pair = Keypair::from_private([9; KEY_LEN]);
        let other = Keypair::from_private([10; KEY_LEN]);
        let text = pair.to_file_text();
        let swapped = text.replace(&pair.public().to_string(), &other.public().to_string());
        assert_eq!(
            Keypair::from_file_text(&swapped).unwrap_err(),
            Error::KeyFileMismatch
        );
        let no_public = text
            .lines()
            .filter(|l| !l.starts_with("public"))
            .collect::<Vec<_>>()
            .join("\n");
        assert_eq!(
            Keypair::from_file_text(&no_public).unwrap_err(),
            Error::KeyFileMissing("public")
        );
        let twice = format!("{text}{text}");
        assert!(matches!(
            Keypair::from_file_text(&twice).unwrap_err(),
            Error::KeyFile { line: 7, .. }
        ));
        assert!(matches!(
            Keypair::from_file_text("secret = 00").unwrap_err(),
            Error::KeyFile { line: 1, .. }
        ));
    }

    #[test]
    fn debug_never_shows_the_private_key() {
        let pair = Keypair::from_private([0xab; KEY_LEN]);
        let debug = format!("{pair:?}");
        assert!(!debug.contains(&"ab".repeat(8)), "{debug}");
        assert!(debug.contains(&pair.public().to_string()));
    }
}
