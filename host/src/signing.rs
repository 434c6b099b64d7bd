//! Signed plugins: minisign keys and signatures, so that what runs is what a
//! trusted key signed.
//!
//! The format is minisign's own (Ed25519 over the file's BLAKE2b-512 hash, with
//! a signed "trusted comment"), made with the `minisign` crate, so the
//! `minisign` tool verifies what `sluice plugin sign` writes and signs what the
//! daemon accepts. A plugin `name.wasm` is signed by `name.wasm.minisig`
//! beside it.
//!
//! With `trusted_keys` in `[daemon]`, a plugin file is accepted only when its
//! signature verifies, by one of those keys, against the very bytes that are
//! loaded (the caller reads the file once and passes the bytes both here and to
//! the runtime: nothing can change the file between the check and the load).

use std::fmt;
use std::io::{Cursor, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use minisign::{KeyPair, PublicKey, SecretKey, SecretKeyBox, SignatureBox};

/// What a plugin's signature file name adds to the plugin's (`x.wasm.minisig`).
pub const SIGNATURE_SUFFIX: &str = ".minisig";

/// Where the signature of `file` is: `file` + `.minisig`.
pub fn signature_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_os_string();
    name.push(SIGNATURE_SUFFIX);
    PathBuf::from(name)
}

/// A key's id as minisign shows it (`minisign public key: 0123456789ABCDEF`):
/// the 8-byte key number, read little-endian, in upper-case hex.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct KeyId([u8; 8]);

impl KeyId {
    fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(KeyId)
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016X}", u64::from_le_bytes(self.0))
    }
}

/// A public key plugins may be signed with (`trusted_keys`).
#[derive(Clone)]
pub struct TrustedKey {
    /// The file it was read from (a minisign `.pub` file).
    pub path: PathBuf,
    /// Its key id.
    pub id: KeyId,
    /// The key, base64 as in the file: what two keys are compared by.
    base64: String,
    key: PublicKey,
}

impl PartialEq for TrustedKey {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path && self.base64 == other.base64
    }
}

impl Eq for TrustedKey {}

impl fmt::Debug for TrustedKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustedKey")
            .field("path", &self.path)
            .field("id", &self.id.to_string())
            .finish()
    }
}

impl TrustedKey {
    /// Reads a minisign public key file (`untrusted comment: ...` then the
    /// base64 key), as `minisign -G` and `sluice plugin keygen` write them. The
    /// error says what is wrong, without the path (the caller names it).
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?;
        Self::parse(path, &text)
    }

    fn parse(path: &Path, text: &str) -> Result<Self, String> {
        let not_a_key = |why: &str| {
            format!(
                "not a minisign public key ({why}); expected the `.pub` file of `sluice plugin keygen` or `minisign -G`, an `untrusted comment:` line then the base64 key"
            )
        };
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        let first = lines.next().ok_or_else(|| not_a_key("the file is empty"))?;
        // minisign's files have a comment line; a bare base64 key (as given to
        // `minisign -P`) is accepted too.
        let base64 = if first.starts_with("untrusted comment:") {
            lines
                .next()
                .ok_or_else(|| not_a_key("no key after the comment line"))?
        } else {
            first
        };
        let key = PublicKey::from_base64(base64).map_err(|e| not_a_key(&e.to_string()))?;
        let id = KeyId::from_slice(key.keynum()).ok_or_else(|| not_a_key("bad key id"))?;
        Ok(Self {
            path: path.to_path_buf(),
            id,
            base64: base64.to_string(),
            key,
        })
    }

    /// The key file's name (`ci-2026.pub`), as logs and listings show it.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// Who signed a plugin file: the trusted key and the signature's trusted
/// comment (signed too, so it cannot be changed without breaking the
/// signature).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signer {
    /// The key's file name.
    pub key_file: String,
    /// The key's id.
    pub key_id: KeyId,
    /// The signature's trusted comment (`timestamp:... file:...` by default).
    pub trusted_comment: String,
}

impl fmt::Display for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} ({}), trusted comment {:?}",
            self.key_file, self.key_id, self.trusted_comment
        )
    }
}

/// Why a plugin file's signature was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    /// No `.minisig` beside the file.
    #[error(
        "not signed: there is no {} beside it, and `trusted_keys` requires a signature by a trusted key (sign it with `sluice plugin sign` and deploy both files)",
        signature.display()
    )]
    Missing {
        /// Where the signature was expected.
        signature: PathBuf,
    },
    /// The signature file exists but cannot be read.
    #[error("cannot read its signature {}: {source}", signature.display())]
    Unreadable {
        /// The signature file.
        signature: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The signature file is not a minisign signature.
    #[error("its signature {} is not a minisign signature: {reason}", signature.display())]
    Malformed {
        /// The signature file.
        signature: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Signed, but by a key that is not trusted.
    #[error("signed by the untrusted key {key_id}; trusted keys: {trusted}")]
    UntrustedKey {
        /// The key that signed it.
        key_id: KeyId,
        /// The trusted keys (`file (id)`).
        trusted: String,
    },
    /// A trusted key's signature that does not verify: the file (or the
    /// signature's trusted comment) changed after signing.
    #[error(
        "its signature by the trusted key {key_file} ({key_id}) does not match the file: the file was changed after it was signed, or the signature is another file's ({reason})"
    )]
    Mismatch {
        /// The key's file name.
        key_file: String,
        /// The key's id.
        key_id: KeyId,
        /// What minisign said.
        reason: String,
    },
}

/// Reads the signature beside `file`.
pub fn read_signature(file: &Path) -> Result<String, SignatureError> {
    let signature = signature_path(file);
    std::fs::read_to_string(&signature).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            SignatureError::Missing { signature }
        } else {
            SignatureError::Unreadable { signature, source }
        }
    })
}

/// Whether `signature` (the text of `file`'s `.minisig`) is a valid signature
/// of `bytes` by one of `keys`; the signer if so.
pub fn verify(
    file: &Path,
    bytes: &[u8],
    signature: &str,
    keys: &[TrustedKey],
) -> Result<Signer, SignatureError> {
    let malformed = |reason: String| SignatureError::Malformed {
        signature: signature_path(file),
        reason,
    };
    let sig = SignatureBox::from_string(signature).map_err(|e| malformed(e.to_string()))?;
    if !sig.is_prehashed() {
        // Legacy minisign signatures (before 0.8) sign the whole file rather
        // than its hash; minisign itself refuses them unless asked.
        return Err(malformed(
            "a legacy (not pre-hashed) signature; sign again with `sluice plugin sign` or minisign 0.8 or later".into(),
        ));
    }
    let key_id = KeyId::from_slice(sig.keynum()).ok_or_else(|| malformed("bad key id".into()))?;
    let Some(key) = keys.iter().find(|k| k.id == key_id) else {
        let trusted: Vec<String> = keys
            .iter()
            .map(|k| format!("{} ({})", k.file_name(), k.id))
            .collect();
        return Err(SignatureError::UntrustedKey {
            key_id,
            trusted: trusted.join(", "),
        });
    };
    minisign::verify(&key.key, &sig, Cursor::new(bytes), true, false, false).map_err(|e| {
        SignatureError::Mismatch {
            key_file: key.file_name(),
            key_id,
            reason: e.to_string(),
        }
    })?;
    let trusted_comment = sig
        .trusted_comment()
        .map_err(|e| malformed(e.to_string()))?;
    Ok(Signer {
        key_file: key.file_name(),
        key_id,
        trusted_comment,
    })
}

/// Reads `file`'s signature and verifies it against `bytes` (the file's
/// content, as read once by the caller).
pub fn check(file: &Path, bytes: &[u8], keys: &[TrustedKey]) -> Result<Signer, SignatureError> {
    verify(file, bytes, &read_signature(file)?, keys)
}

/// A new key pair, written to `secret_key` (mode 0600) and `public_key`
/// (0644). Neither file may exist yet (a key is not overwritten by accident:
/// remove it first). The secret key has no password: it is meant for a CI
/// secret store, which protects it instead.
pub fn keygen(secret_key: &Path, public_key: &Path) -> anyhow::Result<KeyId> {
    for path in [secret_key, public_key] {
        if path.exists() {
            anyhow::bail!(
                "{} exists already; remove it first to replace that key",
                path.display()
            );
        }
    }
    let KeyPair { pk, sk } =
        KeyPair::generate_unencrypted_keypair().context("generating a key pair")?;
    let id = KeyId::from_slice(pk.keynum()).context("the new key's id")?;
    let sk_box = sk
        .to_box(Some(&format!("sluice secret key {id} (no password)")))
        .context("encoding the secret key")?;
    let pk_box = pk.to_box().context("encoding the public key")?;
    write_new(secret_key, sk_box.to_string().as_bytes(), 0o600)?;
    if let Err(e) = write_new(public_key, pk_box.to_string().as_bytes(), 0o644) {
        // Half a key pair is of no use; leave nothing behind.
        let _ = std::fs::remove_file(secret_key);
        return Err(e);
    }
    Ok(id)
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing {}", path.display()))
}

/// What [`sign`] wrote.
#[derive(Debug)]
pub struct Signed {
    /// The signature file.
    pub signature: PathBuf,
    /// The key's id.
    pub key_id: KeyId,
    /// The trusted comment.
    pub trusted_comment: String,
}

/// Signs `file` with the secret key in `secret_key`, writing `file.minisig`
/// (through `file.minisig.tmp` and a rename, so a watching daemon never reads
/// half a signature). The trusted comment defaults to minisign's own
/// (`timestamp:<unix seconds>\tfile:<name>\thashed`). A password-protected key
/// (`minisign -G` without `-W`) asks for its password on the terminal.
pub fn sign(
    file: &Path,
    secret_key: &Path,
    trusted_comment: Option<&str>,
) -> anyhow::Result<Signed> {
    let sk = read_secret_key(secret_key)?;
    let pk = PublicKey::from_secret_key(&sk)
        .with_context(|| format!("{}: deriving the public key", secret_key.display()))?;
    let key_id = KeyId::from_slice(sk.keynum()).context("the key's id")?;
    let bytes = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let comment = match trusted_comment {
        Some(c) => c.to_string(),
        None => {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0);
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("timestamp:{now}\tfile:{name}\thashed")
        }
    };
    if comment.contains(['\n', '\r']) {
        anyhow::bail!("the trusted comment must be one line");
    }
    let sig = minisign::sign(
        Some(&pk),
        &sk,
        Cursor::new(&bytes),
        Some(&comment),
        Some(&format!("signature from sluice secret key {key_id}")),
    )
    .with_context(|| format!("signing {}", file.display()))?;
    let signature = signature_path(file);
    let mut tmp = signature.clone().into_os_string();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, sig.to_string()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &signature)
        .with_context(|| format!("renaming {} to {}", tmp.display(), signature.display()))?;
    Ok(Signed {
        signature,
        key_id,
        trusted_comment: comment,
    })
}

fn read_secret_key(path: &Path) -> anyhow::Result<SecretKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the secret key {}", path.display()))?;
    let not_a_key = || {
        format!(
            "{}: not a minisign secret key (expected the secret key file of `sluice plugin keygen` or `minisign -G`)",
            path.display()
        )
    };
    if text.lines().count() < 2 || !text.starts_with("untrusted comment:") {
        anyhow::bail!(not_a_key());
    }
    let encoded = SecretKeyBox::from_string(&text).with_context(not_a_key)?;
    // minisign's box decoder tells an unencrypted key from an encrypted one
    // only by refusing the other kind; try the one that needs no password first.
    match encoded.clone().into_unencrypted_secret_key() {
        Ok(sk) => Ok(sk),
        Err(e) if e.to_string().contains("encrypted") => encoded
            .into_secret_key(None)
            .with_context(|| format!("{}: decrypting the secret key", path.display())),
        Err(e) => Err(anyhow::anyhow!("{}: {e}", not_a_key())),
    }
}

/// A public key file's text for `key` (used by tests that make keys without
/// files).
#[cfg(test)]
fn public_key_text(key: &PublicKey) -> String {
    key.to_box().expect("encodes").to_string()
}

#[cfg(test)]
mod tests {

    use super::*;

    /// A key pair in `dir` as `name.key` / `name.pub`, and the trusted key.
    fn key(dir: &Path, name: &str) -> (PathBuf, TrustedKey) {
        let secret = dir.join(format!("{name}.key"));
        let public = dir.join(format!("{name}.pub"));
        let id = keygen(&secret, &public).unwrap();
        let trusted = TrustedKey::read(&public).unwrap();
        assert_eq!(trusted.id, id);
        (secret, trusted)
    }

    fn plugin_file(dir: &Path, bytes: &[u8]) -> PathBuf {
        let file = dir.join("p.wasm");
        std::fs::write(&file, bytes).unwrap();
        file
    }

    #[test]
    fn a_signed_file_verifies_with_its_key_and_comment() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, trusted) = key(dir.path(), "ci");
        let file = plugin_file(dir.path(), b"\0asm plugin");
        let signed = sign(&file, &secret, Some("build 42 of json-source")).unwrap();
        assert_eq!(signed.signature, dir.path().join("p.wasm.minisig"));
        let signer = check(&file, b"\0asm plugin", std::slice::from_ref(&trusted)).unwrap();
        assert_eq!(signer.key_file, "ci.pub");
        assert_eq!(signer.key_id, trusted.id);
        assert_eq!(signer.trusted_comment, "build 42 of json-source");
    }

    #[test]
    fn the_default_comment_is_minisigns() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, trusted) = key(dir.path(), "ci");
        let file = plugin_file(dir.path(), b"x");
        sign(&file, &secret, None).unwrap();
        let signer = check(&file, b"x", &[trusted]).unwrap();
        assert!(
            signer.trusted_comment.starts_with("timestamp:")
                && signer.trusted_comment.ends_with("\tfile:p.wasm\thashed"),
            "{:?}",
            signer.trusted_comment
        );
    }

    #[test]
    fn keygen_writes_a_private_secret_key_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (secret, _) = key(dir.path(), "ci");
        let mode = std::fs::metadata(&secret).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let err = keygen(&secret, &dir.path().join("other.pub")).unwrap_err();
        assert!(err.to_string().contains("exists already"), "{err}");
        assert!(!dir.path().join("other.pub").exists());
    }

    #[test]
    fn an_unsigned_file_is_refused_naming_the_missing_signature() {
        let dir = tempfile::tempdir().unwrap();
        let (_, trusted) = key(dir.path(), "ci");
        let file = plugin_file(dir.path(), b"x");
        let err = check(&file, b"x", &[trusted]).unwrap_err();
        assert!(matches!(err, SignatureError::Missing { .. }));
        assert!(
            err.to_string().starts_with("not signed: there is no ")
                && err.to_string().contains("p.wasm.minisig beside it"),
            "{err}"
        );
    }

    #[test]
    fn a_file_signed_by_an_untrusted_key_is_refused_with_that_keys_id() {
        let dir = tempfile::tempdir().unwrap();
        let (_, trusted) = key(dir.path(), "ci");
        let (other_secret, other) = key(dir.path(), "laptop");
        let file = plugin_file(dir.path(), b"x");
        sign(&file, &other_secret, None).unwrap();
        let err = check(&file, b"x", std::slice::from_ref(&trusted)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "signed by the untrusted key {}; trusted keys: ci.pub ({})",
                other.id, trusted.id
            )
        );
    }

    #[test]
    fn a_file_changed_after_signing_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, trusted) = key(dir.path(), "ci");
        let file = plugin_file(dir.path(), b"the signed bytes");
        sign(&file, &secret, None).unwrap();
        let err = check(&file, b"the changed bytes", std::slice::from_ref(&trusted)).unwrap_err();
        assert!(matches!(err, SignatureError::Mismatch { .. }), "{err:?}");
        assert!(
            err.to_string().starts_with(&format!(
                "its signature by the trusted key ci.pub ({}) does not match the file",
                trusted.id
            )),
            "{err}"
        );
    }

    #[test]
    fn a_changed_trusted_comment_breaks_the_signature() {
        let dir = tempfile::tempdir().unwrap();
        let (secret, trusted) = key(dir.path(), "ci");
        let file = plugin_file(dir.path(), b"x");
        let signed = sign(&file, &secret, Some("version 1")).unwrap();
        let text = std::fs::read_to_string(&signed.signature).unwrap();
        let forged = text.replace("trusted comment: version 1", "trusted comment: version 9");
        assert_ne!(text, forged);
        let err = verify(&file, b"x", &forged, &[trusted]).unwrap_err();
        assert!(matches!(err, SignatureError::Mismatch { .. }), "{err:?}");
    }

    #[test]
    fn garbage_is_not_a_signature_nor_a_key() {
        let dir = tempfile::tempdir().unwrap();
        let (_, trusted) = key(dir.path(), "ci");
        let file = plugin_file(dir.path(), b"x");
        let err = verify(&file, b"x", "hello\nworld\n", &[trusted]).unwrap_err();
        assert!(
            err.to_string()
                .contains("p.wasm.minisig is not a minisign signature"),
            "{err}"
        );
        let err = TrustedKey::parse(Path::new("k.pub"), "untrusted comment: x\nnot base64\n")
            .unwrap_err();
        assert!(err.starts_with("not a minisign public key"), "{err}");
        let err = TrustedKey::parse(Path::new("k.pub"), "").unwrap_err();
        assert!(err.contains("the file is empty"), "{err}");
    }

    #[test]
    fn a_bare_base64_key_is_a_key_too() {
        let KeyPair { pk, .. } = KeyPair::generate_unencrypted_keypair().unwrap();
        let text = public_key_text(&pk);
        let base64 = text.lines().nth(1).unwrap();
        let from_file = TrustedKey::parse(Path::new("a.pub"), &text).unwrap();
        let bare = TrustedKey::parse(Path::new("a.pub"), base64).unwrap();
        assert_eq!(from_file, bare);
        assert!(text.contains(&format!("minisign public key: {}", from_file.id)));
    }

    #[test]
    fn a_secret_key_file_that_is_not_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (_, trusted) = key(dir.path(), "ci");
        let file = plugin_file(dir.path(), b"x");
        let err = sign(&file, &trusted.path, None).unwrap_err();
        assert!(
            format!("{err:#}").contains("not a minisign secret key"),
            "{err:#}"
        );
    }
}
