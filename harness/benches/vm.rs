//! Whole-run benchmark: boot time (vmlinux via PVH vs bzImage), time in the
//! agent, time per kernel, peak qemu memory, initramfs size and build time,
//! time per scenario run (scenario x backend), one kernel with runs one at a
//! time on one vCPU vs the defaults, and the matrix's wall time at --jobs 1
//! vs the default; the `perf` scenario's figures per kernel, and a gate of
//! the first kernel against itself (the performance part's time, each
//! figure's ratio and interval); and how long the first kernel takes to vet
//! `extended-ports` when its NAT loses UDP replies, against the same kernel
//! as it is (alternated, two runs each), and once with `--waits full`.
//!
//! `make bench` (or `cargo bench --profile dev --bench vm`). Figures go to
//! stdout as a table and to target/natvet-bench/bench.json.
//! Kernels: the default set of vm-images/matrix.toml, or
//! NATVET_BENCH_KERNELS=debian:6.1,debian:6.12; NATVET_BENCH_RUNS=3 sets the repetitions.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde_json::{json, Value};

fn natvet() -> &'static str {
    env!("CARGO_BIN_EXE_natvet")
}

fn out_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/natvet-bench")
}

/// One `natvet vet` run; returns its JSON report and wall time.
fn vet(kernels: &[String], extra: &[&str], tag: &str) -> Option<(Value, f64)> {
    let dir = out_root().join(tag);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    let json = dir.join("report.json");
    let mut cmd = Command::new(natvet());
    cmd.arg("vet")
        .arg("--quiet")
        .arg("--json")
        .arg(&json)
        .arg("--out")
        .arg(&dir);
    for k in kernels {
        cmd.arg("--kernel").arg(k);
    }
    cmd.args(extra);
    let start = Instant::now();
    let status = cmd.output().ok()?.status;
    let wall = start.elapsed().as_secs_f64();
    let report: Value = serde_json::from_slice(&std::fs::read(&json).ok()?).ok()?;
    if status.code() != Some(0) {
        eprintln!("bench: {tag} exited {status}; figures kept, but the run was not clean");
    }
    Some((report, wall))
}

/// Every kernel run of the PVH (`--boot auto`) samples written so far.
fn pvh_kernel_runs() -> Vec<Value> {
    let mut out = Vec::new();
    for dir in std::fs::read_dir(out_root())
        .into_iter()
        .flatten()
        .flatten()
    {
        if !dir.file_name().to_string_lossy().contains("-auto-") {
            continue;
        }
        let Some(report) = std::fs::read(dir.path().join("report.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        else {
            continue;
        };
        out.extend(report["kernels"].as_array().cloned().unwrap_or_default());
    }
    out
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn field(report: &Value, name: &str) -> Vec<f64> {
    report["kernels"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|k| k["timings"][name].as_f64())
        .collect()
}

fn main() {
    // cargo bench passes --bench; nothing else to parse.
    let kernels: Vec<String> = match std::env::var("NATVET_BENCH_KERNELS") {
        Ok(v) => v
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect(),
        Err(_) => natvet::kernel_sets::kernel_set("default").unwrap_or_default(),
    };
    let runs: usize = std::env::var("NATVET_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);

    // Warm the cache first: a cold fetch is not what the other figures measure.
    let fetch = Instant::now();
    let ok = Command::new(natvet())
        .arg("kernels")
        .arg("fetch")
        .args(&kernels)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("bench: could not fetch {kernels:?}");
        std::process::exit(3);
    }
    let fetch_s = fetch.elapsed().as_secs_f64();

    if kernels.is_empty() {
        eprintln!("bench: no kernels");
        std::process::exit(2);
    }
    let _ = std::fs::remove_dir_all(out_root());
    let mut rows = Vec::new();
    println!(
        "{:<26} {:>8} {:>9} {:>9} {:>9} {:>9} {:>8} {:>10} {:>9}",
        "kernel",
        "boot",
        "host boot",
        "guest up",
        "agent",
        "total",
        "rss MB",
        "initrd MB",
        "initrd"
    );
    for kernel in &kernels {
        for boot in ["auto", "bzimage"] {
            let mut samples: Vec<Value> = Vec::new();
            for i in 0..runs {
                let tag = format!("{}-{boot}-{i}", kernel.replace([':', '/'], "_"));
                if let Some((report, _)) =
                    vet(std::slice::from_ref(kernel), &["--boot", boot], &tag)
                {
                    samples.push(report);
                }
            }
            let pick = |name: &str| median(samples.iter().flat_map(|r| field(r, name)).collect());
            let label = samples
                .first()
                .and_then(|r| r["kernels"][0]["release"].as_str().map(str::to_string))
                .unwrap_or_else(|| kernel.clone());
            let boot_kind = samples
                .first()
                .and_then(|r| r["kernels"][0]["boot"].as_str().map(str::to_string))
                .unwrap_or_else(|| boot.to_string());
            let row = json!({
                "kernel": label,
                "boot": boot_kind,
                "runs": samples.len(),
                "host_boot_ms": pick("boot_ms"),
                "guest_uptime_ms": pick("guest_uptime_ms"),
                "agent_ms": pick("agent_ms"),
                "total_ms": pick("total_ms"),
                "peak_rss_mb": pick("peak_rss_mb"),
                "initramfs_bytes": pick("initramfs_bytes"),
                "initramfs_ms": pick("initramfs_ms"),
            });
            println!(
                "{:<26} {:>8} {:>8.2}s {:>8.2}s {:>8.2}s {:>8.2}s {:>8.0} {:>10.1} {:>7.0}ms",
                label,
                boot_kind,
                pick("boot_ms") / 1000.0,
                pick("guest_uptime_ms") / 1000.0,
                pick("agent_ms") / 1000.0,
                pick("total_ms") / 1000.0,
                pick("peak_rss_mb"),
                pick("initramfs_bytes") / 1048576.0,
                pick("initramfs_ms"),
            );
            rows.push(row);
        }
    }

    // Time per check: the median over kernels and runs of the PVH samples.
    let mut per_check: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    for k in pvh_kernel_runs() {
        for r in k["results"].as_array().into_iter().flatten() {
            if let (Some(c), Some(ms)) = (r["check"].as_str(), r["duration_ms"].as_f64()) {
                per_check.entry(c.to_string()).or_default().push(ms);
            }
        }
    }
    println!();
    println!("{:<28} {:>10}", "check (all backends)", "median ms");
    let mut check_rows = Vec::new();
    for (check, v) in per_check {
        let m = median(v);
        println!("{check:<28} {m:>10.0}");
        check_rows.push(json!({"check": check, "median_ms": m}));
    }

    // Each scenario run (scenario x backend) in the guest: its setup and its
    // whole time, median over kernels and runs. Runs overlap (--parallel),
    // so their sum exceeds the agent's time.
    let mut per_run: std::collections::BTreeMap<(String, String), (Vec<f64>, Vec<f64>)> =
        Default::default();
    for k in pvh_kernel_runs() {
        for r in k["timings"]["scenario_runs"]
            .as_array()
            .into_iter()
            .flatten()
        {
            let key = (
                r["scenario"].as_str().unwrap_or("?").to_string(),
                r["backend"].as_str().unwrap_or("?").to_string(),
            );
            let e = per_run.entry(key).or_default();
            e.0.extend(r["setup_ms"].as_f64());
            e.1.extend(r["elapsed_ms"].as_f64());
        }
    }
    println!();
    println!(
        "{:<18} {:<16} {:>9} {:>9}",
        "scenario", "backend", "setup ms", "total ms"
    );
    let mut run_rows = Vec::new();
    for ((scenario, backend), (setup, total)) in per_run {
        let (setup, total) = (median(setup), median(total));
        println!("{scenario:<18} {backend:<16} {setup:>9.0} {total:>9.0}");
        run_rows.push(
            json!({"scenario": scenario, "backend": backend, "setup_ms": setup, "total_ms": total}),
        );
    }

    // One kernel with the scenario runs one after another on one vCPU (how
    // natvet ran before runs overlapped), against the defaults above.
    let serial_kernel = vet(
        std::slice::from_ref(&kernels[0]),
        &["--parallel", "1", "--cpus", "1"],
        "serial-runs",
    )
    .and_then(|(r, _)| field(&r, "total_ms").first().copied());

    // A cold cache: the first kernel fetched into an empty one.
    let cold_dir = out_root().join("cold-cache");
    let _ = std::fs::remove_dir_all(&cold_dir);
    let cold = Instant::now();
    let cold_ok = Command::new(natvet())
        .args(["kernels", "fetch", &kernels[0]])
        .env("NATVET_CACHE", &cold_dir)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    let cold_s = cold_ok.then(|| cold.elapsed().as_secs_f64());
    let _ = std::fs::remove_dir_all(&cold_dir);

    let serial = vet(&kernels, &["--jobs", "1"], "matrix-jobs1").map(|(_, w)| w);
    let matrix = vet(&kernels, &[], "matrix-default");
    let parallel = matrix.as_ref().map(|(_, w)| *w);
    let figures = matrix.as_ref().map(|(r, _)| perf_figures(r));
    let gate = perf_gate(&kernels[0]);
    let broken = broken_vs_good(&kernels[0]);
    let jobs = natvet::host::cores();
    println!();
    println!("warm fetch of {} kernels: {fetch_s:.1} s", kernels.len());
    if let Some(c) = cold_s {
        println!("cold fetch of {} into an empty cache: {c:.1} s", kernels[0]);
    }
    if let (Some(s), Some(p)) = (serial, parallel) {
        println!(
            "matrix of {} kernels: {s:.1} s at --jobs 1, {p:.1} s at the default ({jobs} cores): {:.2}x",
            kernels.len(),
            s / p
        );
    }
    if let Some(t) = serial_kernel {
        println!(
            "{} with scenario runs one at a time on one vCPU (--parallel 1 --cpus 1): {:.1} s",
            kernels[0],
            t / 1000.0
        );
    }
    let out = json!({
        "kernels": kernels,
        "runs": runs,
        "per_kernel": rows,
        "fetch_warm_s": fetch_s,
        "fetch_cold_first_kernel_s": cold_s,
        "per_check": check_rows,
        "per_scenario_run": run_rows,
        "serial_runs_first_kernel_ms": serial_kernel,
        "matrix_jobs1_s": serial,
        "matrix_default_s": parallel,
        "cores": jobs,
        "perf_figures": figures,
        "perf_gate": gate,
        "broken_vs_good": broken,
    });
    let path = out_root().join("bench.json");
    if std::fs::write(
        &path,
        serde_json::to_string_pretty(&out).unwrap_or_default(),
    )
    .is_ok()
    {
        println!("figures: {}", path.display());
    }
}

/// The `perf` scenario's figures on each kernel of the matrix run (figures
/// of one boot each, with the other kernel's VM beside it).
fn perf_figures(report: &Value) -> Value {
    println!();
    println!("performance figures (one boot each, two VMs at once):");
    let mut out = Vec::new();
    for k in report["kernels"].as_array().into_iter().flatten() {
        let label = k["release"].as_str().unwrap_or("?");
        for f in k["perf"].as_array().into_iter().flatten() {
            let v = f["value"].as_f64();
            println!(
                "  {label:<24} {:<28} {:>10} {}",
                f["probe"].as_str().unwrap_or("?"),
                v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "-".into()),
                f["unit"].as_str().unwrap_or("")
            );
            out.push(json!({"kernel": label, "probe": f["probe"], "value": v, "unit": f["unit"]}));
        }
    }
    Value::Array(out)
}

/// A kernel gated against itself with the defaults: how long the
/// performance part takes (six alternated boots), and each figure's ratio
/// and interval (1 is the truth).
fn perf_gate(kernel: &str) -> Option<Value> {
    let dir = out_root().join("perf-gate");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).ok()?;
    let json = dir.join("report.json");
    let start = Instant::now();
    let out = Command::new(natvet())
        .args([
            "gate",
            "--quiet",
            "--scenario",
            "perf",
            "--baseline",
            kernel,
            "--candidate",
            kernel,
        ])
        .arg("--json")
        .arg(&json)
        .arg("--out")
        .arg(&dir)
        .output()
        .ok()?;
    let wall = start.elapsed().as_secs_f64();
    let report: Value = serde_json::from_slice(&std::fs::read(&json).ok()?).ok()?;
    let perf = &report["gate"]["perf"];
    let perf_s = perf["elapsed_ms"].as_f64().unwrap_or(0.0) / 1000.0;
    println!();
    println!(
        "gate of {kernel} against itself: {wall:.1} s in all (exit {:?}), performance part {perf_s:.1} s for {} boots of each",
        out.status.code(),
        perf["runs"]
    );
    let mut rows = Vec::new();
    for r in perf["rows"].as_array().into_iter().flatten() {
        let ratio = &r["ratio"];
        println!(
            "  {:<28} {:<13} ratio {:.2} (95% CI {:.2}-{:.2})",
            r["probe"].as_str().unwrap_or("?"),
            r["change"].as_str().unwrap_or("?"),
            ratio["ratio"].as_f64().unwrap_or(f64::NAN),
            ratio["low"].as_f64().unwrap_or(f64::NAN),
            ratio["high"].as_f64().unwrap_or(f64::NAN)
        );
        rows.push(json!({"probe": r["probe"], "change": r["change"], "ratio": ratio, "baseline": r["baseline"], "candidate": r["candidate"]}));
    }
    Some(
        json!({"kernel": kernel, "wall_s": wall, "perf_s": perf_s, "exit": out.status.code(), "rows": rows}),
    )
}

/// `extended-ports` (nftables) on `kernel` as it is, and with a relay that
/// loses the replies of translated UDP flows, as a broken kernel does:
/// alternated good, broken, good, broken, then the broken one once with
/// `--waits full` (every check waiting out its whole timeout). The wall
/// time of each, and broken / good.
fn broken_vs_good(kernel: &str) -> Option<Value> {
    let dir = out_root().join("broken-kernel");
    std::fs::create_dir_all(&dir).ok()?;
    let mut scenario = natvet::scenario::Scenario::load("extended-ports").ok()?;
    scenario.name = "extended-ports-loses-udp-replies".into();
    for n in &mut scenario.topology.namespaces {
        if n.name == "relay" {
            n.nft = Some(natvet::checks::faults::LOSE_NAT_UDP_REPLIES.into());
        }
    }
    let broken_path = dir.join("broken.toml");
    std::fs::write(&broken_path, toml::to_string(&scenario).ok()?).ok()?;
    let broken_path = broken_path.display().to_string();
    let good = ["--scenario", "extended-ports", "--backend", "nftables"];
    let bad = ["--scenario", broken_path.as_str(), "--backend", "nftables"];
    let k = [kernel.to_string()];
    let (mut good_s, mut broken_s) = (Vec::new(), Vec::new());
    for i in 0..2 {
        good_s.push(vet(&k, &good, &format!("broken-kernel/good-{i}"))?.1);
        broken_s.push(vet(&k, &bad, &format!("broken-kernel/broken-{i}"))?.1);
    }
    let mut full = bad.to_vec();
    full.extend(["--waits", "full"]);
    let full_s = vet(&k, &full, "broken-kernel/broken-waits-full").map(|(_, w)| w);
    let (g, b) = (median(good_s.clone()), median(broken_s.clone()));
    println!();
    println!(
        "{kernel}, extended-ports [nftables]: good {g:.1} s, NAT losing UDP replies {b:.1} s ({:.2}x){}",
        b / g,
        full_s
            .map(|f| format!("; with --waits full {f:.1} s ({:.2}x)", f / g))
            .unwrap_or_default()
    );
    Some(
        json!({"kernel": kernel, "good_s": good_s, "broken_s": broken_s, "broken_waits_full_s": full_s, "ratio": b / g}),
    )
}
