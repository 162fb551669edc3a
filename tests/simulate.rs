//! `re6st simulate` as an operator runs it: a small sweep (bootstrapped in
//! waves) writes its CSV and SVG, a scenario writes its figures and
//! samples, and a bad option is one clear line.

use std::process::Command;

fn re6st() -> Command {
    Command::new(env!("CARGO_BIN_EXE_re6st"))
}

#[test]
fn sweep_writes_csv_and_svg() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = re6st()
        .args([
            "simulate",
            "--sweep",
            "20,40",
            "--client-count",
            "3",
            "--refresh",
            "30",
            "--steady",
            "40",
            "--join-window",
            "5",
            "--wave-growth",
            "1",
            "--sample-pairs",
            "50",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .expect("run re6st simulate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let csv = std::fs::read_to_string(dir.path().join("sweep.csv")).expect("sweep.csv");
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("nodes,client_count,all_pairs_after_last_join_s,"));
    assert!(
        lines[1].starts_with("20,") && lines[2].starts_with("40,"),
        "{csv}"
    );
    // Every pair reached, no loop, in both rows.
    for (row, n) in lines[1..].iter().zip([20u32, 40]) {
        let pairs = n * (n - 1);
        assert!(row.contains(&format!(",0,{pairs}/{pairs},")), "{row}");
    }
    let svg = std::fs::read_to_string(dir.path().join("sweep.svg")).expect("sweep.svg");
    assert!(svg.starts_with("<svg") && svg.contains("<polyline"));
    // --plot redraws the same chart from the CSV alone.
    std::fs::remove_file(dir.path().join("sweep.svg")).expect("remove sweep.svg");
    let out = re6st()
        .args(["simulate", "--plot"])
        .arg(dir.path().join("sweep.csv"))
        .output()
        .expect("run re6st simulate --plot");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let again = std::fs::read_to_string(dir.path().join("sweep.svg")).expect("sweep.svg");
    assert_eq!(again, svg);
}

#[test]
fn scenario_writes_figures_and_samples() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let out = re6st()
        .args([
            "simulate",
            "--nodes",
            "30",
            "--scenario",
            "crash",
            "--client-count",
            "3",
            "--nat-fraction",
            "0.2",
            "--refresh",
            "30",
            "--steady",
            "30",
            "--join-window",
            "5",
            "--out",
        ])
        .arg(dir.path())
        .output()
        .expect("run re6st simulate");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("crash_no_route_via_it_s"), "{table}");
    let figures = std::fs::read_to_string(dir.path().join("crash-30.csv")).expect("figures");
    assert!(figures.starts_with("metric,value\n"));
    assert!(figures.contains("\nsteady_loops,0\n"), "{figures}");
    let samples =
        std::fs::read_to_string(dir.path().join("crash-30-samples.csv")).expect("samples");
    assert!(samples.lines().count() > 2, "{samples}");
}

#[test]
fn a_bad_option_is_one_clear_line() {
    let out = re6st()
        .args(["simulate", "--latency-ms", "80-5"])
        .output()
        .expect("run re6st simulate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--latency-ms"), "{err}");
}

#[test]
fn a_negative_wave_growth_is_refused() {
    let out = re6st()
        .args(["simulate", "--wave-growth=-1"])
        .output()
        .expect("run re6st simulate");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("--wave-growth"), "{err}");
}
