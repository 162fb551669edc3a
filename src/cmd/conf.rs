//! `re6st conf`: enroll this machine in a network.
//!
//! Fetches the CA from the registry (checking its fingerprint), then either
//! asks for a token by email, or generates (or reuses) the node key, sends a
//! CSR with a token or anonymously, checks the certificate it gets, and
//! writes `ca.crt`, `cert.key` (0600), `cert.crt` and `re6st.toml` into the
//! directory.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{bail, Context as _};
use clap::{ArgGroup, Args};
use re6st::pki::{self, Csr, NodeCert, Verifier};
use re6st::registry::api::CertRequest;
use re6st::registry::{ClientError, RegistryClient};

/// `re6st conf ...`
#[derive(Args)]
#[command(group(ArgGroup::new("mode").args(["ca_only", "anonymous", "email", "token"])))]
pub(crate) struct ConfArgs {
    /// Registry URL, e.g. http://registry.example:9201.
    #[arg(long)]
    registry: String,
    /// Expected fingerprint of the CA certificate (`sha256:HEX`, as
    /// `re6st registry init` prints it). Strongly recommended.
    #[arg(long)]
    fingerprint: Option<String>,
    /// Only fetch the CA certificate.
    #[arg(long)]
    ca_only: bool,
    /// Register anonymously (if the registry allows it).
    #[arg(long)]
    anonymous: bool,
    /// Ask the registry to mail a token to this address, then exit.
    #[arg(long)]
    email: Option<String>,
    /// Register with this token.
    #[arg(long)]
    token: Option<String>,
    /// Where to write the files.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Extra subject field of the certificate request (e.g. -r O Example),
    /// repeatable.
    #[arg(short = 'r', num_args = 2, value_names = ["KEY", "VALUE"], action = clap::ArgAction::Append)]
    req: Vec<String>,
    /// Where this node is, to pick a community: CC,@CONTINENT (e.g. FR,@EU).
    #[arg(long)]
    location: Option<String>,
}

/// Runs `re6st conf`.
pub(crate) fn run(a: ConfArgs) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(conf(a))
}

async fn conf(a: ConfArgs) -> anyhow::Result<()> {
    if !(a.ca_only || a.anonymous || a.email.is_some() || a.token.is_some()) {
        bail!("choose one of --anonymous, --email ADDR, --token TOKEN or --ca-only");
    }
    let client = RegistryClient::new(&a.registry)?;
    std::fs::create_dir_all(&a.dir)
        .with_context(|| format!("cannot create {}", a.dir.display()))?;
    let dir = a
        .dir
        .canonicalize()
        .with_context(|| format!("{}", a.dir.display()))?;

    // The CA, checked against the fingerprint.
    let ca = client.ca().await.map_err(explain)?;
    let (_, der) = der::pem::decode_vec(ca.ca.as_bytes())
        .map_err(|e| anyhow::anyhow!("registry sent an invalid CA certificate: {e}"))?;
    let fp = pki::fingerprint(&der);
    match &a.fingerprint {
        Some(want) => {
            if normalize_fingerprint(want)? != fp {
                bail!("CA fingerprint mismatch: registry {} sent {fp}, expected {want}; refusing to continue", a.registry);
            }
        }
        None => {
            eprintln!("##########################################################################");
            eprintln!("WARNING: no --fingerprint given: the CA certificate is NOT authenticated.");
            eprintln!(
                "Anyone between you and {} could have replaced it.",
                a.registry
            );
            eprintln!("CA fingerprint: {fp}");
            eprintln!("Check it with the registry operator, and pass --fingerprint next time.");
            eprintln!("##########################################################################");
        }
    }
    let verifier = Verifier::new(&ca.ca).context("registry sent an invalid CA certificate")?;
    let network = verifier.network();
    let ca_path = dir.join("ca.crt");
    match std::fs::read_to_string(&ca_path) {
        Ok(old) if old != ca.ca => {
            let same = der::pem::decode_vec(old.as_bytes()).is_ok_and(|(_, d)| d == der);
            if !same {
                bail!(
                    "{} holds another CA than registry {}; refusing to overwrite it",
                    ca_path.display(),
                    a.registry
                );
            }
        }
        Ok(_) => {}
        Err(_) => write_file(&ca_path, ca.ca.as_bytes(), 0o644)?,
    }
    println!("network {network}, CA {fp}");
    if a.ca_only {
        println!("wrote {}", ca_path.display());
        return Ok(());
    }

    if let Some(email) = &a.email {
        let sent = client.request_token(email).await.map_err(explain)?;
        println!(
            "a registration token was mailed to {}; it expires {}.",
            sent.email,
            re6st::registry::mail::asctime(sent.expires)
        );
        println!(
            "rerun: re6st conf --registry {} --token TOKEN --dir {}",
            a.registry,
            dir.display()
        );
        return Ok(());
    }

    // The key: reused when present.
    let key_path = dir.join("cert.key");
    let key = if key_path.exists() {
        pki::load_key(&key_path)
            .with_context(|| format!("cannot read the key {}", key_path.display()))?
    } else {
        let key = pki::generate_key();
        pki::save_key(&key_path, &key)
            .with_context(|| format!("cannot write {}", key_path.display()))?;
        key
    };
    let subject: Vec<(String, String)> = a
        .req
        .chunks(2)
        .map(|p| (p[0].clone(), p[1].clone()))
        .collect();
    let csr = Csr::generate(&key, &subject).context("cannot build the certificate request")?;
    let resp = client
        .request_cert(&CertRequest {
            csr: csr.to_pem(),
            token: a.token.clone(),
            location: a.location.clone(),
        })
        .await
        .map_err(explain)?;
    let cert = NodeCert::from_pem(&resp.cert).context("registry sent an invalid certificate")?;
    let prefix = verifier
        .verify(&cert, SystemTime::now())
        .map_err(|e| anyhow::anyhow!("registry sent a certificate that does not verify: {e}"))?;
    if cert.public_key()? != key.verifying_key() {
        bail!("registry sent a certificate for another key");
    }
    let cert_path = dir.join("cert.crt");
    write_file(&cert_path, resp.cert.as_bytes(), 0o644)?;
    let toml_path = dir.join("re6st.toml");
    write_node_config(&toml_path, &a.registry, &ca_path, &cert_path, &key_path)?;
    let (subnet, len) = network.subnet(&prefix)?;
    println!(
        "certificate {} for prefix {prefix}: subnet {subnet}/{len}",
        cert.serial()
    );
    println!(
        "wrote {}, {}, {}, {}",
        ca_path.display(),
        key_path.display(),
        cert_path.display(),
        toml_path.display()
    );
    Ok(())
}

/// One clear line for the errors an enrolling user meets.
fn explain(e: ClientError) -> anyhow::Error {
    match &e {
        ClientError::Unreachable(url, why) => {
            anyhow::anyhow!("cannot reach the registry at {url}: {why}")
        }
        ClientError::Timeout(url) => {
            anyhow::anyhow!("the registry at {url} did not answer in time")
        }
        ClientError::Api { code, detail, .. } => match code.as_str() {
            "registration_disabled" => anyhow::anyhow!("registration refused: {detail}"),
            "bad_token" => anyhow::anyhow!("token refused: unknown, expired or already used"),
            "exhausted" => {
                anyhow::anyhow!("the registry has no free prefix left (prefix space exhausted)")
            }
            _ => anyhow::Error::new(e),
        },
        _ => anyhow::Error::new(e),
    }
}

/// `sha256:HEX` (hex in any case, `:` separators allowed) to our form.
fn normalize_fingerprint(s: &str) -> anyhow::Result<String> {
    let (alg, hex) = s
        .split_once(':')
        .context("--fingerprint expects ALG:HEX, e.g. sha256:ab12...")?;
    if !alg.eq_ignore_ascii_case("sha256") {
        bail!("--fingerprint: unsupported algorithm {alg:?} (only sha256)");
    }
    let hex: String = hex
        .chars()
        .filter(|c| *c != ':')
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("--fingerprint: expected 64 hex digits after sha256:");
    }
    Ok(format!("sha256:{hex}"))
}

/// Writes through a temporary file and a rename, so a crash never leaves a
/// half-written file.
fn write_file(path: &Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Writes (or updates: other keys are kept) the node configuration.
fn write_node_config(
    path: &Path,
    registry: &str,
    ca: &Path,
    cert: &Path,
    key: &Path,
) -> anyhow::Result<()> {
    let mut table: toml::Table = match std::fs::read_to_string(path) {
        Ok(text) => text
            .parse()
            .with_context(|| format!("{} is not valid TOML", path.display()))?,
        Err(_) => toml::Table::new(),
    };
    for (k, v) in [
        ("registry", registry.to_owned()),
        ("ca", ca.display().to_string()),
        ("cert", cert.display().to_string()),
        ("key", key.display().to_string()),
    ] {
        table.insert(k.into(), toml::Value::String(v));
    }
    let text = format!(
        "# re6st node configuration, written by `re6st conf` (see docs/registry-api.md).\n{}",
        toml::to_string(&table)?
    );
    write_file(path, text.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints() {
        let h = "ab".repeat(32);
        assert_eq!(
            normalize_fingerprint(&format!("SHA256:{}", h.to_uppercase())).unwrap(),
            format!("sha256:{h}")
        );
        let colons: Vec<String> = (0..32).map(|_| "AB".to_string()).collect();
        assert_eq!(
            normalize_fingerprint(&format!("sha256:{}", colons.join(":"))).unwrap(),
            format!("sha256:{h}")
        );
        for bad in [
            "ab",
            "md5:ab",
            "sha256:abc",
            &format!("sha256:{}", "zz".repeat(32)),
        ] {
            assert!(normalize_fingerprint(bad).is_err(), "{bad}");
        }
    }
}
