//! Secrets at rest: the provider credentials a tenant configures (SMTP password, Twilio
//! and FCM tokens, webhook secrets, DKIM keys) are stored sealed with AES-256-GCM under a
//! key kept beside the token keys (`<data_dir>/keys/secrets.key`, mode 0600; every replica
//! of a service reads the same file).
//!
//! The key file holds one key per line, `<id> <base64 of 32 bytes>`: the first line seals,
//! every line opens. Rotating (`winback keys rotate-secrets`) puts a new key first and keeps
//! the old ones, so what they sealed still opens; a service re-seals its rows under the
//! current key at start (`needs_reseal`), after which the old lines may be deleted.
//!
//! A sealed value is `WBS1`, the key id's length and bytes, a 96-bit random nonce, then the
//! ciphertext with its tag; the key id is the associated data, so a value cannot be
//! passed off as sealed by another key.

use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine as _;

const MAGIC: &[u8; 4] = b"WBS1";
const KEY_LEN: usize = 32;

/// Why a secret could not be sealed or opened, or the key file not read.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// The key file could not be read, written or parsed.
    #[error("secrets key {path}: {reason}")]
    KeyFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A value is not sealed, or is sealed under a key the file does not hold.
    #[error("sealed value: {0}")]
    Sealed(String),
}

/// One key: its id and the AES-256-GCM key.
struct Key {
    id: String,
    key: LessSafeKey,
    /// HMAC key derived from this key for other uses (page tokens).
    derived: aws_lc_rs::hmac::Key,
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Key")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// The keys of a key file: the first seals, all open.
#[derive(Debug)]
pub struct SecretBox {
    keys: Vec<Key>,
    rng: SystemRandom,
}

fn key_file_error(path: &Path, reason: impl std::fmt::Display) -> SecretsError {
    SecretsError::KeyFile {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

/// A fresh key line: a random id and key.
fn new_key_line(rng: &SystemRandom) -> Result<String, SecretsError> {
    let mut bytes = [0u8; KEY_LEN + 6];
    rng.fill(&mut bytes)
        .map_err(|_| SecretsError::Sealed("no randomness".into()))?;
    let id: String = bytes[KEY_LEN..]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key = base64::engine::general_purpose::STANDARD.encode(&bytes[..KEY_LEN]);
    Ok(format!("{id} {key}\n"))
}

/// Writes `text` to `path` (mode 0600) through a temporary file and a rename.
fn write_key_file(path: &Path, text: &str) -> Result<(), SecretsError> {
    use std::io::Write;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| key_file_error(path, e))?;
    }
    let temporary = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(&temporary)
        .map_err(|e| key_file_error(&temporary, e))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(|e| key_file_error(&temporary, e))?;
    std::fs::rename(&temporary, path).map_err(|e| key_file_error(path, e))
}

impl SecretBox {
    /// Reads the key file at `path`, creating it with one fresh key when missing. Two
    /// processes starting at once agree: the file is created only if absent, and the loser
    /// reads the winner's.
    pub fn open_or_create(path: &Path) -> Result<Self, SecretsError> {
        if !path.exists() {
            let rng = SystemRandom::new();
            let line = new_key_line(&rng)?;
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| key_file_error(path, e))?;
            }
            // Written whole under a private name, then linked into place: a process that
            // loses the race never reads a half-written file.
            let staging = path.with_extension(format!("{}.new", std::process::id()));
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                options.mode(0o600);
            }
            {
                use std::io::Write;
                let mut file = options
                    .open(&staging)
                    .map_err(|e| key_file_error(path, e))?;
                file.write_all(line.as_bytes())
                    .and_then(|()| file.sync_all())
                    .map_err(|e| key_file_error(path, e))?;
            }
            let linked = std::fs::hard_link(&staging, path);
            let _ = std::fs::remove_file(&staging);
            match linked {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(key_file_error(path, e)),
            }
        }
        Self::read(path)
    }

    /// Reads an existing key file.
    pub fn read(path: &Path) -> Result<Self, SecretsError> {
        let text = std::fs::read_to_string(path).map_err(|e| key_file_error(path, e))?;
        Self::parse(&text).map_err(|reason| key_file_error(path, reason))
    }

    fn parse(text: &str) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (id, encoded) = line
                .split_once(' ')
                .ok_or_else(|| format!("line {}: `<id> <base64 key>` expected", n + 1))?;
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|e| format!("line {}: {e}", n + 1))?;
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| format!("line {}: a key is 32 bytes", n + 1))?;
            keys.push(Key {
                id: id.to_owned(),
                key: LessSafeKey::new(unbound),
                derived: aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, &bytes),
            });
        }
        if keys.is_empty() {
            return Err("holds no key".into());
        }
        Ok(Self {
            keys,
            rng: SystemRandom::new(),
        })
    }

    /// A 32-byte key for `purpose`, derived from the current key (HMAC-SHA256 of the
    /// purpose): replicas sharing the key file derive the same one.
    pub fn derive(&self, purpose: &str) -> [u8; 32] {
        let mut out = [0u8; 32];
        if let Some(first) = self.keys.first() {
            let tag = aws_lc_rs::hmac::sign(&first.derived, purpose.as_bytes());
            out.copy_from_slice(&tag.as_ref()[..32]);
        }
        out
    }

    /// Puts a fresh key first in the file at `path` (created when missing), keeping the old
    /// ones for opening what they sealed. Returns the new key's id.
    pub fn rotate(path: &Path) -> Result<String, SecretsError> {
        let old = std::fs::read_to_string(path).unwrap_or_default();
        let line = new_key_line(&SystemRandom::new())?;
        let id = line
            .split_once(' ')
            .map(|(id, _)| id.to_owned())
            .unwrap_or_default();
        write_key_file(path, &format!("{line}{old}"))?;
        Ok(id)
    }

    /// The id of the key that seals.
    pub fn current_id(&self) -> &str {
        &self.keys[0].id
    }

    /// Seals `plain` under the current key.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        self.rng
            .fill(&mut nonce)
            .map_err(|_| SecretsError::Sealed("no randomness".into()))?;
        let mut data = plain.to_vec();
        key.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key.id.as_bytes()),
                &mut data,
            )
            .map_err(|_| SecretsError::Sealed("sealing failed".into()))?;
        let mut out = Vec::with_capacity(MAGIC.len() + 1 + key.id.len() + NONCE_LEN + data.len());
        out.extend_from_slice(MAGIC);
        out.push(key.id.len() as u8);
        out.extend_from_slice(key.id.as_bytes());
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    /// The id of the key `sealed` was sealed under, if it is a sealed value at all.
    pub fn key_id_of(sealed: &[u8]) -> Option<&str> {
        let rest = sealed.strip_prefix(MAGIC)?;
        let (&len, rest) = rest.split_first()?;
        std::str::from_utf8(rest.get(..usize::from(len))?).ok()
    }

    /// Whether `sealed` should be sealed again under the current key (sealed under an
    /// older one, or not sealed at all).
    pub fn needs_reseal(&self, stored: &[u8]) -> bool {
        Self::key_id_of(stored) != Some(self.current_id())
    }

    /// Opens a sealed value.
    pub fn open(&self, sealed: &[u8]) -> Result<Vec<u8>, SecretsError> {
        let id = Self::key_id_of(sealed)
            .ok_or_else(|| SecretsError::Sealed("not a sealed value".into()))?;
        let key = self
            .keys
            .iter()
            .find(|k| k.id == id)
            .ok_or_else(|| SecretsError::Sealed(format!("key {id} is not in the key file")))?;
        let start = MAGIC.len() + 1 + id.len();
        let nonce: [u8; NONCE_LEN] = sealed
            .get(start..start + NONCE_LEN)
            .and_then(|n| n.try_into().ok())
            .ok_or_else(|| SecretsError::Sealed("truncated".into()))?;
        let mut data = sealed[start + NONCE_LEN..].to_vec();
        let plain = key
            .key
            .open_in_place(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(id.as_bytes()),
                &mut data,
            )
            .map_err(|_| SecretsError::Sealed("does not open (altered, or another key)".into()))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_sealed_value_opens_after_rotation_and_is_resealed_under_the_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/secrets.key");
        let first = SecretBox::open_or_create(&path).unwrap();
        let sealed = first.seal(b"hunter2").unwrap();
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(first.open(&sealed).unwrap(), b"hunter2");
        assert!(!first.needs_reseal(&sealed));
        assert!(first.needs_reseal(b"plain bytes"));

        let new_id = SecretBox::rotate(&path).unwrap();
        let rotated = SecretBox::read(&path).unwrap();
        assert_eq!(rotated.current_id(), new_id);
        assert_eq!(
            rotated.open(&sealed).unwrap(),
            b"hunter2",
            "old keys still open"
        );
        assert!(rotated.needs_reseal(&sealed));
        let resealed = rotated.seal(&rotated.open(&sealed).unwrap()).unwrap();
        assert_eq!(SecretBox::key_id_of(&resealed), Some(new_id.as_str()));

        // An altered value, or one sealed under a key the file lacks, does not open.
        let mut altered = resealed.clone();
        if let Some(last) = altered.last_mut() {
            *last ^= 1;
        }
        assert!(rotated.open(&altered).is_err());
        let other = SecretBox::open_or_create(&dir.path().join("other.key")).unwrap();
        assert!(other.open(&resealed).is_err());
        // A second start reads the same file.
        let again = SecretBox::open_or_create(&path).unwrap();
        assert_eq!(again.current_id(), new_id);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
