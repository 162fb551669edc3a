//! The registry end to end: the real `re6st` binary runs `registry init` and
//! `registry serve` on 127.0.0.1 at a free port, and `re6st conf` (and raw
//! HTTP) talk to it. Bad requests must get a clear 4xx and leave the
//! database byte-for-byte unchanged (compared with `sqlite3 .dump`).

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use re6st::node::control;
use re6st::pki::{self, Csr, NodeCert};
use re6st::registry::auth;
use re6st::registry::{NodeAuth, RegistryClient};

const BIN: &str = env!("CARGO_BIN_EXE_re6st");

/// A running registry, killed by PID when dropped.
struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    fn start(extra: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ca = dir.path().join("ca");
        let out = re6st(&[
            "registry",
            "init",
            "--network",
            "2001:db8:42::/48",
            "--dir",
            ca.to_str().unwrap(),
        ]);
        assert!(
            out.status.success(),
            "init: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut args: Vec<String> = [
            "registry",
            "serve",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--db",
            dir.path().join("registry.db").to_str().unwrap(),
            "--ca",
            ca.join("ca.crt").to_str().unwrap(),
            "--key",
            ca.join("ca.key").to_str().unwrap(),
            "--mailhost",
            dir.path().join("mbox").to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        let log = std::fs::File::create(dir.path().join("serve.log")).unwrap();
        let child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let reg = Self { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "registry did not start: {}",
                reg.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        reg
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.path("serve.log")).unwrap_or_default()
    }

    fn client(&self) -> RegistryClient {
        RegistryClient::new(&self.url()).unwrap()
    }

    /// `re6st conf` into `node` with extra arguments.
    fn conf(&self, node: &str, extra: &[&str]) -> Output {
        let dir = self.path(node);
        let url = self.url();
        let mut args = vec![
            "conf",
            "--registry",
            &url[..],
            "--dir",
            dir.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        re6st(&args)
    }

    /// The whole database as SQL text.
    fn dump(&self) -> String {
        let out = Command::new("sqlite3")
            .arg(self.path("registry.db"))
            .arg(".dump")
            .output()
            .expect("sqlite3 CLI (apt package sqlite3)");
        assert!(out.status.success());
        String::from_utf8(out.stdout).unwrap()
    }

    /// A raw HTTP/1.1 request: (status, body).
    fn raw(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, String)],
        body: &[u8],
    ) -> (u16, String) {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut req = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).unwrap();
        // The server may answer (413) before reading all of a large body.
        let _ = s.write_all(body);
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let resp = String::from_utf8_lossy(&resp).into_owned();
        let status = resp
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let body = resp
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

fn re6st(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn node_auth(dir: &Path) -> NodeAuth {
    let key = pki::load_key(&dir.join("cert.key")).unwrap();
    let cert = NodeCert::from_pem(&std::fs::read_to_string(dir.join("cert.crt")).unwrap()).unwrap();
    NodeAuth {
        key,
        serial: cert.serial(),
    }
}

/// Tokens found in the mbox, in order.
fn mbox_tokens(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut lines = text.lines();
    let mut tokens = Vec::new();
    while let Some(l) = lines.next() {
        if l.contains("registration token for the re6st network") {
            if let Some(t) = lines.by_ref().map(str::trim).find(|l| !l.is_empty()) {
                tokens.push(t.to_owned());
            }
        }
    }
    tokens
}

fn assert_error(status: u16, body: &str, want_status: u16, want_code: &str) {
    assert_eq!(status, want_status, "body: {body}");
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(v["error"], want_code, "{body}");
    assert!(
        v["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{body}"
    );
}

#[test]
fn enroll_anonymous_and_by_token() {
    let reg = Registry::start(&["--anonymous-prefix-length", "20"]);
    // Anonymous: the first certificate is the registry node's.
    let out = reg.conf("n1", &["--anonymous"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("WARNING: no --fingerprint"));
    let n1 = reg.path("n1");
    for f in ["ca.crt", "cert.key", "cert.crt", "re6st.toml"] {
        assert!(n1.join(f).exists(), "{f}");
    }
    use std::os::unix::fs::PermissionsExt as _;
    assert_eq!(
        std::fs::metadata(n1.join("cert.key"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o600
    );
    let v = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(n1.join("ca.crt"))
        .arg(n1.join("cert.crt"))
        .output()
        .unwrap();
    assert!(
        v.status.success(),
        "openssl verify: {}",
        String::from_utf8_lossy(&v.stdout)
    );
    let toml: toml::Table = std::fs::read_to_string(n1.join("re6st.toml"))
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(toml["registry"].as_str(), Some(&reg.url()[..]));
    assert_eq!(
        toml["key"].as_str(),
        Some(n1.join("cert.key").to_str().unwrap())
    );

    let rt = rt();
    let ca = rt.block_on(reg.client().ca()).unwrap();
    let signed = rt.block_on(reg.client().config(None)).unwrap();
    let ca_key =
        NodeCert::from_pem(&std::fs::read_to_string(n1.join("cert.crt")).unwrap()).unwrap();
    let cfg = signed.verify(&ca_verifying_key(&ca.ca)).unwrap();
    assert_eq!(
        cfg.registry_prefix.as_deref(),
        Some(&ca_key.prefix().unwrap().to_string()[..])
    );
    assert_eq!(cfg.registry_prefix.as_deref(), Some("0/20"));
    assert_eq!(cfg.babel_keys, None);

    // With the right fingerprint it is quiet; with a wrong one it refuses.
    let out = reg.conf("n1", &["--ca-only", "--fingerprint", &ca.fingerprint]);
    assert!(
        out.status.success() && !stderr(&out).contains("WARNING"),
        "{}",
        stderr(&out)
    );
    let bad = format!("sha256:{}", "00".repeat(32));
    let out = reg.conf("n9", &["--anonymous", "--fingerprint", &bad]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("fingerprint mismatch"),
        "{}",
        stderr(&out)
    );
    assert!(!reg.path("n9/cert.key").exists());

    // Rerunning reuses the key.
    let key_before = std::fs::read(n1.join("cert.key")).unwrap();
    let out = reg.conf("n1", &["--anonymous"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(std::fs::read(n1.join("cert.key")).unwrap(), key_before);

    // By token through the mbox.
    let out = reg.conf("n2", &["--email", "alice@example.org"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains("--token"));
    let tokens = mbox_tokens(&reg.path("mbox"));
    assert_eq!(tokens.len(), 1);
    let out = reg.conf(
        "n2",
        &[
            "--token",
            &tokens[0],
            "--location",
            "FR,@EU",
            "-r",
            "O",
            "Example",
        ],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let cert =
        NodeCert::from_pem(&std::fs::read_to_string(reg.path("n2/cert.crt")).unwrap()).unwrap();
    assert_eq!(cert.prefix().unwrap().len(), 16);
    let certs = rt.block_on(reg.client().certs()).unwrap();
    assert_eq!(certs.len(), 3);
    assert!(certs
        .iter()
        .any(|c| c.email.as_deref() == Some("alice@example.org") && c.serial == cert.serial()));
    let listed = re6st(&["registry", "list", "--registry", &reg.url()]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains("alice@example.org"));

    // The used token is refused, clearly, and nothing changes.
    let before = reg.dump();
    let out = reg.conf("n3", &["--token", &tokens[0]]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("token refused"), "{}", stderr(&out));
    assert_eq!(
        stderr(&out)
            .trim()
            .lines()
            .last()
            .map(|l| l.starts_with("re6st: error: ")),
        Some(true)
    );
    assert_eq!(reg.dump(), before);

    // Admin tokens: add, list, delete.
    let out = re6st(&[
        "registry",
        "token",
        "add",
        "--registry",
        &reg.url(),
        "--email",
        "bob@example.org",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let t = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let listed = re6st(&["registry", "token", "list", "--registry", &reg.url()]);
    assert!(String::from_utf8_lossy(&listed.stdout).contains(&t));
    let out = re6st(&["registry", "token", "delete", "--registry", &reg.url(), &t]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = reg.conf("n4", &["--token", &t]);
    assert!(stderr(&out).contains("token refused"));
}

fn ca_verifying_key(ca_pem: &str) -> ed25519_dalek::VerifyingKey {
    use der::{Decode as _, Encode as _};
    let (_, der) = der::pem::decode_vec(ca_pem.as_bytes()).unwrap();
    let cert = x509_cert::Certificate::from_der(&der).unwrap();
    let spki = cert
        .tbs_certificate
        .subject_public_key_info
        .to_der()
        .unwrap();
    use ed25519_dalek::pkcs8::DecodePublicKey as _;
    ed25519_dalek::VerifyingKey::from_public_key_der(&spki).unwrap()
}

#[test]
fn revoke_renew_config_and_bootstrap() {
    // Certificates valid 10 days: always within 30 days of expiry, so a
    // renewal issues a new certificate.
    let reg = Registry::start(&["--anonymous-prefix-length", "16", "--validity", "10"]);
    for n in ["a", "b"] {
        let out = reg.conf(n, &["--anonymous"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let rt = rt();
    let client = reg.client();
    let ca = rt.block_on(client.ca()).unwrap();
    let ca_key = ca_verifying_key(&ca.ca);
    let a = node_auth(&reg.path("a"));
    let b = node_auth(&reg.path("b"));

    // Authenticated configuration: the Babel keys open with our key only.
    let cfg = rt
        .block_on(client.config(Some(&a)))
        .unwrap()
        .verify(&ca_key)
        .unwrap();
    let keys = cfg.open_babel_keys(&a.key).unwrap().expect("babel keys");
    assert_eq!(keys.accept, vec![keys.sign.clone()]);
    assert!(cfg.open_babel_keys(&b.key).is_err());
    let v0 = cfg.version;

    // Key rotation bumps the version and stages keys.
    let out = re6st(&["registry", "rotate-keys", "--registry", &reg.url()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cfg = rt
        .block_on(client.config(Some(&a)))
        .unwrap()
        .verify(&ca_key)
        .unwrap();
    assert_eq!(cfg.version, v0 + 1);
    let k2 = cfg.open_babel_keys(&a.key).unwrap().unwrap();
    assert_eq!(k2.sign, keys.sign);
    assert_eq!(k2.accept.len(), 2);

    // Renewal: a new certificate for the same prefix.
    let csr = Csr::generate(&a.key, &[]).unwrap();
    let old =
        NodeCert::from_pem(&std::fs::read_to_string(reg.path("a/cert.crt")).unwrap()).unwrap();
    let renewed = rt.block_on(client.renew(&a, &csr.to_pem())).unwrap();
    assert_ne!(renewed.serial, a.serial);
    assert_eq!(renewed.prefix, old.prefix().unwrap().to_string());
    let a2 = NodeAuth {
        key: a.key.clone(),
        serial: renewed.serial,
    };
    // The old serial is no longer known.
    let err = rt.block_on(client.renew(&a, &csr.to_pem())).unwrap_err();
    assert_eq!(err.code(), Some("unauthorized"));

    // Bootstrap: authenticated, and honest about having no peer yet.
    let err = rt.block_on(client.bootstrap(&a2)).unwrap_err();
    assert_eq!(err.code(), Some("no_peer"), "{err}");

    // Revoke b by CN: its serial is in the signed CRL, version bumped.
    let b_cert =
        NodeCert::from_pem(&std::fs::read_to_string(reg.path("b/cert.crt")).unwrap()).unwrap();
    let before = rt
        .block_on(client.config(None))
        .unwrap()
        .verify(&ca_key)
        .unwrap();
    let out = re6st(&[
        "registry",
        "revoke",
        "--registry",
        &reg.url(),
        "--cn",
        &b_cert.prefix().unwrap().to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let after = rt
        .block_on(client.config(None))
        .unwrap()
        .verify(&ca_key)
        .unwrap();
    assert!(after.version > before.version);
    assert!(after.crl.contains(&b_cert.serial()));
    // The revoked node can no longer authenticate.
    let err = rt.block_on(client.config(Some(&b))).unwrap_err();
    assert_eq!(err.code(), Some("unauthorized"));
    // Revoke by serial works too; revoking again is a clean 404.
    let out = re6st(&[
        "registry",
        "revoke",
        "--registry",
        &reg.url(),
        "--serial",
        &renewed.serial.to_string(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = re6st(&[
        "registry",
        "revoke",
        "--registry",
        &reg.url(),
        "--serial",
        &renewed.serial.to_string(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no such certificate"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn bad_inputs_leave_the_database_unchanged() {
    let reg = Registry::start(&["--anonymous-prefix-length", "16"]);
    let out = reg.conf("a", &["--anonymous"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let a = node_auth(&reg.path("a"));
    let rt = rt();
    rt.block_on(reg.client().add_token("x@example.org", None))
        .unwrap();
    let before = reg.dump();

    let json = |v: serde_json::Value| v.to_string().into_bytes();
    // Garbage and oversized bodies.
    let (s, b) = reg.raw("POST", "/cert", &[], b"\x00\xffgarbage{");
    assert_error(s, &b, 400, "bad_request");
    let (s, b) = reg.raw("POST", "/cert", &[], &json(serde_json::json!({"csr": 5})));
    assert_error(s, &b, 400, "bad_request");
    let (s, b) = reg.raw(
        "POST",
        "/token",
        &[],
        &json(serde_json::json!({"email": "x@example.org", "extra": 1})),
    );
    assert_error(s, &b, 400, "bad_request");
    let big = vec![b'a'; 200 * 1024];
    let (s, b) = reg.raw("POST", "/cert", &[], &big);
    assert_error(s, &b, 413, "too_large");
    let (s, b) = reg.raw("GET", "/nope", &[], b"");
    assert_error(s, &b, 404, "not_found");
    let (s, b) = reg.raw("DELETE", "/cert", &[], b"");
    assert_error(s, &b, 405, "method_not_allowed");
    let (s, b) = reg.raw(
        "POST",
        "/token",
        &[],
        &json(serde_json::json!({"email": "not an address"})),
    );
    assert_error(s, &b, 400, "bad_request");

    // A CSR with an EC key, made by openssl.
    let ec_key = reg.path("ec.key");
    let ec = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            "/CN=x",
            "-keyout",
        ])
        .arg(&ec_key)
        .output()
        .unwrap();
    assert!(ec.status.success(), "{}", stderr(&ec));
    let ec_csr = String::from_utf8(ec.stdout).unwrap();
    let (s, b) = reg.raw(
        "POST",
        "/cert",
        &[],
        &json(serde_json::json!({"csr": ec_csr})),
    );
    assert_error(s, &b, 400, "bad_csr");

    // A CSR whose signature does not verify.
    let good = Csr::generate(&pki::generate_key(), &[]).unwrap();
    let mut der = good.der().to_vec();
    let last = der.len() - 1;
    der[last] ^= 1;
    let bad_pem =
        der::pem::encode_string("CERTIFICATE REQUEST", der::pem::LineEnding::LF, &der).unwrap();
    let (s, b) = reg.raw(
        "POST",
        "/cert",
        &[],
        &json(serde_json::json!({"csr": bad_pem})),
    );
    assert_error(s, &b, 400, "bad_csr");

    // Unknown token.
    let (s, b) = reg.raw(
        "POST",
        "/cert",
        &[],
        &json(serde_json::json!({"csr": good.to_pem(), "token": "nosuchtoken"})),
    );
    assert_error(s, &b, 403, "bad_token");
    // Bad location.
    let (s, b) = reg.raw(
        "POST",
        "/cert",
        &[],
        &json(serde_json::json!({"csr": good.to_pem(), "location": "France"})),
    );
    assert_error(s, &b, 400, "bad_request");

    // Node authentication: wrong key, stale timestamp, replay.
    let body = json(serde_json::json!({"csr": Csr::generate(&a.key, &[]).unwrap().to_pem()}));
    let headers = |h: auth::AuthHeaders| h.to_pairs().into_iter().collect::<Vec<_>>();
    let other = pki::generate_key();
    let h = auth::sign(&other, a.serial, "POST", "/renew", &body, now(), [1; 16]);
    let (s, b) = reg.raw("POST", "/renew", &headers(h), &body);
    assert_error(s, &b, 401, "unauthorized");
    let h = auth::sign(
        &a.key,
        a.serial,
        "POST",
        "/renew",
        &body,
        now() - 3600,
        [2; 16],
    );
    let (s, b) = reg.raw("POST", "/renew", &headers(h), &body);
    assert_error(s, &b, 401, "unauthorized");
    assert!(b.contains("stale"), "{b}");
    let (s, b) = reg.raw("POST", "/renew", &[], &body);
    assert_error(s, &b, 401, "unauthorized");
    // Renewal far from expiry returns the same certificate: no change, and
    // a replay of that very request is refused.
    let h = auth::sign(&a.key, a.serial, "POST", "/renew", &body, now(), [3; 16]);
    let (s, b) = reg.raw("POST", "/renew", &headers(h.clone()), &body);
    assert_eq!(s, 200, "{b}");
    let (s, b) = reg.raw("POST", "/renew", &headers(h), &body);
    assert_error(s, &b, 401, "unauthorized");
    assert!(b.contains("replay"), "{b}");
    // Malformed admin requests.
    let (s, b) = reg.raw(
        "POST",
        "/admin/revoke",
        &[],
        &json(serde_json::json!({"serial": 1, "cn": "0/16"})),
    );
    assert_error(s, &b, 400, "bad_request");
    let (s, b) = reg.raw(
        "POST",
        "/admin/revoke",
        &[],
        &json(serde_json::json!({"cn": "x/16"})),
    );
    assert_error(s, &b, 400, "bad_request");
    let (s, b) = reg.raw(
        "POST",
        "/admin/revoke",
        &[],
        &json(serde_json::json!({"serial": 999})),
    );
    assert_error(s, &b, 404, "not_found");
    let (s, b) = reg.raw("DELETE", "/admin/tokens/nosuchtoken", &[], b"");
    assert_error(s, &b, 404, "not_found");
    let (s, b) = reg.raw(
        "POST",
        "/admin/tokens",
        &[],
        &json(serde_json::json!({"email": "y@example.org", "prefix_len": 99})),
    );
    assert_error(s, &b, 400, "bad_request");

    assert_eq!(reg.dump(), before, "a failed request changed the database");
    assert!(!reg.log().contains("panicked"), "{}", reg.log());
}

#[test]
fn admin_refused_from_unauthorised_origin_and_registration_disabled() {
    // Only 192.0.2.1 may administer; the test connects from 127.0.0.1.
    // Email registration disabled, anonymous too (the default).
    let reg = Registry::start(&["--authorized-origin", "192.0.2.1", "--prefix-length", "0"]);
    let before = reg.dump();
    let rt = rt();
    let err = rt.block_on(reg.client().revoke_serial(1)).unwrap_err();
    assert_eq!(err.code(), Some("forbidden"), "{err}");
    let err = rt
        .block_on(reg.client().add_token("a@example.org", Some(16)))
        .unwrap_err();
    assert_eq!(err.code(), Some("forbidden"));
    let out = re6st(&["registry", "rotate-keys", "--registry", &reg.url()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not allowed from 127.0.0.1"),
        "{}",
        stderr(&out)
    );
    let out = reg.conf("n", &["--anonymous"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("registration refused"),
        "{}",
        stderr(&out)
    );
    let out = reg.conf("n", &["--email", "a@example.org"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("registration refused"),
        "{}",
        stderr(&out)
    );
    assert_eq!(reg.dump(), before);
}

#[test]
fn unreachable_and_exhausted() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let out = re6st(&[
        "conf",
        "--registry",
        &format!("http://127.0.0.1:{port}"),
        "--anonymous",
        "--dir",
        dir.path().to_str().unwrap(),
    ]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot reach the registry"),
        "{}",
        stderr(&out)
    );

    // A /48 with 1-bit anonymous prefixes: two nodes fill it.
    let reg = Registry::start(&["--anonymous-prefix-length", "1"]);
    for n in ["a", "b"] {
        let out = reg.conf(n, &["--anonymous"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let before = reg.dump();
    let out = reg.conf("c", &["--anonymous"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("prefix space exhausted"),
        "{}",
        stderr(&out)
    );
    assert_eq!(reg.dump(), before);
}

#[test]
fn ipv6_listener_communities_ipv4_and_openssl_csr() {
    let port6 = TcpListener::bind("[::1]:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let community = dir.path().join("community");
    std::fs::write(&community, "# test\n0 *\n10 FR @EU\n").unwrap();
    let reg = Registry::start(&[
        "--listen",
        &format!("[::1]:{port6}"),
        "--anonymous-prefix-length",
        "16",
        "--community",
        community.to_str().unwrap(),
        "--ipv4",
        "10.42.0.0/16",
        "24",
    ]);
    let url6 = format!("http://[::1]:{port6}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("::1", port6)).is_err() {
        assert!(Instant::now() < deadline, "no IPv6 listener: {}", reg.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Enrolled over IPv6, located in France: the "10" community.
    let node = reg.path("fr");
    let out = re6st(&[
        "conf",
        "--registry",
        &url6,
        "--anonymous",
        "--location",
        "FR,@EU",
        "--dir",
        node.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cert =
        NodeCert::from_pem(&std::fs::read_to_string(node.join("cert.crt")).unwrap()).unwrap();
    let p = cert.prefix().unwrap();
    assert_eq!((p.value() >> 14, p.len()), (0b10, 16));
    // Elsewhere: the default community.
    let out = reg.conf("jp", &["--anonymous", "--location", "JP"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let cert =
        NodeCert::from_pem(&std::fs::read_to_string(reg.path("jp/cert.crt")).unwrap()).unwrap();
    assert_eq!(cert.prefix().unwrap().value() >> 15, 0);

    let rt = rt();
    let client6 = RegistryClient::new(&url6).unwrap();
    let ca = rt.block_on(client6.ca()).unwrap();
    let cfg = rt
        .block_on(client6.config(None))
        .unwrap()
        .verify(&ca_verifying_key(&ca.ca))
        .unwrap();
    let ipv4 = cfg.ipv4.expect("ipv4 settings");
    assert_eq!(
        (ipv4.network.as_str(), ipv4.prefix_len),
        ("10.42.0.0/16", 24)
    );

    // A CSR made by `openssl req` with an Ed25519 key is accepted.
    let out = Command::new("openssl")
        .args([
            "req",
            "-new",
            "-newkey",
            "ed25519",
            "-nodes",
            "-subj",
            "/O=Example/CN=ignored",
            "-keyout",
        ])
        .arg(reg.path("ossl.key"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let csr = String::from_utf8(out.stdout).unwrap();
    let body = serde_json::json!({ "csr": csr }).to_string();
    let (s, b) = reg.raw("POST", "/cert", &[], body.as_bytes());
    assert_eq!(s, 200, "{b}");
    let resp: serde_json::Value = serde_json::from_str(&b).unwrap();
    let path = reg.path("ossl.crt");
    std::fs::write(&path, resp["cert"].as_str().unwrap()).unwrap();
    let v = Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(reg.path("fr/ca.crt"))
        .arg(&path)
        .output()
        .unwrap();
    assert!(v.status.success(), "{}", String::from_utf8_lossy(&v.stdout));
}

/// Stands in for the node daemon on the registry host (built and tested on
/// its own in `tests/node_*.rs`): serves a real control socket with
/// `control::serve`, answers with `answer` and records every request.
struct FakeNode {
    dir: tempfile::TempDir,
    asked: Arc<Mutex<Vec<control::Request>>>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeNode {
    fn start(answer: impl Fn(&control::Request) -> control::Response + Send + 'static) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let asked = Arc::new(Mutex::new(Vec::new()));
        let path = control::socket_path(dir.path());
        let log = asked.clone();
        runtime.block_on(async move {
            let listener = control::bind(&path).unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::channel::<control::ControlCall>(8);
            tokio::spawn(control::serve(listener, tx));
            tokio::spawn(async move {
                while let Some((request, reply)) = rx.recv().await {
                    let response = answer(&request);
                    log.lock().unwrap().push(request);
                    let _ = reply.send(response);
                }
            });
        });
        Self {
            dir,
            asked,
            runtime: Some(runtime),
        }
    }

    fn socket(&self) -> String {
        control::socket_path(self.dir.path())
            .to_str()
            .unwrap()
            .to_owned()
    }

    fn asked(&self) -> Vec<control::Request> {
        self.asked.lock().unwrap().clone()
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn topology_sample(a: &str, b: &str) -> Vec<control::TopologyNode> {
    vec![
        control::TopologyNode {
            prefix: a.into(),
            neighbours: Some(vec![b.into()]),
        },
        control::TopologyNode {
            prefix: b.into(),
            neighbours: Some(vec![a.into()]),
        },
        control::TopologyNode {
            prefix: "9/16".into(),
            neighbours: None,
        },
    ]
}

#[test]
fn bootstrap_topology_and_versions_through_the_registry_node() {
    // What the fake node answers: the bootstrap peer is set as the test
    // goes; the topology names the two enrolled nodes.
    let peer: Arc<Mutex<Option<control::BootstrapPeer>>> = Arc::default();
    let topo: Arc<Mutex<Vec<control::TopologyNode>>> = Arc::default();
    let node = {
        let (peer, topo) = (peer.clone(), topo.clone());
        FakeNode::start(move |request| match request {
            control::Request::BootstrapPeer => {
                control::Response::BootstrapPeer(peer.lock().unwrap().clone())
            }
            control::Request::Topology => control::Response::Topology(topo.lock().unwrap().clone()),
            control::Request::Versions => control::Response::Versions(vec![
                control::NodeVersion {
                    prefix: "0/16".into(),
                    software: Some("0.1.0".into()),
                    config_version: Some(3),
                },
                control::NodeVersion {
                    prefix: "9/16".into(),
                    software: None,
                    config_version: None,
                },
            ]),
            control::Request::Status { .. } => control::Response::Error("not asked".into()),
        })
    };
    let reg = Registry::start(&[
        "--anonymous-prefix-length",
        "16",
        "--node-control",
        &node.socket(),
    ]);
    // The registry node (first certificate) and another node.
    for n in ["a", "b"] {
        let out = reg.conf(n, &["--anonymous"]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let prefix = |n: &str| {
        NodeCert::from_pem(&std::fs::read_to_string(reg.path(&format!("{n}/cert.crt"))).unwrap())
            .unwrap()
            .prefix()
            .unwrap()
            .to_string()
    };
    let (pa, pb) = (prefix("a"), prefix("b"));
    let a = node_auth(&reg.path("a"));
    let b = node_auth(&reg.path("b"));
    let client = reg.client();
    let rt = rt();
    let before = reg.dump();

    // The node knows no peer yet.
    let err = rt.block_on(client.bootstrap(&b)).unwrap_err();
    assert_eq!(err.code(), Some("no_peer"), "{err}");

    // The node hands out the registry node: b can open its addresses
    // (malformed ones are not passed on); a cannot open b's answer.
    *peer.lock().unwrap() = Some(control::BootstrapPeer {
        prefix: pa.clone(),
        addresses: vec![
            "10.42.0.1,1194,udp".into(),
            "not an address".into(),
            "2001:db8::1,1195,quic".into(),
        ],
    });
    let got = rt.block_on(client.bootstrap_peer(&b)).unwrap();
    assert_eq!(got.prefix, pa);
    assert_eq!(
        got.addresses,
        vec!["10.42.0.1,1194,udp", "2001:db8::1,1195,quic"]
    );
    let sealed = rt.block_on(client.bootstrap(&b)).unwrap();
    assert!(re6st::registry::client::open_bootstrap(&sealed, &a.key).is_err());
    assert!(re6st::registry::client::open_bootstrap(&sealed, &b.key).is_ok());

    // Never the requester itself: the registry node gets no_peer (after
    // asking the node a few times for someone else).
    let asked_before = node.asked().len();
    let err = rt.block_on(client.bootstrap(&a)).unwrap_err();
    assert_eq!(err.code(), Some("no_peer"), "{err}");
    assert!(err.to_string().contains("other than you"), "{err}");
    assert_eq!(node.asked().len() - asked_before, 3);

    // A peer without a usable address is no peer.
    *peer.lock().unwrap() = Some(control::BootstrapPeer {
        prefix: pa.clone(),
        addresses: vec!["bogus".into()],
    });
    let err = rt.block_on(client.bootstrap(&b)).unwrap_err();
    assert_eq!(err.code(), Some("no_peer"), "{err}");

    // Admin views, through the client and the CLI.
    *topo.lock().unwrap() = topology_sample(&pa, &pb);
    assert_eq!(
        rt.block_on(client.topology()).unwrap(),
        topology_sample(&pa, &pb)
    );
    let out = re6st(&["registry", "topology", "--registry", &reg.url()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.starts_with("3 nodes, 1 tunnels\n"), "{text}");
    assert!(text.contains("(did not answer)"), "{text}");
    let out = re6st(&["registry", "topology", "--dot", "--registry", &reg.url()]);
    let dot = String::from_utf8_lossy(&out.stdout);
    let (lo, hi) = if pa <= pb { (&pa, &pb) } else { (&pb, &pa) };
    assert!(dot.contains(&format!("\"{lo}\" -- \"{hi}\";")), "{dot}");
    assert!(dot.contains("\"9/16\" [style=dashed];"), "{dot}");
    let versions = rt.block_on(client.versions()).unwrap();
    assert_eq!(versions[0].config_version, Some(3));
    let out = re6st(&["registry", "versions", "--registry", &reg.url()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(text.contains("0/16    0.1.0     3"), "{text}");

    // Nothing above touched the database.
    assert_eq!(reg.dump(), before);
    assert!(!reg.log().contains("panicked"), "{}", reg.log());
}

#[test]
fn no_registry_node_means_503() {
    // Configured, but no node listens on that socket.
    let absent = tempfile::tempdir().unwrap();
    let socket = absent.path().join("control.sock");
    let reg = Registry::start(&[
        "--anonymous-prefix-length",
        "16",
        "--node-control",
        socket.to_str().unwrap(),
    ]);
    let out = reg.conf("a", &["--anonymous"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let a = node_auth(&reg.path("a"));
    let rt = rt();
    let before = reg.dump();
    let err = rt.block_on(reg.client().bootstrap(&a)).unwrap_err();
    assert_eq!(err.code(), Some("no_peer"), "{err}");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    let (s, b) = reg.raw("GET", "/admin/topology", &[], b"");
    assert_error(s, &b, 503, "no_node");
    let (s, b) = reg.raw("GET", "/admin/versions", &[], b"");
    assert_error(s, &b, 503, "no_node");
    let out = re6st(&["registry", "topology", "--registry", &reg.url()]);
    assert!(!out.status.success());
    assert_eq!(stderr(&out).trim().lines().count(), 1, "{}", stderr(&out));
    assert!(stderr(&out).contains("registry's node"), "{}", stderr(&out));
    assert_eq!(reg.dump(), before);

    // Not configured at all.
    let reg = Registry::start(&[]);
    let (s, b) = reg.raw("GET", "/admin/topology", &[], b"");
    assert_error(s, &b, 503, "no_node");
    assert!(b.contains("--node-control"), "{b}");
}

#[test]
fn node_views_refused_from_unauthorised_origins() {
    let node = FakeNode::start(|_| control::Response::Topology(Vec::new()));
    let reg = Registry::start(&[
        "--authorized-origin",
        "192.0.2.1",
        "--node-control",
        &node.socket(),
    ]);
    let before = reg.dump();
    let rt = rt();
    let err = rt.block_on(reg.client().topology()).unwrap_err();
    assert_eq!(err.code(), Some("forbidden"), "{err}");
    let err = rt.block_on(reg.client().versions()).unwrap_err();
    assert_eq!(err.code(), Some("forbidden"), "{err}");
    let out = re6st(&["registry", "versions", "--registry", &reg.url()]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("not allowed from 127.0.0.1"),
        "{}",
        stderr(&out)
    );
    assert!(node.asked().is_empty(), "{:?}", node.asked());
    assert_eq!(reg.dump(), before);
}
