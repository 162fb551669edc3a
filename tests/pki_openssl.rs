//! Interoperability of `re6st::pki` with the OpenSSL command-line tool:
//! OpenSSL accepts our CA, certificates and requests, and we accept
//! requests and keys OpenSSL makes.
//!
//! Needs the `openssl` binary (Debian package `openssl`, version 3 for
//! Ed25519). Without it the tests are skipped, except under `CI=true`.

use std::fs;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, SystemTime};

use re6st::pki::{load_key, Ca, Csr, IssueRequest, NodeCert, PkiError, Verifier, VerifyError};

const DAY: Duration = Duration::from_secs(86_400);

/// Whether `openssl` can be run; panics when it cannot under `CI=true`.
fn have_openssl(test: &str) -> bool {
    let found = Command::new("openssl")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        if std::env::var("CI").as_deref() == Ok("true") {
            panic!("{test}: needs the openssl command, and CI=true makes it mandatory");
        }
        eprintln!("{test}: skipped (no openssl command)");
    }
    found
}

/// Runs `openssl ARGS` in `dir` and returns its output, whatever the status.
fn openssl(dir: &Path, args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run openssl")
}

/// Runs `openssl ARGS` in `dir`, asserts success, returns stdout + stderr.
fn openssl_ok(dir: &Path, args: &[&str]) -> String {
    let out = openssl(dir, args);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "openssl {args:?} failed:\n{text}");
    text
}

/// A CA for 2001:db8:42::/48 written to `dir` (ca.crt, ca.key).
fn write_ca(dir: &Path) -> Ca {
    let ca = Ca::generate("2001:db8:42::/48".parse().unwrap(), 365).unwrap();
    ca.write(dir).unwrap();
    ca
}

fn issue(ca: &Ca, csr: &Csr, prefix: &str, serial: u64) -> NodeCert {
    let now = SystemTime::now();
    ca.issue(&IssueRequest {
        csr,
        prefix: prefix.parse().unwrap(),
        subject_serial: 7,
        serial,
        not_before: now - Duration::from_secs(60),
        not_after: now + 365 * DAY,
    })
    .unwrap()
}

#[test]
fn openssl_reads_our_ca() {
    if !have_openssl("openssl_reads_our_ca") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    write_ca(dir.path());
    let serial = openssl_ok(dir.path(), &["x509", "-in", "ca.crt", "-noout", "-serial"]);
    assert_eq!(serial.trim(), "serial=0120010DB80042");
    let text = openssl_ok(dir.path(), &["x509", "-in", "ca.crt", "-noout", "-text"]);
    for want in [
        "Subject: CN = re6st CA 2001:db8:42::/48",
        "Issuer: CN = re6st CA 2001:db8:42::/48",
        "X509v3 Basic Constraints: critical",
        "CA:TRUE",
        "Certificate Sign, CRL Sign",
        "X509v3 Subject Key Identifier",
        "Signature Algorithm: ED25519",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    // The key file is standard PKCS#8 that OpenSSL reads.
    let key = openssl_ok(dir.path(), &["pkey", "-in", "ca.key", "-noout", "-text"]);
    assert!(key.contains("ED25519 Private-Key"), "{key}");
    // A self-signed CA verifies against itself.
    openssl_ok(dir.path(), &["verify", "-CAfile", "ca.crt", "ca.crt"]);
}

#[test]
fn openssl_verifies_our_certificate() {
    if !have_openssl("openssl_verifies_our_certificate") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path());
    let key = re6st::pki::generate_key();
    let csr = Csr::generate(&key, &[("O".into(), "Nexedi".into())]).unwrap();
    let cert = issue(&ca, &csr, "5/16", 1);
    fs::write(dir.path().join("cert.crt"), cert.to_pem()).unwrap();
    let out = openssl_ok(dir.path(), &["verify", "-CAfile", "ca.crt", "cert.crt"]);
    assert_eq!(out.trim(), "cert.crt: OK");

    // The same request certified by another CA of the same network does
    // not verify: the check above is meaningful.
    let other_dir = tempfile::tempdir().unwrap();
    let other = write_ca(other_dir.path());
    let forged = issue(&other, &csr, "5/16", 1);
    fs::write(dir.path().join("forged.crt"), forged.to_pem()).unwrap();
    let out = openssl(dir.path(), &["verify", "-CAfile", "ca.crt", "forged.crt"]);
    assert!(
        !out.status.success(),
        "openssl accepted a certificate of another CA"
    );
}

#[test]
fn openssl_verifies_our_csr() {
    if !have_openssl("openssl_verifies_our_csr") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = re6st::pki::generate_key();
    let extra = [
        ("O".to_string(), "Nexedi".to_string()),
        ("C".to_string(), "FR".to_string()),
        ("emailAddress".to_string(), "node@example.org".to_string()),
    ];
    let csr = Csr::generate(&key, &extra).unwrap();
    fs::write(dir.path().join("our.csr"), csr.to_pem()).unwrap();
    let out = openssl_ok(dir.path(), &["req", "-verify", "-in", "our.csr", "-noout"]);
    assert!(out.contains("verify OK"), "{out}");
    let text = openssl_ok(dir.path(), &["req", "-in", "our.csr", "-noout", "-text"]);
    assert!(
        text.contains("Subject: O = Nexedi, C = FR, emailAddress = node@example.org"),
        "{text}"
    );
    assert!(text.contains("ED25519"), "{text}");
}

#[test]
fn we_accept_and_issue_openssl_requests() {
    if !have_openssl("we_accept_and_issue_openssl_requests") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path());
    openssl_ok(
        dir.path(),
        &["genpkey", "-algorithm", "ed25519", "-out", "node.key"],
    );
    openssl_ok(
        dir.path(),
        &[
            "req",
            "-new",
            "-key",
            "node.key",
            "-subj",
            "/O=Example/OU=lab/CN=my-laptop/serialNumber=999",
            "-out",
            "node.csr",
        ],
    );
    let csr = Csr::from_pem(&fs::read_to_string(dir.path().join("node.csr")).unwrap()).unwrap();
    let key = load_key(&dir.path().join("node.key")).unwrap();
    assert_eq!(csr.public_key(), key.verifying_key());

    let cert = issue(&ca, &csr, "5/16", 2);
    fs::write(dir.path().join("node.crt"), cert.to_pem()).unwrap();
    let text = openssl_ok(dir.path(), &["x509", "-in", "node.crt", "-noout", "-text"]);
    for want in [
        // The requested CN and serialNumber are replaced, the rest kept.
        "Subject: O = Example, OU = lab, serialNumber = 7, CN = 5/16",
        "Issuer: CN = re6st CA 2001:db8:42::/48",
        "Serial Number: 2 (0x2)",
        "CA:FALSE",
        "Digital Signature",
        "X509v3 Authority Key Identifier",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    let out = openssl_ok(dir.path(), &["verify", "-CAfile", "ca.crt", "node.crt"]);
    assert_eq!(out.trim(), "node.crt: OK");

    let verifier = Verifier::new(&ca.cert_pem()).unwrap();
    let prefix = verifier.verify(&cert, SystemTime::now()).unwrap();
    assert_eq!(prefix.to_string(), "5/16");
    assert_eq!(cert.subject_serial(), Some(7));
}

#[test]
fn we_reject_openssl_requests_with_other_keys_or_bad_signatures() {
    if !have_openssl("we_reject_openssl_requests_with_other_keys_or_bad_signatures") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    openssl_ok(
        dir.path(),
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ec.key",
            "-subj",
            "/O=Example",
            "-out",
            "ec.csr",
        ],
    );
    let err = Csr::from_pem(&fs::read_to_string(dir.path().join("ec.csr")).unwrap()).unwrap_err();
    assert!(matches!(err, PkiError::UnsupportedAlgorithm(_)), "{err}");

    openssl_ok(
        dir.path(),
        &["genpkey", "-algorithm", "ed25519", "-out", "node.key"],
    );
    openssl_ok(
        dir.path(),
        &[
            "req",
            "-new",
            "-key",
            "node.key",
            "-subj",
            "/O=Example",
            "-outform",
            "DER",
            "-out",
            "node.der",
        ],
    );
    let mut der = fs::read(dir.path().join("node.der")).unwrap();
    assert!(Csr::from_der(&der).is_ok());
    let last = der.len() - 1;
    der[last] ^= 0x40;
    let err = Csr::from_der(&der).unwrap_err();
    assert!(matches!(err, PkiError::BadSignature(_)), "{err}");
}

#[test]
fn openssl_made_certificate_from_another_ca_is_rejected() {
    if !have_openssl("openssl_made_certificate_from_another_ca_is_rejected") {
        return;
    }
    // A node certificate made entirely with OpenSSL by a CA that is not
    // ours, with a well-formed CN: our verifier refuses it.
    let dir = tempfile::tempdir().unwrap();
    let ca = write_ca(dir.path());
    let rogue = dir.path().join("rogue");
    fs::create_dir(&rogue).unwrap();
    openssl_ok(
        &rogue,
        &["genpkey", "-algorithm", "ed25519", "-out", "ca.key"],
    );
    openssl_ok(
        &rogue,
        &[
            "req",
            "-new",
            "-x509",
            "-key",
            "ca.key",
            "-subj",
            "/CN=re6st CA 2001:db8:42::\\/48",
            "-days",
            "2",
            "-out",
            "ca.crt",
        ],
    );
    openssl_ok(
        &rogue,
        &["genpkey", "-algorithm", "ed25519", "-out", "node.key"],
    );
    openssl_ok(
        &rogue,
        &[
            "req",
            "-new",
            "-key",
            "node.key",
            "-subj",
            "/CN=5\\/16",
            "-out",
            "node.csr",
        ],
    );
    openssl_ok(
        &rogue,
        &[
            "x509",
            "-req",
            "-in",
            "node.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-set_serial",
            "3",
            "-days",
            "1",
            "-out",
            "node.crt",
        ],
    );
    let cert = NodeCert::from_pem(&fs::read_to_string(rogue.join("node.crt")).unwrap()).unwrap();
    assert_eq!(cert.prefix().unwrap().to_string(), "5/16");
    let verifier = Verifier::new(&ca.cert_pem()).unwrap();
    assert_eq!(
        verifier.verify(&cert, SystemTime::now()),
        Err(VerifyError::WrongCa)
    );
}
