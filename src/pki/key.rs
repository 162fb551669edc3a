//! Ed25519 keys: generation and PKCS#8 PEM files.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, KeypairBytes};
use ed25519_dalek::{SigningKey, VerifyingKey};
use rand::rngs::OsRng;

use super::error::PkiError;

/// A new random Ed25519 key from the operating system's RNG.
pub fn generate_key() -> SigningKey {
    SigningKey::generate(&mut OsRng)
}

/// Loads an Ed25519 private key from a PKCS#8 PEM file (`-----BEGIN
/// PRIVATE KEY-----`, as written by [`save_key`] or `openssl genpkey
/// -algorithm ed25519`).
pub fn load_key(path: &Path) -> Result<SigningKey, PkiError> {
    let pem = fs::read_to_string(path).map_err(|e| PkiError::io(path, e))?;
    key_from_pem(&pem).map_err(|e| PkiError::Key(format!("{}: {e}", path.display())))
}

/// Saves `key` as PKCS#8 PEM to a new file readable only by its owner
/// (mode 0600). Refuses to overwrite an existing file.
pub fn save_key(path: &Path, key: &SigningKey) -> Result<(), PkiError> {
    write_new_file(path, key_to_pem(key).as_bytes(), 0o600)
}

/// The SubjectPublicKeyInfo PEM (`-----BEGIN PUBLIC KEY-----`) of a key.
pub fn public_key_to_pem(key: &VerifyingKey) -> String {
    key.to_public_key_pem(LineEnding::LF)
        // Encoding a fixed-size Ed25519 key into PEM cannot fail.
        .expect("Ed25519 public key PEM encoding")
}

/// Decodes a PKCS#8 PEM Ed25519 private key; the error says why not.
pub(crate) fn key_from_pem(pem: &str) -> Result<SigningKey, String> {
    SigningKey::from_pkcs8_pem(pem.trim())
        .map_err(|e| format!("not an Ed25519 PKCS#8 PEM private key ({e})"))
}

/// Encodes a private key as PKCS#8 v1 PEM (the seed only, as `openssl
/// genpkey` writes it). OpenSSL 3.0 cannot read the v2 form with the public
/// key that `SigningKey::to_pkcs8_pem` produces.
pub(crate) fn key_to_pem(key: &SigningKey) -> String {
    KeypairBytes {
        secret_key: key.to_bytes(),
        public_key: None,
    }
    .to_pkcs8_pem(LineEnding::LF)
    // Encoding a fixed-size Ed25519 key into PEM cannot fail.
    .expect("Ed25519 private key PEM encoding")
    .to_string()
}

/// Creates `path` with `mode` and writes `data`, failing with
/// [`PkiError::AlreadyExists`] when the file exists. A partly written file
/// is removed.
pub(crate) fn write_new_file(path: &Path, data: &[u8], mode: u32) -> Result<(), PkiError> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            io::ErrorKind::AlreadyExists => PkiError::AlreadyExists(path.to_owned()),
            _ => PkiError::io(path, e),
        })?;
    if let Err(e) = file.write_all(data).and_then(|()| file.sync_all()) {
        drop(file);
        let _ = fs::remove_file(path);
        return Err(PkiError::io(path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn save_load_round_trip_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.key");
        let key = generate_key();
        save_key(&path, &key).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let text = fs::read_to_string(&path).unwrap();
        assert!(text.starts_with("-----BEGIN PRIVATE KEY-----\n"), "{text}");
        // PKCS#8 v1 with the seed only: 48 bytes, the form OpenSSL reads.
        let (_, der) = der::pem::decode_vec(text.as_bytes()).unwrap();
        assert_eq!(der.len(), 48);
        assert_eq!(
            &der[..16],
            hex::decode("302e020100300506032b657004220420").unwrap()
        );
        assert_eq!(&der[16..], key.to_bytes());
        assert_eq!(load_key(&path).unwrap().to_bytes(), key.to_bytes());
    }

    #[test]
    fn save_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cert.key");
        let first = generate_key();
        save_key(&path, &first).unwrap();
        let err = save_key(&path, &generate_key()).unwrap_err();
        assert!(
            matches!(err, PkiError::AlreadyExists(ref p) if p == &path),
            "{err}"
        );
        assert!(err.to_string().contains("refusing to overwrite"));
        assert_eq!(load_key(&path).unwrap().to_bytes(), first.to_bytes());
    }

    #[test]
    fn load_errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.key");
        let err = load_key(&missing).unwrap_err();
        assert!(matches!(err, PkiError::Io { .. }));
        assert!(err.to_string().contains("missing.key"), "{err}");

        let garbage = dir.path().join("garbage.key");
        fs::write(
            &garbage,
            "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let err = load_key(&garbage).unwrap_err();
        assert!(matches!(err, PkiError::Key(_)));
        assert!(err.to_string().contains("garbage.key"), "{err}");
    }

    #[test]
    fn loads_openssl_style_pkcs8() {
        // `openssl genpkey -algorithm ed25519` output (RFC 8410 example key).
        let pem = "-----BEGIN PRIVATE KEY-----\n\
                   MC4CAQAwBQYDK2VwBCIEINTuctv5E1hK1bbY8fdp+K06/nwoy/HU++CXqI9EdVhC\n\
                   -----END PRIVATE KEY-----\n";
        let key = key_from_pem(pem).unwrap();
        let public = public_key_to_pem(&key.verifying_key());
        // The public key of RFC 8410's example, section 10.1.
        assert_eq!(
            public,
            "-----BEGIN PUBLIC KEY-----\n\
             MCowBQYDK2VwAyEAGb9ECWmEzf6FQbrBZ9w7lshQhqowtrbLDFw4rXAxZuE=\n\
             -----END PUBLIC KEY-----\n"
        );
    }
}
