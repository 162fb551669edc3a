//! Ed25519 keys: generation and PKCS#8 PEM files.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
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

/// Encodes a private key as PKCS#8 PEM.
pub(crate) fn key_to_pem(key: &SigningKey) -> String {
    key.to_pkcs8_pem(LineEnding::LF)
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
