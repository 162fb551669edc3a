//! The unit files in `contrib/systemd/`: `systemd-analyze verify` accepts
//! them (with `ExecStart` pointing at the binary under test), and the
//! command lines they run are ones `re6st` understands.

use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_re6st");
const INSTALLED: &str = "/usr/local/bin/re6st";
const UNITS: [&str; 2] = ["re6st-node.service", "re6st-registry.service"];

fn unit(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("contrib/systemd")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The arguments of the unit's `ExecStart` after the binary.
fn exec_start(text: &str) -> Vec<String> {
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("an ExecStart line");
    let mut words = line.split_whitespace().map(str::to_owned);
    assert_eq!(words.next().as_deref(), Some(INSTALLED));
    words.collect()
}

#[test]
fn units_pass_systemd_analyze_verify() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "systemd-analyze is missing (apt package systemd)"
        );
        eprintln!("skipping: systemd-analyze not installed");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for name in UNITS {
        let text = unit(name).replace(INSTALLED, BIN);
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let out = Command::new("systemd-analyze")
            .args(["verify", "--man=no"])
            .arg(&path)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{name}: {stderr}");
        // Unknown keys and misplaced settings are only warnings.
        let ours: Vec<&str> = stderr.lines().filter(|l| l.contains(name)).collect();
        assert!(ours.is_empty(), "{name}: {stderr}");
    }
}

#[test]
fn units_run_the_documented_commands() {
    for name in UNITS {
        let text = unit(name);
        for key in [
            "Type=simple",
            "Restart=on-failure",
            "StateDirectory=",
            "WantedBy=multi-user.target",
        ] {
            assert!(text.contains(key), "{name} lacks {key}");
        }
    }
    let node = unit("re6st-node.service");
    assert!(node.contains("RuntimeDirectory=re6st\n"));
    assert!(node.contains("CAP_NET_ADMIN"));
    assert_eq!(
        exec_start(&node)[..3],
        ["node", "--config", "/etc/re6st/re6st.toml"]
    );
    // The registry must not own /run/re6st: systemd would remove the
    // node's control socket whenever the registry stops.
    let registry = unit("re6st-registry.service");
    assert!(!registry.contains("RuntimeDirectory="));

    // The registry's command line parses: it gets as far as loading the
    // (absent) CA, not to a usage error.
    let args = exec_start(&registry);
    assert_eq!(args[..2], ["registry", "serve"]);
    let out = Command::new(BIN).args(&args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("cannot load the CA"), "{stderr}");
}
