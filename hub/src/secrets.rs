//! Access-key secrets at rest.
//!
//! HS256 verification needs the raw secret, so it cannot be hashed. It is
//! sealed instead with ChaCha20-Poly1305 under a 256-bit master key kept in
//! a file beside the database (`<db>.key`, mode 0600). A copy of the
//! database alone (a backup, a stolen file) therefore reveals no secret.
//! The access key id is the associated data, so a sealed secret moved onto
//! another key's row fails to open. Secret params of sessions are sealed
//! the same way (`db::secret_params`).

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use aws_lc_rs::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("the master key file {0} does not exist")]
    Missing(PathBuf),
    #[error("cannot {what} the master key file {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "the master key file {path} can be read by group or others (mode {mode:o}); \
         it must be readable only by its owner: chmod 600 {path}"
    )]
    Permissions { path: PathBuf, mode: u32 },
    #[error("the master key file {path} is not {KEY_LEN} bytes in hex: {why}")]
    Malformed { path: PathBuf, why: String },
    #[error("the system random generator failed")]
    Random,
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the system random generator failed")]
    Random,
    #[error("cannot seal the secret")]
    Seal,
    /// The master key is not the one the secret was sealed with, or the row
    /// was tampered with.
    #[error("the stored secret does not open with the master key")]
    Open,
}

/// `<db>.key`.
pub fn key_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push(".key");
    PathBuf::from(name)
}

pub struct MasterKey {
    key: LessSafeKey,
}

/// A sealed secret: what the database stores.
pub struct Sealed {
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

impl Sealed {
    /// `nonce || ciphertext`, for a single column.
    pub fn into_blob(self) -> Vec<u8> {
        let mut blob = self.nonce;
        blob.extend_from_slice(&self.ciphertext);
        blob
    }
}

impl MasterKey {
    /// Reads the key file, refusing one that others can read.
    pub fn load(path: &Path) -> Result<MasterKey, KeyFileError> {
        let io_err = |what, source| KeyFileError::Io {
            what,
            path: path.into(),
            source,
        };
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(KeyFileError::Missing(path.into()));
            }
            Err(e) => return Err(io_err("read", e)),
        };
        check_private(path, &meta)?;
        let text = fs::read_to_string(path).map_err(|e| io_err("read", e))?;
        let bytes = decode_hex(text.trim()).map_err(|why| KeyFileError::Malformed {
            path: path.into(),
            why,
        })?;
        MasterKey::from_bytes(&bytes).ok_or_else(|| KeyFileError::Malformed {
            path: path.into(),
            why: format!("{} bytes", bytes.len()),
        })
    }

    /// Makes a new key file, mode 0600, without ever replacing one: if
    /// another process made it first, that one is loaded.
    pub fn create(path: &Path) -> Result<MasterKey, KeyFileError> {
        let io_err = |what, source| KeyFileError::Io {
            what,
            path: path.into(),
            source,
        };
        let mut bytes = [0u8; KEY_LEN];
        aws_lc_rs::rand::fill(&mut bytes).map_err(|_| KeyFileError::Random)?;
        // Written whole under a temporary name, then linked into place,
        // which fails if the name exists: no reader ever sees half a key.
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp_name);
        let _ = fs::remove_file(&tmp);
        let result = (|| {
            let mut opts = OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            {
                use std::os::unix::fs::OpenOptionsExt;
                opts.mode(0o600);
            }
            let mut file = opts.open(&tmp)?;
            writeln!(file, "{}", encode_hex(&bytes))?;
            file.sync_all()?;
            fs::hard_link(&tmp, path)
        })();
        let _ = fs::remove_file(&tmp);
        match result {
            Ok(()) => {
                tracing::info!(path = %path.display(), "created the master key file");
                MasterKey::from_bytes(&bytes).ok_or(KeyFileError::Random)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => MasterKey::load(path),
            Err(e) => Err(io_err("create", e)),
        }
    }

    fn from_bytes(bytes: &[u8]) -> Option<MasterKey> {
        if bytes.len() != KEY_LEN {
            return None;
        }
        let key = UnboundKey::new(&CHACHA20_POLY1305, bytes).ok()?;
        Some(MasterKey {
            key: LessSafeKey::new(key),
        })
    }

    /// Seals `secret`; `key_id` is the associated data, which opening must
    /// repeat (an access key id, or what names a session's params).
    pub fn seal(&self, key_id: &str, secret: &[u8]) -> Result<Sealed, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        aws_lc_rs::rand::fill(&mut nonce).map_err(|_| SealError::Random)?;
        let mut data = secret.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(key_id.as_bytes()),
                &mut data,
            )
            .map_err(|_| SealError::Seal)?;
        Ok(Sealed {
            nonce: nonce.to_vec(),
            ciphertext: data,
        })
    }

    pub fn open(
        &self,
        key_id: &str,
        nonce: &[u8],
        ciphertext: &[u8],
    ) -> Result<Vec<u8>, SealError> {
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| SealError::Open)?;
        let mut data = ciphertext.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(key_id.as_bytes()), &mut data)
            .map_err(|_| SealError::Open)?;
        Ok(plain.to_vec())
    }

    /// Opens what [`Sealed::into_blob`] made.
    pub fn open_blob(&self, aad: &str, blob: &[u8]) -> Result<Vec<u8>, SealError> {
        if blob.len() < NONCE_LEN {
            return Err(SealError::Open);
        }
        let (nonce, ciphertext) = blob.split_at(NONCE_LEN);
        self.open(aad, nonce, ciphertext)
    }
}

#[cfg(unix)]
fn check_private(path: &Path, meta: &fs::Metadata) -> Result<(), KeyFileError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(KeyFileError::Permissions {
            path: path.into(),
            mode,
        });
    }
    Ok(())
}

// Windows has no mode bits; the file takes the ACL of its folder, which the
// service's data folder restricts.
#[cfg(not(unix))]
fn check_private(_path: &Path, _meta: &fs::Metadata) -> Result<(), KeyFileError> {
    Ok(())
}

/// A new access key id: `TSK` and 20 characters of base32 (100 bits).
pub fn new_access_key_id() -> Result<String, SealError> {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut bytes = [0u8; 20];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SealError::Random)?;
    let tail: String = bytes
        .iter()
        .map(|b| ALPHABET[(b & 31) as usize] as char)
        .collect();
    Ok(format!("TSK{tail}"))
}

/// A new secret access key: 256 random bits as 64 upper-case hex digits,
/// the shape of the AUTORO document's example secret.
pub fn new_secret() -> Result<String, SealError> {
    let mut bytes = [0u8; 32];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SealError::Random)?;
    Ok(encode_hex(&bytes).to_ascii_uppercase())
}

/// A new lease id: 128 random bits as hex. Calls about a leased session
/// carry it, so it must not be guessable.
pub fn new_lease_id() -> Result<String, SealError> {
    let mut bytes = [0u8; 16];
    aws_lc_rs::rand::fill(&mut bytes).map_err(|_| SealError::Random)?;
    Ok(encode_hex(&bytes))
}

pub fn encode_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    (0..text.len())
        .step_by(2)
        .map(|i| {
            text.get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
                .ok_or_else(|| format!("not a hex digit pair at offset {i}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_and_opens_bound_to_the_key_id() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db.key");
        let key = MasterKey::create(&path).unwrap();
        let sealed = key.seal("TSKA", b"secret").unwrap();
        assert_eq!(
            key.open("TSKA", &sealed.nonce, &sealed.ciphertext).unwrap(),
            b"secret"
        );
        assert!(key.open("TSKB", &sealed.nonce, &sealed.ciphertext).is_err());
        // The same file loads the same key.
        let again = MasterKey::load(&path).unwrap();
        assert_eq!(
            again
                .open("TSKA", &sealed.nonce, &sealed.ciphertext)
                .unwrap(),
            b"secret"
        );
        // Creating again never replaces it.
        let third = MasterKey::create(&path).unwrap();
        assert!(
            third
                .open("TSKA", &sealed.nonce, &sealed.ciphertext)
                .is_ok()
        );
    }

    #[cfg(unix)]
    #[test]
    fn refuses_a_readable_key_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hub.db.key");
        MasterKey::create(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let err = MasterKey::load(&path).err().unwrap();
        assert!(err.to_string().contains("chmod 600"), "{err}");
    }

    #[test]
    fn ids_and_secrets_have_their_shape() {
        let id = new_access_key_id().unwrap();
        assert_eq!(id.len(), 23);
        let secret = new_secret().unwrap();
        assert_eq!(secret.len(), 64);
        assert!(
            secret
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_lowercase())
        );
        assert_eq!(decode_hex(&encode_hex(&[1, 255])).unwrap(), vec![1, 255]);
    }
}
