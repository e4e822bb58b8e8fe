//! The keys of callout mode (§12): the issuer's account key, whose seed (`SA…`) signs every
//! answer and whose public key (`A…`) nats-server names as `auth_callout.issuer`; and the
//! optional curve key (`SX…`/`X…`) that opens sealed requests and seals the answers.
//!
//! A seed is read from a file only that file's owner may read, and is never formatted: the
//! key types print `[redacted]` where the seed would be, and no error carries the file's
//! text — only its path, its mode, and the kind of seed it holds.
//!
//! The issuer's seed file may hold, instead of an nkey seed, the key's 32 random bytes in
//! standard base64 (44 characters, as `head -c 32 /dev/urandom | base64` or Helm's
//! `randBytes 32` make them): an ed25519 seed is 32 random bytes, and the nkey form only adds
//! a kind prefix and a checksum, which a chart template cannot compute. Both give the same
//! kind of account key.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use nkeys::{KeyPair, KeyPairType, XKey};
use zeroize::Zeroizing;

/// Why a seed file gave no key. Names the file and what is wrong with it, never its text.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{} is readable by group or others (mode {mode:04o}): a seed file must be readable by its owner only (chmod 600)",
        path.display()
    )]
    Readable { path: PathBuf, mode: u32 },
    #[error("{} does not hold {expected}", path.display())]
    NotASeed {
        path: PathBuf,
        expected: &'static str,
    },
    #[error("{} holds {found}, not {expected}", path.display())]
    WrongKind {
        path: PathBuf,
        expected: &'static str,
        found: &'static str,
    },
}

/// The account key that signs answers. Always holds its seed.
#[derive(Clone)]
pub struct IssuerKey(KeyPair);

/// The curve key that opens sealed requests and seals answers. Always holds its seed.
#[derive(Clone)]
pub struct CurveKey(XKey);

/// The keys an answer needs: the issuer, and the curve key when nats-server seals requests
/// (`auth_callout.xkey`).
#[derive(Clone, Debug)]
pub struct Keys {
    pub issuer: IssuerKey,
    pub xkey: Option<CurveKey>,
}

impl Keys {
    /// Reads `issuer_seed_file` and, when given, `xkey_seed_file` (§12).
    pub fn from_files(issuer: &Path, xkey: Option<&Path>) -> Result<Self, KeyError> {
        Ok(Self {
            issuer: IssuerKey::from_seed_file(issuer)?,
            xkey: xkey.map(CurveKey::from_seed_file).transpose()?,
        })
    }
}

impl IssuerKey {
    /// A new random account key.
    pub fn generate() -> Self {
        Self(KeyPair::new_account())
    }

    /// The account seed in `path`: an nkey seed (`SA…`), or the key's 32 random bytes in
    /// standard base64.
    pub fn from_seed_file(path: &Path) -> Result<Self, KeyError> {
        let text = read_owner_only(path)?;
        if let Some(raw) = raw_key(&text) {
            let pair = KeyPair::new_from_raw(KeyPairType::Account, *raw)
                .map_err(|_| not_a_seed(path, Kind::Account))?;
            return Ok(Self(pair));
        }
        let seed = nkey_seed(path, text, Kind::Account)?;
        let pair = KeyPair::from_seed(&seed).map_err(|_| not_a_seed(path, Kind::Account))?;
        Ok(Self(pair))
    }

    /// The public key (`A…`): `auth_callout.issuer`, and the `iss` of every answer.
    pub fn public_key(&self) -> String {
        self.0.public_key()
    }

    /// The seed, for `callout-keys` to print once. Wiped from memory when dropped.
    pub fn seed(&self) -> Zeroizing<String> {
        Zeroizing::new(
            self.0
                .seed()
                .expect("an IssuerKey is only made from a seed or generated with one"),
        )
    }

    /// An ed25519 signature of `message`.
    pub(crate) fn sign(&self, message: &[u8]) -> Vec<u8> {
        self.0
            .sign(message)
            .expect("an IssuerKey is only made from a seed or generated with one")
    }
}

impl CurveKey {
    /// A new random curve key.
    pub fn generate() -> Self {
        Self(XKey::new())
    }

    /// The curve seed (`SX…`) in `path`.
    pub fn from_seed_file(path: &Path) -> Result<Self, KeyError> {
        let text = read_owner_only(path)?;
        let seed = nkey_seed(path, text, Kind::Curve)?;
        let key = XKey::from_seed(&seed).map_err(|_| not_a_seed(path, Kind::Curve))?;
        Ok(Self(key))
    }

    /// The public key (`X…`): `auth_callout.xkey`.
    pub fn public_key(&self) -> String {
        self.0.public_key()
    }

    /// The seed, for `callout-keys` to print once. Wiped from memory when dropped.
    pub fn seed(&self) -> Zeroizing<String> {
        Zeroizing::new(
            self.0
                .seed()
                .expect("a CurveKey is only made from a seed or generated with one"),
        )
    }

    /// Opens what the holder of `sender` sealed to this key.
    pub(crate) fn open(&self, sealed: &[u8], sender: &XKey) -> Option<Vec<u8>> {
        self.0.open(sealed, sender).ok()
    }

    /// Seals `message` to `recipient`, who opens it with this key's public key.
    pub(crate) fn seal(&self, message: &[u8], recipient: &XKey) -> Vec<u8> {
        self.0
            .seal(message, recipient)
            .expect("sealing with a key that holds its seed cannot fail (nkeys: SalsaBox)")
    }
}

impl fmt::Debug for IssuerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IssuerKey")
            .field("public", &self.public_key())
            .field("seed", &Redacted)
            .finish()
    }
}

impl fmt::Debug for CurveKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CurveKey")
            .field("public", &self.public_key())
            .field("seed", &Redacted)
            .finish()
    }
}

/// Prints `[redacted]` where a seed would be.
struct Redacted;

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The kinds of seed this program reads.
#[derive(Clone, Copy)]
enum Kind {
    Account,
    Curve,
}

impl Kind {
    /// The letter after the `S` of a seed of this kind.
    fn letter(self) -> u8 {
        match self {
            Kind::Account => b'A',
            Kind::Curve => b'X',
        }
    }

    fn expected(self) -> &'static str {
        match self {
            Kind::Account => "an account seed (SA…)",
            Kind::Curve => "a curve seed (SX…)",
        }
    }

    /// What a file of this kind may hold, for the error when it holds neither.
    fn accepted(self) -> &'static str {
        match self {
            Kind::Account => "an account seed (SA…) nor 32 random bytes in base64 (44 characters)",
            Kind::Curve => "a curve seed (SX…)",
        }
    }
}

/// What a seed's second letter says it is (the letter marks the kind; it is no secret).
fn described(letter: u8) -> &'static str {
    match letter {
        b'A' => "an account seed (SA…)",
        b'X' => "a curve seed (SX…)",
        b'U' => "a user seed (SU…)",
        b'O' => "an operator seed (SO…)",
        b'N' => "a server seed (SN…)",
        b'C' => "a cluster seed (SC…)",
        _ => "a seed of another kind",
    }
}

fn not_a_seed(path: &Path, kind: Kind) -> KeyError {
    KeyError::NotASeed {
        path: path.to_owned(),
        expected: kind.accepted(),
    }
}

/// The text in `path`, surrounding whitespace trimmed, after checking that only the owner
/// may read the file. A file that is not UTF-8 reads as no text, which no kind accepts.
fn read_owner_only(path: &Path) -> Result<Zeroizing<String>, KeyError> {
    let read_error = |source| KeyError::Read {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(read_error)?;
    // The mode of the file opened, so the check and the read see the same file.
    let mode = file.metadata().map_err(read_error)?.permissions().mode() & 0o7777;
    if mode & 0o044 != 0 {
        return Err(KeyError::Readable {
            path: path.to_owned(),
            mode,
        });
    }
    let mut text = Zeroizing::new(String::new());
    match file.read_to_string(&mut text) {
        Ok(_) => Ok(Zeroizing::new(text.trim().to_owned())),
        // Not UTF-8: no text at all, which every kind refuses as not a seed.
        Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Ok(Zeroizing::new(String::new())),
        Err(e) => Err(read_error(e)),
    }
}

/// 32 bytes in standard base64 (padded or not), or `None`: the raw form of a key's seed.
fn raw_key(text: &str) -> Option<Zeroizing<[u8; 32]>> {
    use base64::Engine;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
    // An nkey seed is 58 characters of base32; 32 bytes in base64 are 43 or 44.
    if !(43..=44).contains(&text.len()) {
        return None;
    }
    let engine = if text.ends_with('=') {
        &STANDARD
    } else {
        &STANDARD_NO_PAD
    };
    let decoded = Zeroizing::new(engine.decode(text).ok()?);
    let mut raw = Zeroizing::new([0u8; 32]);
    if decoded.len() != raw.len() {
        return None;
    }
    raw.copy_from_slice(&decoded);
    Some(raw)
}

/// `text` when it is a well-formed nkey seed of `kind`.
fn nkey_seed(
    path: &Path,
    text: Zeroizing<String>,
    kind: Kind,
) -> Result<Zeroizing<String>, KeyError> {
    let seed = text;
    let (_, mut raw) = nkeys::decode_seed(&seed).map_err(|_| not_a_seed(path, kind))?;
    zeroize::Zeroize::zeroize(&mut raw);
    let letter = seed.as_bytes()[1];
    if letter != kind.letter() {
        return Err(KeyError::WrongKind {
            path: path.to_owned(),
            expected: kind.expected(),
            found: described(letter),
        });
    }
    Ok(seed)
}

/// The key type nkeys gives a public key, if `public` is one.
pub(crate) fn public_kind(public: &str) -> Option<KeyPairType> {
    KeyPair::from_public_key(public)
        .ok()
        .map(|k| k.key_pair_type())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn write(dir: &Path, name: &str, text: &str, mode: u32) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
        path
    }

    #[test]
    fn reads_seeds_of_the_right_kind_from_owner_only_files() {
        let dir = tempfile::tempdir().unwrap();
        let issuer = IssuerKey::generate();
        let xkey = CurveKey::generate();
        let issuer_path = write(
            dir.path(),
            "issuer",
            &format!("{}\n", *issuer.seed()),
            0o600,
        );
        let xkey_path = write(dir.path(), "xkey", &format!("  {}  ", *xkey.seed()), 0o400);
        let keys = Keys::from_files(&issuer_path, Some(&xkey_path)).unwrap();
        assert_eq!(keys.issuer.public_key(), issuer.public_key());
        assert!(keys.issuer.public_key().starts_with('A'));
        assert_eq!(keys.xkey.unwrap().public_key(), xkey.public_key());
        assert!(xkey.public_key().starts_with('X'));
        assert!(Keys::from_files(&issuer_path, None).unwrap().xkey.is_none());
    }

    #[test]
    fn refuses_a_file_group_or_others_may_read_naming_path_and_mode() {
        let dir = tempfile::tempdir().unwrap();
        let seed = IssuerKey::generate().seed();
        for (mode, shown) in [(0o644, "0644"), (0o640, "0640"), (0o604, "0604")] {
            let path = write(dir.path(), "issuer", &seed, mode);
            let err = IssuerKey::from_seed_file(&path).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, KeyError::Readable { .. }), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(text.contains(shown), "{text}");
            assert!(!text.contains(seed.as_str()), "{text}");
        }
        // Group- or other-writable but unreadable leaks nothing: accepted.
        let path = write(dir.path(), "issuer", &seed, 0o620);
        assert!(IssuerKey::from_seed_file(&path).is_ok());
    }

    #[test]
    fn refuses_a_seed_of_the_wrong_kind_without_printing_it() {
        let dir = tempfile::tempdir().unwrap();
        let user = KeyPair::new_user().seed().unwrap();
        let account = IssuerKey::generate().seed();
        let curve = CurveKey::generate().seed();
        type Read = fn(&Path) -> Result<(), KeyError>;
        let issuer: Read = |p| IssuerKey::from_seed_file(p).map(drop);
        let xkey: Read = |p| CurveKey::from_seed_file(p).map(drop);
        let cases = [
            (user.as_str(), "a user seed (SU…)", issuer),
            (curve.as_str(), "a curve seed (SX…)", issuer),
            (account.as_str(), "an account seed (SA…)", xkey),
        ];
        for (seed, found, read) in cases {
            let path = write(dir.path(), "seed", seed, 0o600);
            let err = read(&path).unwrap_err();
            let text = err.to_string();
            assert!(matches!(err, KeyError::WrongKind { .. }), "{text}");
            assert!(text.contains(found), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
            assert!(!text.contains(seed) && !format!("{err:?}").contains(seed));
        }
    }

    #[test]
    fn refuses_what_is_not_a_seed_without_printing_it() {
        let dir = tempfile::tempdir().unwrap();
        let seed = IssuerKey::generate().seed();
        // One character changed: the checksum no longer matches.
        let mut damaged = seed.as_bytes().to_vec();
        damaged[10] = if damaged[10] == b'A' { b'B' } else { b'A' };
        let damaged = String::from_utf8(damaged).unwrap();
        let public = IssuerKey::generate().public_key();
        for text in [damaged.as_str(), &public, "", "password", "\u{fffd}"] {
            let path = write(dir.path(), "seed", text, 0o600);
            let err = IssuerKey::from_seed_file(&path).unwrap_err();
            assert!(matches!(err, KeyError::NotASeed { .. }), "{err}");
            if !text.is_empty() {
                assert!(!err.to_string().contains(text) && !format!("{err:?}").contains(text));
            }
        }
        let path = dir.path().join("missing");
        let err = IssuerKey::from_seed_file(&path).unwrap_err();
        assert!(matches!(err, KeyError::Read { .. }), "{err}");
        assert!(err.to_string().contains("missing"), "{err}");
    }

    #[test]
    fn an_issuer_key_may_be_given_as_32_random_bytes_in_base64() {
        use base64::Engine;
        use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
        let dir = tempfile::tempdir().unwrap();
        let bytes: [u8; 32] = rand::random();
        let expected = KeyPair::new_from_raw(KeyPairType::Account, bytes).unwrap();
        // As Helm's `randBytes 32` and `head -c 32 /dev/urandom | base64` write it, padded
        // and with a newline; and without its padding.
        for text in [
            format!("{}\n", STANDARD.encode(bytes)),
            STANDARD_NO_PAD.encode(bytes),
        ] {
            let path = write(dir.path(), "issuer", &text, 0o400);
            let key = IssuerKey::from_seed_file(&path).unwrap();
            assert_eq!(key.public_key(), expected.public_key());
            assert!(key.public_key().starts_with('A'), "an account key");
            // The same key as the nkey seed of those bytes.
            let seed = key.seed();
            assert!(seed.starts_with("SA"), "an account seed");
            let path = write(dir.path(), "issuer.nk", &seed, 0o600);
            assert_eq!(
                IssuerKey::from_seed_file(&path).unwrap().public_key(),
                expected.public_key()
            );
        }
        // The raw form is read only as it is: a file others may read is refused all the same.
        let text = STANDARD.encode(bytes);
        let path = write(dir.path(), "issuer", &text, 0o440);
        let err = IssuerKey::from_seed_file(&path).unwrap_err();
        assert!(
            matches!(err, KeyError::Readable { mode: 0o440, .. }),
            "{err}"
        );
        assert!(!err.to_string().contains(&text), "{err}");
        // 31 or 33 bytes, or not base64: not a key, and the text is not repeated.
        let short = STANDARD.encode(&bytes[..31]);
        let long = STANDARD.encode([bytes.as_slice(), &[7]].concat());
        let mangled = format!("!{}", &text[1..]);
        for text in [short.as_str(), long.as_str(), mangled.as_str()] {
            let path = write(dir.path(), "issuer", text, 0o600);
            let err = IssuerKey::from_seed_file(&path).unwrap_err();
            assert!(matches!(err, KeyError::NotASeed { .. }), "{err}");
            assert!(
                err.to_string().contains("32 random bytes in base64"),
                "the error says what is accepted: {err}"
            );
            assert!(!err.to_string().contains(text) && !format!("{err:?}").contains(text));
        }
        // A curve key has no raw form: its file must hold an SX… seed.
        let path = write(dir.path(), "xkey", &text, 0o600);
        let err = CurveKey::from_seed_file(&path).unwrap_err();
        assert!(matches!(err, KeyError::NotASeed { .. }), "{err}");
        assert!(err.to_string().contains("a curve seed (SX…)"), "{err}");
    }

    #[test]
    fn debug_never_prints_a_seed() {
        let keys = Keys {
            issuer: IssuerKey::generate(),
            xkey: Some(CurveKey::generate()),
        };
        let issuer_seed = keys.issuer.seed();
        let xkey_seed = keys.xkey.as_ref().unwrap().seed();
        let debug = format!("{keys:?} {keys:#?}");
        assert!(!debug.contains(issuer_seed.as_str()), "{debug}");
        assert!(!debug.contains(xkey_seed.as_str()), "{debug}");
        assert_eq!(debug.matches("[redacted]").count(), 4, "{debug}");
        assert!(debug.contains(&keys.issuer.public_key()), "{debug}");
    }

    #[test]
    fn sealed_by_one_curve_key_opens_with_the_other() {
        let (a, b) = (CurveKey::generate(), CurveKey::generate());
        let a_public = XKey::from_public_key(&a.public_key()).unwrap();
        let b_public = XKey::from_public_key(&b.public_key()).unwrap();
        let sealed = a.seal(b"hello", &b_public);
        assert!(sealed.starts_with(b"xkv1"));
        assert_eq!(b.open(&sealed, &a_public).unwrap(), b"hello");
        assert_eq!(b.open(&sealed, &b_public), None, "wrong sender");
        let server = KeyPair::new_server().public_key();
        assert_eq!(public_kind(&server), Some(KeyPairType::Server));
        assert_eq!(public_kind("nonsense"), None);
    }
}
