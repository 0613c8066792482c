//! The kernel matrix, run by `cargo test`: one test per kernel x scenario,
//! plus negative controls (checks must be able to fail) and the harness's own
//! error paths (bad input exits 2, a panicking kernel exits 3).
//!
//! Tests run the real `natvet` binary, as a user would, and read its JSON.
//! The kernels are the `default` set of vm-images/matrix.toml;
//! `NATVET_KERNELS=debian:6.1,debian:6.12` overrides them;
//! `NATVET_LOCAL_KERNEL=/path/bzImage` adds a test of a local (monolithic) kernel.
//! Filter as usual: `cargo test --test matrix -- 6.12`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use libtest_mimic::{Arguments, Failed, Trial};
use natvet::checks::faults::{Fault, FaultKind};
use natvet::checks::kernel_health::KernelHealth;
use natvet::checks::many_flows::ManyFlows;
use natvet::checks::peer_churn::ChurnAddresses;
use natvet::checks::CheckSpec;
use natvet::nat::BackendKind;
use natvet::scenario::setup::NatSpec;
use natvet::scenario::topology::RouteSpec;
use natvet::scenario::Scenario;
use natvet::types::PortRange;
use serde_json::Value;

#[path = "matrix/repository.rs"]
mod repository;

/// The controls run on one kernel: they test natvet's checks, not the kernel.
const CONTROL_KERNEL: &str = "debian:6.1";

/// vCPUs per guest: the host's cores shared among the tests that run at
/// once (each boots its own VM), as natvet itself shares them among its VMs.
static GUEST_CPUS: std::sync::OnceLock<String> = std::sync::OnceLock::new();

fn guest_cpus() -> &'static str {
    GUEST_CPUS.get().map(String::as_str).unwrap_or("1")
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Reports of the kernel matrix land in target/natvet-tests/vet/NAME (a CI
/// job merges them with `natvet report merge`); the harness's own tests
/// (controls, exit codes) in target/natvet-tests/harness/NAME.
fn out_dir(name: &str) -> PathBuf {
    let safe: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    let kind = if name.starts_with("vet-") {
        "vet"
    } else {
        "harness"
    };
    repo().join("target/natvet-tests").join(kind).join(safe)
}

struct Run {
    code: i32,
    stderr: String,
    stdout: String,
    report: Option<Value>,
}

fn natvet(name: &str, args: &[&str]) -> Result<Run, Failed> {
    let out = out_dir(name);
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let json = out.join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_natvet"))
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--out")
        .arg(&out)
        .arg("--quiet")
        .current_dir(repo())
        .output()
        .map_err(|e| format!("running natvet: {e}"))?;
    let report = std::fs::read(&json)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    Ok(Run {
        code: output.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        report,
    })
}

fn results(report: &Value) -> Vec<(String, String)> {
    report["kernels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|k| k["results"].as_array().cloned().unwrap_or_default())
        .map(|r| {
            (
                r["check"].as_str().unwrap_or("?").to_string(),
                r["status"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

fn explain(run: &Run) -> String {
    format!(
        "exit {}\n--- stdout\n{}\n--- stderr\n{}",
        run.code, run.stdout, run.stderr
    )
}

/// Every check of a shipped scenario passes on this kernel.
fn vet_passes(kernel: &str, scenario: &str) -> Result<(), Failed> {
    let run = natvet(
        &format!("vet-{kernel}-{scenario}"),
        &[
            "vet",
            "--kernel",
            kernel,
            "--scenario",
            scenario,
            "--cpus",
            guest_cpus(),
        ],
    )?;
    let report = run.report.as_ref().ok_or_else(|| explain(&run))?;
    let results = results(report);
    if results.is_empty() {
        return Err(format!("no results at all\n{}", explain(&run)).into());
    }
    let bad: Vec<_> = results.iter().filter(|(_, s)| s != "pass").collect();
    if run.code != 0 || !bad.is_empty() {
        return Err(format!("not every check passed: {bad:?}\n{}", explain(&run)).into());
    }
    // A scenario's performance probes give a figure on every kernel that forwards.
    let unmeasured: Vec<String> = report["kernels"][0]["perf"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|f| !f["value"].is_number())
        .map(|f| format!("{}: {}", f["probe"], f["note"]))
        .collect();
    if !unmeasured.is_empty() {
        return Err(format!("figures not measured: {unmeasured:?}\n{}", explain(&run)).into());
    }
    // What natvet reports must not change shape unnoticed: one snapshot per
    // scenario, the same for every kernel (numbers that vary are redacted).
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(repo().join("tests/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(|| insta::assert_snapshot!(scenario.to_string(), redacted(report)));
    Ok(())
}

/// Every default scenario in one boot, all backends: every check passes,
/// and each is reported once.
fn every_scenario_passes(kernel: &str) -> Result<(), Failed> {
    let run = natvet(
        &format!("vet-{kernel}-every-scenario"),
        &["vet", "--kernel", kernel, "--cpus", guest_cpus()],
    )?;
    let report = run.report.as_ref().ok_or_else(|| explain(&run))?;
    let results = results(report);
    let bad: Vec<_> = results.iter().filter(|(_, s)| s != "pass").collect();
    if run.code != 0 || results.is_empty() || !bad.is_empty() {
        return Err(format!("not every check passed: {bad:?}\n{}", explain(&run)).into());
    }
    let mut names: Vec<String> = report["kernels"][0]["results"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| format!("{} {} {}", r["scenario"], r["backend"], r["check"]))
        .collect();
    let all = names.len();
    names.sort();
    names.dedup();
    if names.len() != all {
        return Err(format!("{} results reported twice", all - names.len()).into());
    }
    Ok(())
}

/// Every result's name, status and expectation, and its observation with the
/// numbers that differ from run to run (times, ports, hashes) masked.
fn redacted(report: &Value) -> String {
    let mut out = String::new();
    for r in report["kernels"][0]["results"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let observed = r["observed"].as_str().unwrap_or("");
        out.push_str(&format!(
            "{} [{}] {}: {}\n  expected: {}\n  observed: {}\n",
            r["scenario"].as_str().unwrap_or("?"),
            r["backend"].as_str().unwrap_or("?"),
            r["check"].as_str().unwrap_or("?"),
            r["status"].as_str().unwrap_or("?"),
            r["expected"].as_str().unwrap_or("?"),
            mask(observed)
        ));
    }
    for f in report["kernels"][0]["perf"]
        .as_array()
        .into_iter()
        .flatten()
    {
        out.push_str(&format!(
            "{} [{}] perf/{}: {} ({})\n",
            f["scenario"].as_str().unwrap_or("?"),
            f["backend"].as_str().unwrap_or("?"),
            f["probe"].as_str().unwrap_or("?"),
            if f["value"].is_number() {
                "measured"
            } else {
                "NOT MEASURED"
            },
            f["unit"].as_str().unwrap_or("?"),
        ));
    }
    out
}

/// Keep the shape of an observation, not its numbers: every run of digits
/// becomes '#', and conntrack's state flags ("[ASSURED]"), which depend on
/// timing, are dropped. Words and their order stay, so a different outcome
/// ("ICMP unreachable" instead of "handshake completed") shows in review.
fn mask(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_digits = false;
    // conntrack's flags look like "[ASSURED]"; "[2001:db8::1]:53" is an address.
    let flag = |w: &str| {
        w.len() > 2
            && w.starts_with('[')
            && w.ends_with(']')
            && w[1..w.len() - 1].chars().all(|c| c.is_ascii_uppercase())
    };
    for word in s.split(' ').filter(|w| !flag(w)) {
        if !out.is_empty() {
            out.push(' ');
        }
        for c in word.chars() {
            if c.is_ascii_digit() || (in_digits && c.is_ascii_hexdigit()) {
                if !in_digits {
                    out.push('#');
                }
                in_digits = true;
            } else {
                in_digits = false;
                out.push(c);
            }
        }
        in_digits = false;
    }
    out
}

/// Gates of a kernel against itself: none may find a performance regression.
const EQUAL_GATES: usize = 10;

/// (change, name) of a gate's rows.
type Rows = Vec<(String, String)>;

/// The rows of a gate's report: (change, name) of every check, and of every
/// performance figure.
fn gate_rows(report: &Value) -> (Rows, Rows) {
    let rows = |v: &Value, name: &str| -> Vec<(String, String)> {
        v.as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                (
                    r["change"].as_str().unwrap_or("?").to_string(),
                    r[name].as_str().unwrap_or("?").to_string(),
                )
            })
            .collect()
    };
    (
        rows(&report["gate"]["rows"], "check"),
        rows(&report["gate"]["perf"]["rows"], "probe"),
    )
}

fn gate(name: &str, extra: &[&str]) -> Result<Run, Failed> {
    let mut args = vec![
        "gate",
        "--baseline",
        CONTROL_KERNEL,
        "--candidate",
        CONTROL_KERNEL,
        "--scenario",
        "perf",
    ];
    args.extend_from_slice(extra);
    natvet(name, &args)
}

/// The negative control of the performance comparison: the same kernel,
/// the candidate's relay made to forward at most 120 packets a second. Its
/// throughput and packet rate are flagged as slower (exit 1), and no check
/// regresses: the fault slows forwarding, it does not break it.
fn slow_relay_is_slower() -> Result<(), Failed> {
    let run = gate(
        "perf-control-slow-relay",
        &[
            "--candidate-scenario",
            "tests/controls/perf-slow-relay.toml",
        ],
    )?;
    let report = run.report.as_ref().ok_or_else(|| explain(&run))?;
    let (checks, perf) = gate_rows(report);
    let regressed_checks: Vec<_> = checks
        .iter()
        .filter(|(c, _)| c != "unchanged-pass")
        .collect();
    let slower = |probe: &str| {
        perf.iter()
            .any(|(c, p)| c == "regressed" && p.starts_with(probe))
    };
    if run.code != 1
        || !regressed_checks.is_empty()
        || !slower("tcp-throughput/tunnel")
        || !slower("tcp-throughput/port-53")
        || !slower("udp-rate/")
    {
        return Err(format!(
            "expected exit 1 with throughput and packet rate slower and every check unchanged: checks {regressed_checks:?}, figures {perf:?}\n{}",
            explain(&run)
        )
        .into());
    }
    Ok(())
}

/// The shipped relay bundles (the post-mortem's iptables relay and its
/// nftables translation), their own rulesets loaded as they are: every
/// derived check passes (exit 0), in both families.
fn relay_bundles_pass(kernel: &str) -> Result<(), Failed> {
    let run = natvet(
        &format!("relay-bundles-{kernel}"),
        &[
            "vet",
            "--kernel",
            kernel,
            "--relay",
            "relays/example-iptables",
            "--relay",
            "relays/example-nftables",
            "--cpus",
            guest_cpus(),
        ],
    )?;
    let report = run.report.as_ref().ok_or_else(|| explain(&run))?;
    let all = results(report);
    let not_passed: Vec<_> = all.iter().filter(|(_, st)| st != "pass").collect();
    let scenarios: BTreeSet<String> = report["kernels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|k| k["results"].as_array().cloned().unwrap_or_default())
        .filter_map(|r| r["scenario"].as_str().map(str::to_string))
        .collect();
    let both = scenarios.contains("relay-example-iptables")
        && scenarios.contains("relay-example-nftables");
    let ipv6 = all.iter().any(|(c, _)| c.starts_with("ipv6/handshake/"));
    if run.code != 0 || !not_passed.is_empty() || !both || !ipv6 {
        return Err(format!(
            "expected exit 0 and every check of both bundles passed, in both families: not passed {not_passed:?}, scenarios {scenarios:?}\n{}",
            explain(&run)
        )
        .into());
    }
    Ok(())
}

/// A relay whose ruleset uses a construct natvet's own rules never do (a
/// netdev egress chain, Linux 5.16+), on a kernel that lacks it and one that has
/// it: every check fails on the first with the loader's error, every check
/// passes on the second, and the exit code is 1.
fn relay_construct_missing_fails_only_that_kernel() -> Result<(), Failed> {
    let (old, new) = ("debian:bullseye", CONTROL_KERNEL);
    let run = natvet(
        "relay-egress-hook",
        &[
            "vet",
            "--kernel",
            old,
            "--kernel",
            new,
            "--relay",
            "tests/controls/relay-egress-hook",
            "--cpus",
            guest_cpus(),
        ],
    )?;
    let report = run.report.as_ref().ok_or_else(|| explain(&run))?;
    let kernels = report["kernels"].as_array().cloned().unwrap_or_default();
    let mut problems = Vec::new();
    for k in &kernels {
        let release = k["release"].as_str().unwrap_or("?");
        let results = k["results"].as_array().cloned().unwrap_or_default();
        let old_kernel = release.starts_with("5.10");
        let wrong: Vec<String> = results
            .iter()
            .filter(|r| {
                let observed = r["observed"].as_str().unwrap_or("");
                if old_kernel {
                    !(r["status"] == "fail" && observed.contains("nft"))
                } else {
                    r["status"] != "pass"
                }
            })
            .map(|r| format!("{} {}: {}", r["check"], r["status"], r["observed"]))
            .collect();
        if results.len() < 8 || !wrong.is_empty() {
            problems.push(format!(
                "{release}: {} results, want every one {}: {wrong:?}",
                results.len(),
                if old_kernel {
                    "failed with nft's error"
                } else {
                    "passed"
                }
            ));
        }
    }
    if run.code != 1 || kernels.len() != 2 || !problems.is_empty() {
        return Err(format!(
            "expected exit 1, the 5.10 kernel failing every check and {new} passing every one: {problems:?}\n{}",
            explain(&run)
        )
        .into());
    }
    Ok(())
}

/// A ruleset change that loses one redirect range (33565:51820), gated
/// against the example relay on one kernel: exactly that range's checks
/// (redirect, handshake, session at 33565, in both families) regress, and
/// nothing else changes.
fn relay_gate_flags_the_dropped_range() -> Result<(), Failed> {
    let run = natvet(
        "relay-gate-dropped-range",
        &[
            "gate",
            "--relay-baseline",
            "relays/example-iptables",
            "--relay-candidate",
            "tests/controls/relay-dropped-range",
            "--kernel",
            CONTROL_KERNEL,
            "--cpus",
            guest_cpus(),
        ],
    )?;
    let report = run.report.as_ref().ok_or_else(|| explain(&run))?;
    let (checks, _) = gate_rows(report);
    let changed: BTreeSet<String> = checks
        .iter()
        .filter(|(c, _)| c != "unchanged-pass")
        .map(|(c, n)| format!("{c} {n}"))
        .collect();
    let expected: BTreeSet<String> = ["redirect/33565", "handshake/33565", "session/33565"]
        .iter()
        .flat_map(|c| [format!("regressed {c}"), format!("regressed ipv6/{c}")])
        .collect();
    if run.code != 1 || changed != expected || checks.len() < 40 {
        return Err(format!(
            "expected exit 1 with exactly {expected:?} regressed: changed {changed:?} of {} rows\n{}",
            checks.len(),
            explain(&run)
        )
        .into());
    }
    Ok(())
}

/// `natvet relay capture` in a network namespace set up like a relay (the
/// example bundle's ruleset, with a rule on the relay's own public address
/// added): it changes nothing there or on the host, writes a bundle that
/// loads, redacted (no public address left, the same mapping in the
/// manifest and the ruleset), and refuses a folder that is not empty. The
/// namespace is anonymous (`unshare --net`), so tests that compare the
/// host's namespaces are not disturbed.
fn relay_capture_is_read_only() -> Result<(), Failed> {
    let out = out_dir("relay-capture");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    let bundle = out.join("bundle");
    let rules = repo().join("relays/example-iptables");
    let natvet = env!("CARGO_BIN_EXE_natvet");
    let script = format!(
        r#"set -e
ip link add eth0 type veth peer name peer0
ip link set eth0 up
ip addr add 185.65.134.10/24 dev eth0
ip addr add 2a03:1b20:3:f011::a01f/64 dev eth0 nodad
ip route add default via 185.65.134.1 dev eth0 onlink
iptables-nft-restore < {rules}/iptables.rules
ip6tables-nft-restore < {rules}/ip6tables.rules
iptables-nft -I INPUT -d 185.65.134.10/32 -i eth0 -p udp --dport 51820 -j ACCEPT
sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.all.rp_filter=2
set +e
snapshot() {{
  ip -o link; ip -o addr | grep -v fe80; ip -4 route show table all; ip -6 route show table all
  ip -4 rule; ip -6 rule; nft -s list ruleset
  for t in iptables-nft-save ip6tables-nft-save iptables-legacy-save ip6tables-legacy-save; do $t | grep -v '^#'; done
  sysctl -a 2>/dev/null | grep '^net\.' | grep -v nf_conntrack_count
}}
snapshot | sed 's/\[[0-9]*:[0-9]*\]/[c]/g' > {out}/before
{natvet} relay capture --out {bundle} --redact --wireguard wg0 --wireguard-address 10.64.0.1/10 --wireguard-address fc00:bbbb:bbbb:bb01::1/64 2> {out}/capture.err
echo $? > {out}/capture.rc
{natvet} relay capture --out {bundle} --wireguard wg0 --wireguard-address 10.64.0.1/10 2> {out}/again.err
echo $? > {out}/again.rc
snapshot | sed 's/\[[0-9]*:[0-9]*\]/[c]/g' > {out}/after
"#,
        rules = rules.display(),
        out = out.display(),
        bundle = bundle.display(),
    );
    let host_before = host_state();
    let run = Command::new("unshare")
        .args(["--net", "sh", "-c", &script])
        .output()
        .map_err(|e| format!("running unshare: {e}"))?;
    let host_after = host_state();
    let read = |f: &str| std::fs::read_to_string(out.join(f)).unwrap_or_default();
    if !run.status.success() {
        return Err(format!(
            "setting up the relay namespace failed: {}",
            String::from_utf8_lossy(&run.stderr)
        )
        .into());
    }
    let mut problems = Vec::new();
    if read("capture.rc").trim() != "0" {
        problems.push(format!(
            "capture exited {}: {}",
            read("capture.rc").trim(),
            read("capture.err")
        ));
    }
    if read("again.rc").trim() != "2" || !read("again.err").contains("not empty") {
        problems.push(format!(
            "a second capture into the same folder exited {} (want 2, 'not empty'): {}",
            read("again.rc").trim(),
            read("again.err")
        ));
    }
    let (before, after) = (read("before"), read("after"));
    if !before.contains("MASQUERADE") || !before.contains("net.ipv4.ip_forward = 1") {
        problems.push(format!(
            "the namespace snapshot lacks the relay's rules or sysctls:
{before}"
        ));
    }
    let changed = diff(&before, &after);
    if !changed.is_empty() {
        problems.push(format!(
            "capture changed the relay's namespace:
{changed}"
        ));
    }
    let changed = diff(&host_before, &host_after);
    if !changed.is_empty() {
        problems.push(format!(
            "capture changed the host:
{changed}"
        ));
    }
    let mut all = String::new();
    for e in std::fs::read_dir(&bundle).into_iter().flatten().flatten() {
        all.push_str(&std::fs::read_to_string(e.path()).unwrap_or_default());
    }
    for real in ["185.65.134", "2a03:1b20"] {
        if all.contains(real) {
            problems.push(format!("the redacted bundle still holds {real}"));
        }
    }
    let manifest = std::fs::read_to_string(bundle.join("relay.toml")).unwrap_or_default();
    let ruleset = std::fs::read_to_string(bundle.join("iptables.rules")).unwrap_or_default();
    if !manifest.contains("\"203.0.113.10/24\"") || !ruleset.contains("-d 203.0.113.10/32") {
        problems.push(format!(
            "the public address is not mapped the same way in manifest and ruleset:
{manifest}
{ruleset}"
        ));
    }
    if !manifest.contains("\"33565-51820\"") {
        problems.push(format!(
            "[expect] lacks the redirected range 33565-51820:
{manifest}"
        ));
    }
    let show = Command::new(natvet)
        .args(["relay", "show"])
        .arg(&bundle)
        .output()
        .map_err(|e| e.to_string())?;
    if show.status.code() != Some(0) || !String::from_utf8_lossy(&show.stdout).contains("redirect")
    {
        problems.push(format!(
            "relay show of the captured bundle exited {:?}: {}",
            show.status.code(),
            String::from_utf8_lossy(&show.stderr)
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n").into())
    }
}

/// A bundle whose ruleset names an interface the manifest lacks, and one
/// whose sysctl is not net.*: exit 2 before any VM boots, naming the file
/// and the line.
fn relay_bundle_errors_exit_2() -> Result<(), Failed> {
    let dir = out_dir("relay-bundle-errors");
    let _ = std::fs::remove_dir_all(&dir);
    let copy = |name: &str| -> Result<PathBuf, Failed> {
        let to = dir.join(name);
        std::fs::create_dir_all(&to).map_err(|e| format!("creating {}: {e}", to.display()))?;
        for f in [
            "relay.toml",
            "sysctl.conf",
            "iptables.rules",
            "ip6tables.rules",
        ] {
            std::fs::copy(repo().join("relays/example-iptables").join(f), to.join(f))
                .map_err(|e| format!("copying {f}: {e}"))?;
        }
        Ok(to)
    };
    let edit = |path: PathBuf, from: &str, to: &str| -> Result<(), Failed> {
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{e}"))?;
        std::fs::write(&path, text.replacen(from, to, 1)).map_err(|e| format!("{e}").into())
    };
    let iface = copy("unknown-interface")?;
    edit(
        iface.join("iptables.rules"),
        "-A INPUT -i eth0 -p tcp",
        "-A INPUT -i mgmt0 -p tcp",
    )?;
    let sysctl = copy("kernel-wide-sysctl")?;
    edit(
        sysctl.join("sysctl.conf"),
        "net.ipv4.tcp_mtu_probing = 1",
        "kernel.panic = 10",
    )?;
    for (i, (bundle, file, needle)) in [
        (&iface, "iptables.rules:", "mgmt0"),
        (&sysctl, "sysctl.conf:", "kernel.panic"),
    ]
    .into_iter()
    .enumerate()
    {
        let started = std::time::Instant::now();
        let run = natvet(
            &format!("relay-bundle-errors-{i}"),
            &[
                "vet",
                "--kernel",
                CONTROL_KERNEL,
                "--relay",
                &bundle.display().to_string(),
            ],
        )?;
        let said = run.stderr.contains(file) && run.stderr.contains(needle);
        if run.code != 2 || !said || started.elapsed().as_secs() > 30 {
            return Err(format!(
                "expected exit 2 at once, naming {file} and {needle}\n{}",
                explain(&run)
            )
            .into());
        }
    }
    Ok(())
}

/// A kernel gated against itself, with the defaults: performance figures
/// for both, and no regression of any kind (exit 0). Ten such gates make
/// the claim "no false alarm in 10 of 10".
fn equal_kernels_no_regression(i: usize) -> Result<(), Failed> {
    let run = gate(&format!("perf-equal-{i}"), &[])?;
    let report = run.report.as_ref().ok_or_else(|| explain(&run))?;
    let (checks, perf) = gate_rows(report);
    let regressed: Vec<_> = checks
        .iter()
        .chain(&perf)
        .filter(|(c, _)| c == "regressed")
        .collect();
    let measured = report["gate"]["perf"]["rows"]
        .as_array()
        .is_some_and(|rows| rows.len() >= 6 && rows.iter().all(|r| r["ratio"].is_object()));
    if run.code != 0 || !regressed.is_empty() || !measured {
        return Err(format!(
            "expected exit 0, no regression and a ratio for every figure: regressed {regressed:?}, figures {perf:?}\n{}",
            explain(&run)
        )
        .into());
    }
    Ok(())
}

/// A negative control: the shipped scenario `base` with one thing removed or
/// wrong (`spoil`), on nftables. It must fail exactly `must_fail` (in every
/// family the scenario runs), and exit 1. Derived from the shipped file, so
/// a check added there is covered here too. With `forensics`, every failure
/// must also come with its evidence bundle (captures that hold packets,
/// conntrack, ruleset, dmesg); without, the control runs with `--capture
/// never`, which halves its time.
#[derive(Clone, Copy)]
struct Control {
    base: &'static str,
    /// The test is `control::NAME`.
    name: &'static str,
    spoil: fn(&mut Scenario),
    must_fail: &'static [&'static str],
    forensics: bool,
}

const REDIRECTED: &[&str] = &[
    "redirect/53",
    "redirect/4000",
    "redirect/33433",
    "redirect/33565",
    "redirect/51819",
    "redirect/52000",
    "redirect/60000",
    "handshake/53",
    "handshake/4000",
    "handshake/33433",
    "handshake/33565",
    "handshake/51819",
    "handshake/52000",
    "handshake/60000",
    "conntrack/redirect-4000",
    "same-source-port/53",
    "same-source-port/4000",
    "session/53",
    "session/4000",
    "session/33433",
    "session/33565",
    "session/51819",
    "session/52000",
    "session/60000",
];
/// The sessions of extended-ports, one through each range boundary.
const SESSIONS: &[&str] = &[
    "session/53",
    "session/4000",
    "session/33433",
    "session/33565",
    "session/51819",
    "session/52000",
    "session/60000",
];
/// What sees a reply's source port: the plain-UDP redirect, the handshake
/// (WireGuard moves its endpoint to where the response came from), two
/// clients on one source port, and the sessions.
const REPLY_PORT: &[&str] = &[
    "redirect/53",
    "redirect/4000",
    "redirect/33433",
    "redirect/33565",
    "redirect/51819",
    "redirect/52000",
    "redirect/60000",
    "handshake/53",
    "handshake/4000",
    "handshake/33433",
    "handshake/33565",
    "handshake/51819",
    "handshake/52000",
    "handshake/60000",
    "same-source-port/53",
    "same-source-port/4000",
    "session/53",
    "session/4000",
    "session/33433",
    "session/33565",
    "session/51819",
    "session/52000",
    "session/60000",
];
/// What needs the reply of a translated UDP flow: the redirected ports'
/// datagrams, handshakes and sessions, and UDP through the masquerade.
const NAT_UDP_REPLIES: &[&str] = &[
    "conntrack/flush",
    "conntrack/masquerade",
    "conntrack/redirect-4000",
    "forward/udp",
    "handshake/33433",
    "handshake/33565",
    "handshake/4000",
    "handshake/51819",
    "handshake/52000",
    "handshake/53",
    "handshake/60000",
    "many-flows/200",
    "nat-clash/port-shadow",
    "redirect/33433",
    "redirect/33565",
    "redirect/4000",
    "redirect/51819",
    "redirect/52000",
    "redirect/53",
    "redirect/60000",
    "same-source-port/4000",
    "same-source-port/53",
    "session/33433",
    "session/33565",
    "session/4000",
    "session/51819",
    "session/52000",
    "session/53",
    "session/60000",
    "tunnel-mtu/full-size",
];
/// An nftables rule that drops the ICMP destination unreachable errors the
/// relay itself sends to the internet.
const DROP_ICMP_ERRORS: &str = "table inet spoil {
	chain errors {
		type filter hook output priority 0; policy accept;
		oifname \"wan\" icmp type destination-unreachable drop
		oifname \"wan\" icmpv6 type destination-unreachable drop
	}
}
";
/// An nftables rule that undoes the redirect's reverse translation of the
/// source port: what the relay sends to clients leaves from its listen port,
/// as on a kernel that forgets the translation.
const REPLIES_FROM_LISTEN_PORT: &str = "table inet spoil {
	chain reply_port {
		type filter hook postrouting priority 300; policy accept;
		oifname \"public\" udp sport != 51820 udp sport set 51820
	}
}
";
const FORWARDED: &[&str] = &[
    "forward/tcp",
    "forward/udp",
    "forward/icmp",
    "transfer/1MiB",
    "conntrack/masquerade",
    "nat-clash/port-shadow",
    "udp-gso/4x40",
    "icmp-error/port-unreachable",
    "many-flows/200",
    "conntrack/flush",
    "tunnel-mtu/full-size",
    "session/53",
    "session/4000",
    "session/33433",
    "session/33565",
    "session/51819",
    "session/52000",
    "session/60000",
];
const OUTSIDE: &[&str] = &[
    "no-redirect/33434",
    "no-redirect/51821",
    "no-handshake/33434",
    "no-handshake/51821",
];
/// Everything that crosses the tunnel, and the handshakes that open it.
const NO_TUNNEL: &[&str] = &[
    "forward/tcp",
    "forward/udp",
    "forward/icmp",
    "transfer/1MiB",
    "conntrack/masquerade",
    "handshake/51820",
    "handshake/53",
];

/// Every negative control: what it spoils, and what must then fail.
fn controls() -> Vec<Control> {
    let on = |base, name, spoil, must_fail| Control {
        base,
        name,
        spoil,
        must_fail,
        forensics: false,
    };
    vec![
        Control {
            forensics: true,
            ..on(
                "extended-ports",
                "extended-ports-no-redirect",
                |s| s.relay.redirect_udp.clear(),
                REDIRECTED,
            )
        },
        Control {
            forensics: true,
            ..on(
                "extended-ports",
                "extended-ports-relay-loses-nat-udp-replies",
                // A kernel whose NAT loses UDP replies: what needs one
                // fails, the plain port, TCP and ICMP still pass. With
                // forensics, so that the captures taken during the first
                // attempt (after the run's first failure) are checked too.
                |s| {
                    for n in &mut s.topology.namespaces {
                        if n.name == "relay" {
                            n.nft = Some(natvet::checks::faults::LOSE_NAT_UDP_REPLIES.into());
                        }
                    }
                },
                NAT_UDP_REPLIES,
            )
        },
        on(
            "extended-ports",
            "extended-ports-no-masquerade",
            |s| s.relay.masquerade = false,
            FORWARDED,
        ),
        on(
            "extended-ports",
            "extended-ports-session-no-keepalive",
            // Without keepalives the client's firewall forgets each
            // session's flow in its 3 s quiet (its UDP timeout is 2 s).
            |s| {
                for c in &mut s.checks {
                    if let CheckSpec::Session(c) = c {
                        c.keepalive = 0;
                    }
                }
            },
            SESSIONS,
        ),
        on(
            "extended-ports",
            "extended-ports-replies-from-listen-port",
            // No firewall in front of the client, and the relay's replies
            // leave from 51820 whatever port the client chose: WireGuard
            // still completes every handshake, and moves its endpoint.
            |s| {
                for n in &mut s.topology.namespaces {
                    match n.name.as_str() {
                        "client" => n.firewall = None,
                        "relay" => n.nft = Some(REPLIES_FROM_LISTEN_PORT.into()),
                        _ => {}
                    }
                }
            },
            REPLY_PORT,
        ),
        on(
            "peer-churn",
            "peer-churn-relay-drops-icmp-errors",
            // The relay's own ICMP errors never leave it: the internet host
            // sending to a departed client hears nothing back.
            |s| {
                for n in &mut s.topology.namespaces {
                    if n.name == "relay" {
                        n.nft = Some(DROP_ICMP_ERRORS.into());
                    }
                }
            },
            &["peer-churn/departed"],
        ),
        on(
            "peer-churn",
            "peer-churn-relay-keeps-departed-flows",
            // The relay hands the departed client's address on without
            // forgetting its flows: the new client gets the old traffic.
            |s| {
                for c in &mut s.checks {
                    if let CheckSpec::PeerChurn(c) = c {
                        c.forget = false;
                    }
                }
            },
            &["peer-churn/address-reused"],
        ),
        on(
            "peer-churn",
            "peer-churn-addresses-in-use",
            // The churned peers are given the staying clients' addresses:
            // their traffic goes to the newcomers, then nowhere.
            |s| {
                for c in &mut s.checks {
                    if let CheckSpec::PeerChurn(c) = c {
                        c.churn_addresses = ChurnAddresses::InUse;
                    }
                }
            },
            &["peer-churn/steady"],
        ),
        on(
            "production-scale",
            "production-scale-masquerade-range-too-small",
            // 1,000 UDP flows through a masquerade of 500 ports: half of
            // them find no tuple of their own (smaller, so that it is quick).
            |s| {
                s.relay.masquerade_ports = Some(PortRange {
                    first: 40000,
                    last: 40499,
                });
                for c in &mut s.checks {
                    if let CheckSpec::RelayScale(c) = c {
                        (c.peers, c.flows, c.tcp, c.churn, c.churn_seconds) = (20, 1000, 0, 0, 0);
                    }
                }
            },
            &["relay-scale/20x1000", "kernel-health"],
        ),
        on(
            "extended-ports",
            "extended-ports-redirect-too-wide",
            |s| {
                s.relay.redirect_udp = vec![
                    PortRange {
                        first: 53,
                        last: 53,
                    },
                    PortRange {
                        first: 4000,
                        last: 60000,
                    },
                ]
            },
            OUTSIDE,
        ),
        on(
            "port-exhaustion",
            "port-exhaustion-range-too-wide",
            // The check still expects 8 ports to fill, but the rule
            // allows 16, which hold all 12 flows.
            |s| {
                for c in &mut s.checks {
                    if let CheckSpec::PortExhaustion(c) = c {
                        c.range = s.relay.masquerade_ports;
                    }
                }
                s.relay.masquerade_ports = Some(PortRange {
                    first: 40000,
                    last: 40015,
                });
            },
            &["port-exhaustion"],
        ),
        on(
            "port-exhaustion",
            "port-exhaustion-unexpected-drops",
            // 12 flows through a masquerade of 8 ports, but no
            // port-exhaustion check to say so: the drops are unexpected,
            // and kernel-health must see them in conntrack's statistics.
            |s| {
                s.checks = vec![
                    CheckSpec::ManyFlows(ManyFlows { flows: 12 }),
                    CheckSpec::KernelHealth(KernelHealth {}),
                ]
            },
            &["many-flows/12", "kernel-health"],
        ),
        on(
            "ruleset-reload",
            "ruleset-reload-non-atomic",
            // Empty the ruleset for 100 ms before each re-apply.
            |s| {
                for c in &mut s.checks {
                    if let CheckSpec::ReloadUnderTraffic(c) = c {
                        c.atomic = false;
                        c.reloads = 5;
                    }
                }
            },
            &["reload-under-traffic"],
        ),
        on(
            "flowtable",
            "flowtable-absent",
            |s| s.relay.flowtable = false,
            &["flowtable/offload"],
        ),
        on(
            "extended-ports",
            "extended-ports-small-uplink",
            // A full-size tunnel packet no longer fits the relay's uplink.
            |s| s.relay.wan_mtu = Some(1400),
            &["tunnel-mtu/full-size"],
        ),
        on(
            "pmtu",
            "pmtu-uplink-not-small",
            // The full-size packet fits: no ICMP comes.
            |s| s.relay.wan_mtu = None,
            &["tunnel-mtu/icmp-1400"],
        ),
        on(
            "pmtu-router",
            "pmtu-router-link-not-small",
            // The router's onward link takes full-size packets: no ICMP comes.
            |s| {
                for l in &mut s.topology.links {
                    l.mtu = None;
                }
            },
            &["tunnel-mtu/icmp-1400"],
        ),
        on(
            "port-forward",
            "port-forward-wrong-interface",
            // The dnat rules watch the public interface: nothing arriving
            // on wan is forwarded.
            |s| {
                for n in &mut s.nat {
                    if let NatSpec::Dnat { in_interface, .. } = n {
                        *in_interface = "public".into();
                    }
                }
            },
            &["port-forward/tcp-8443", "port-forward/udp-8443"],
        ),
        on(
            "behind-nat",
            "behind-nat-no-keepalive",
            // Without keepalives the home router's 2 s mapping expires.
            |s| {
                for w in &mut s.topology.wireguard {
                    for p in &mut w.peers {
                        p.keepalive = None;
                    }
                }
            },
            &["keepalive/idle-4s"],
        ),
        on(
            "behind-nat",
            "behind-nat-relay-udp-timeout-default",
            // With the default 30 s UDP timeout the idle entry stays.
            |s| {
                for n in &mut s.topology.namespaces {
                    if n.name == "relay" {
                        n.sysctls.clear();
                    }
                }
            },
            &["conntrack/expiry"],
        ),
        on(
            "behind-nat",
            "behind-nat-no-way-back",
            // The relay routes the home router's new address to a gateway
            // that is not there: the roamed client's replies are lost.
            |s| {
                s.topology.routes.push(RouteSpec {
                    ns: "relay".into(),
                    to: "192.0.2.3/32".into(),
                    via: "192.0.2.99".parse().ok(),
                    dev: None,
                    table: None,
                })
            },
            &["roaming/home:up"],
        ),
        on(
            "policy-routing",
            "policy-routing-no-fwmark",
            // WireGuard's own packets are routed into the tunnel (a loop
            // WireGuard refuses), so no handshake completes and nothing is
            // forwarded.
            |s| {
                for w in &mut s.topology.wireguard {
                    w.fwmark = None;
                }
            },
            NO_TUNNEL,
        ),
    ]
}

/// Run one control: derive its scenario, vet it on the control kernel, and
/// check that exactly its checks failed (exit 1).
fn control_fails(control: &Control) -> Result<(), Failed> {
    let Control {
        base,
        name,
        spoil,
        must_fail,
        forensics,
    } = *control;
    let mut scenario =
        Scenario::load(base).map_err(|e| format!("loading the shipped scenario: {e}"))?;
    scenario.name = name.to_string();
    scenario.description = format!("Negative control derived from {base}: {name}");
    scenario.backends = vec![BackendKind::Nftables];
    spoil(&mut scenario);
    let dir = repo().join("target/natvet-tests/controls");
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(format!("{name}.toml"));
    let text = toml::to_string(&scenario).map_err(|e| format!("writing the control: {e}"))?;
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    let path = path.display().to_string();
    let run = natvet(
        &format!("control-{name}"),
        &[
            "vet",
            "--kernel",
            CONTROL_KERNEL,
            "--scenario",
            &path,
            "--capture",
            if forensics { "failures" } else { "never" },
            "--cpus",
            guest_cpus(),
        ],
    )?;
    // Each named check fails in every family the scenario runs.
    let names: Vec<String> = scenario
        .relay
        .families
        .iter()
        .flat_map(|f| must_fail.iter().map(move |c| format!("{}{c}", f.prefix())))
        .collect();
    let must_fail: Vec<&str> = names.iter().map(String::as_str).collect();
    let report = run.report.as_ref().ok_or_else(|| explain(&run))?;
    let results = results(report);
    let failed: BTreeSet<&str> = results
        .iter()
        .filter(|(_, s)| s == "fail")
        .map(|(c, _)| c.as_str())
        .collect();
    let others: Vec<_> = results
        .iter()
        .filter(|(c, s)| {
            s != "pass" && s != "fail" || (s == "pass" && must_fail.contains(&c.as_str()))
        })
        .collect();
    let want: BTreeSet<&str> = must_fail.iter().copied().collect();
    if run.code != 1 || failed != want || !others.is_empty() {
        return Err(format!(
            "expected exactly {want:?} to fail (exit 1); failed {failed:?}, other: {others:?}\n{}",
            explain(&run)
        )
        .into());
    }
    if forensics {
        evidence_is_complete(report)?;
    }
    Ok(())
}

/// Each failure's bundle holds the text evidence and pcap files (tcpdump's
/// format) of which at least one recorded packets.
fn evidence_is_complete(report: &Value) -> Result<(), Failed> {
    let failures = report["kernels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|k| k["results"].as_array().into_iter().flatten())
        .filter(|r| r["status"] == "fail");
    for r in failures {
        let check = r["check"].as_str().unwrap_or("?");
        let dir = r["evidence_dir"]
            .as_str()
            .map(PathBuf::from)
            .ok_or_else(|| format!("{check}: no evidence_dir in the report"))?;
        for f in ["conntrack.txt", "ruleset.txt", "dmesg.txt", "result.txt"] {
            if !dir.join(f).is_file() {
                return Err(format!("{check}: {} lacks {f}", dir.display()).into());
            }
        }
        let pcaps: Vec<Vec<u8>> = std::fs::read_dir(&dir)
            .map_err(|e| format!("{check}: reading {}: {e}", dir.display()))?
            .flatten()
            .filter(|e| e.path().extension().is_some_and(|x| x == "pcap"))
            .filter_map(|e| std::fs::read(e.path()).ok())
            .collect();
        let magic = 0xa1b2_c3d4u32.to_le_bytes();
        if pcaps.is_empty() || pcaps.iter().any(|p| p.len() < 24 || p[..4] != magic) {
            return Err(format!(
                "{check}: missing or malformed pcap files in {}",
                dir.display()
            )
            .into());
        }
        if pcaps.iter().all(|p| p.len() == 24) {
            return Err(
                format!("{check}: the captures in {} hold no packets", dir.display()).into(),
            );
        }
    }
    Ok(())
}

/// What `natvet verify` must leave exactly as it found it: the kernel's
/// modules (/proc/modules, /sys/module), every `net.*` sysctl, the
/// host's namespaces (named, and any held by a bind mount), links,
/// addresses, routes, rulesets (nftables; iptables-nft and iptables-legacy,
/// IPv4 and IPv6) and iptables' lock file.
fn host_state() -> String {
    let mut out = String::new();
    // What changes by itself is masked: iptables-save stamps the time it ran
    // and counts each chain's packets ([packets:bytes]), `ip addr` counts
    // down lifetimes; `nft -s` leaves out counters and quotas.
    let masked = |l: &str| -> String {
        l.split(' ')
            .map(|w| {
                let counters = w.starts_with('[')
                    && w.ends_with(']')
                    && w[1..w.len() - 1]
                        .split(':')
                        .all(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()));
                let lifetime =
                    w.ends_with("sec") && w[..w.len() - 3].bytes().all(|b| b.is_ascii_digit());
                if counters {
                    "[counters]"
                } else if lifetime {
                    "LIFETIME"
                } else {
                    w
                }
            })
            .collect::<Vec<_>>()
            .join(" ")
    };
    for cmd in [
        &["ip", "netns", "list"][..],
        &["ip", "-o", "link"],
        &["ip", "-o", "addr"],
        &["ip", "route", "show", "table", "all"],
        &["ip", "-6", "route", "show", "table", "all"],
        &["ip", "rule"],
        &["ip", "-6", "rule"],
        &["nft", "-s", "list", "ruleset"],
        &["iptables-nft-save"],
        &["ip6tables-nft-save"],
        &["iptables-legacy-save"],
        &["ip6tables-legacy-save"],
    ] {
        let text = Command::new(cmd[0])
            .args(&cmd[1..])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| format!("({e})"));
        let text: String = text
            .lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| format!("{}\n", masked(l)))
            .collect();
        out.push_str(&format!("== {}\n{text}", cmd.join(" ")));
    }
    // Namespaces kept alive by a bind mount anywhere, not only /run/netns.
    out.push_str("== nsfs mounts\n");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for l in mountinfo.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        if let Some(sep) = f.iter().position(|w| *w == "-") {
            if f.get(sep + 1) == Some(&"nsfs") {
                out.push_str(&format!("{} {}\n", f[3], f[4]));
            }
        }
    }
    out.push_str("== /proc/modules\n");
    match std::fs::read_to_string("/proc/modules") {
        Ok(m) => out.push_str(&m),
        Err(e) => out.push_str(&format!("(none: {e})\n")),
    }
    out.push_str("== /sys/module\n");
    let mut sys: Vec<String> = std::fs::read_dir("/sys/module")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    sys.sort();
    out.push_str(&sys.join("\n"));
    out.push_str("\n== /run/xtables.lock\n");
    out.push_str(&match std::fs::metadata("/run/xtables.lock") {
        Ok(m) => {
            use std::os::unix::fs::MetadataExt;
            format!("inode {} size {} mtime {}\n", m.ino(), m.size(), m.mtime())
        }
        Err(e) => format!("absent ({e})\n"),
    });
    out.push_str("== sysctl net\n");
    let mut stack = vec![PathBuf::from("/proc/sys/net")];
    let mut values = Vec::new();
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            if let Ok(rd) = std::fs::read_dir(&p) {
                stack.extend(rd.flatten().map(|e| e.path()));
            }
            continue;
        }
        let key = p.display().to_string();
        // The one that is not stable by nature: the number of connections
        // the host tracks moves with its own traffic.
        if key.ends_with("/nf_conntrack_count") {
            continue;
        }
        // Write-only ones (route/flush) and unset ones (stable_secret, EIO)
        // cannot be read: that they exist, and how reading fails, is compared.
        match std::fs::read_to_string(&p) {
            Ok(v) => values.push(format!("{key} = {}", v.trim())),
            Err(e) => values.push(format!("{key} unreadable ({:?})", e.kind())),
        }
    }
    values.sort();
    out.push_str(&values.join("\n"));
    out
}

fn diff(before: &str, after: &str) -> String {
    let b: BTreeSet<&str> = before.lines().collect();
    let a: BTreeSet<&str> = after.lines().collect();
    let gone: Vec<_> = b.difference(&a).map(|l| format!("- {l}")).collect();
    let new: Vec<_> = a.difference(&b).map(|l| format!("+ {l}")).collect();
    [gone, new].concat().join("\n")
}

/// `natvet verify` on this machine's kernel: every check passes or, where the
/// kernel lacks WireGuard or flowtables, is unsupported for that reason; the plain-UDP
/// redirect and the forwarding checks really ran; the host is as before.
fn verify_on_host() -> Result<(), Failed> {
    let before = host_state();
    // The comparison below means something only if the snapshot has content.
    for needle in [
        "/proc/sys/net/ipv4/ip_forward = ",
        "lo:",
        "== nft -s list ruleset",
        "== /proc/modules",
        "== /run/xtables.lock",
    ] {
        if !before.contains(needle) {
            return Err(format!("the host state snapshot lacks {needle:?}:\n{before}").into());
        }
    }
    let run = natvet("verify", &["verify"])?;
    let after = host_state();
    let changed = diff(&before, &after);
    if !changed.is_empty() {
        return Err(format!("verify changed the host:\n{changed}\n{}", explain(&run)).into());
    }
    // On a kernel that would have to load modules, refusing up front (and
    // naming the flag) is the other way to leave the host as it was.
    if run.code == 2 && run.stderr.contains("--allow-module-load") {
        return if run.stderr.contains("stay loaded after it ends") {
            Ok(())
        } else {
            Err(format!("the refusal does not say why:\n{}", explain(&run)).into())
        };
    }
    let report = run.report.as_ref().ok_or_else(|| explain(&run))?;
    // What the run did to the kernel's modules is said, and its folder is its own.
    let kernel = &report["kernels"][0];
    let notes: Vec<&str> = kernel["notes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n.as_str())
        .collect();
    let modules_said = notes.iter().any(|n| {
        n.starts_with("modules: ")
            && if Path::new("/proc/modules").exists() {
                n.contains("loads none")
            } else {
                n.contains("no module support") && n.contains("nothing can be loaded")
            }
    });
    let folder = kernel["console_log"]
        .as_str()
        .and_then(|c| {
            Path::new(c)
                .parent()?
                .file_name()?
                .to_str()
                .map(str::to_string)
        })
        .unwrap_or_default();
    if !modules_said || !folder.starts_with("verify-") {
        return Err(format!(
            "expected a note on the modules and a folder verify-HOST-TIME-PID; notes {notes:?}, folder {folder:?}\n{}",
            explain(&run)
        )
        .into());
    }
    let observed = |r: &Value| r["observed"].as_str().unwrap_or("").to_string();
    let all: Vec<&Value> = report["kernels"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|k| k["results"].as_array().into_iter().flatten())
        .collect();
    let wrong: Vec<String> = all
        .iter()
        .filter(|r| {
            let status = r["status"].as_str().unwrap_or("?");
            // What this machine's kernel may lack: WireGuard, flowtables;
            // and what verify never changes: kernel-wide settings.
            let lacking = ["WireGuard", "flowtable", "kernel-wide"]
                .iter()
                .any(|w| observed(r).contains(w));
            !(status == "pass" || status == "unsupported" && lacking)
        })
        .map(|r| format!("{} {}: {}", r["check"], r["status"], observed(r)))
        .collect();
    let ran = |prefix: &str| {
        all.iter().any(|r| {
            r["check"].as_str().is_some_and(|c| c.starts_with(prefix)) && r["status"] == "pass"
        })
    };
    let missing: Vec<&str> = [
        "redirect/",
        "no-redirect/",
        "forward/",
        "transfer/",
        "conntrack/masquerade",
    ]
    .into_iter()
    .filter(|p| !ran(p))
    .collect();
    if run.code != 0 || !wrong.is_empty() || !missing.is_empty() {
        return Err(format!(
            "expected exit 0, every check pass or unsupported for lack of WireGuard or flowtables, and the NAT checks run; \
             got wrong: {wrong:?}, never passed: {missing:?}\n{}",
            explain(&run)
        )
        .into());
    }
    Ok(())
}

/// A scenario that sets a kernel-wide conntrack sysctl inside a namespace
/// (the table's size in the relay) is refused before anything is created:
/// exit 2, naming the sysctl, the namespace and what to do; the host is as before.
fn verify_refuses_global_sysctl() -> Result<(), Failed> {
    let before = host_state();
    let run = natvet(
        "verify-global-sysctl",
        &["verify", "--scenario", "tests/controls/global-sysctl.toml"],
    )?;
    let after = host_state();
    let changed = diff(&before, &after);
    let says = [
        "net.netfilter.nf_conntrack_max",
        "namespace 'relay'",
        "one value for the whole kernel",
        "[kernel.sysctls]",
    ];
    let missing: Vec<&&str> = says.iter().filter(|w| !run.stderr.contains(**w)).collect();
    if run.code != 2 || !missing.is_empty() || run.report.is_some() || !changed.is_empty() {
        return Err(format!(
            "expected exit 2 before anything ran, saying {missing:?}, the host unchanged; changed:\n{changed}\n{}",
            explain(&run)
        )
        .into());
    }
    Ok(())
}

/// Two `natvet verify` runs at once with one --out: each writes to a folder
/// of its own (console log and evidence), and `natvet explain` finds their
/// evidence there.
fn verify_runs_at_once_keep_their_own_folders() -> Result<(), Failed> {
    let out = out_dir("verify-at-once");
    let _ = std::fs::remove_dir_all(&out);
    std::fs::create_dir_all(&out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    let start = |i: usize| {
        Command::new(env!("CARGO_BIN_EXE_natvet"))
            .args([
                "verify",
                "--quiet",
                "--scenario",
                "extended-ports",
                "--backend",
                "nftables",
            ])
            .args(["--evidence-always", "--capture", "never", "--out"])
            .arg(&out)
            .arg("--json")
            .arg(out.join(format!("report-{i}.json")))
            .current_dir(repo())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
    };
    let children = [start(1), start(2)];
    let mut problems = Vec::new();
    let mut logs: Vec<String> = Vec::new();
    let mut evidence: Vec<BTreeSet<String>> = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let output = child
            .and_then(|c| c.wait_with_output())
            .map_err(|e| format!("running natvet: {e}"))?;
        let json = out.join(format!("report-{}.json", i + 1));
        let report: Option<Value> = std::fs::read(&json)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok());
        let Some(report) = report else {
            problems.push(format!(
                "run {} wrote no report (exit {:?}): {}",
                i + 1,
                output.status.code(),
                String::from_utf8_lossy(&output.stderr)
            ));
            continue;
        };
        let k = &report["kernels"][0];
        let log = k["console_log"].as_str().unwrap_or("").to_string();
        if !Path::new(&log).exists() {
            problems.push(format!("run {}: no console log at {log:?}", i + 1));
        }
        logs.push(log);
        evidence.push(
            k["results"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|r| r["evidence_dir"].as_str().map(str::to_string))
                .collect(),
        );
    }
    if logs.len() == 2 && logs[0] == logs[1] {
        problems.push(format!("both runs wrote {}", logs[0]));
    }
    if evidence.len() == 2 && (evidence[0].is_empty() || !evidence[0].is_disjoint(&evidence[1])) {
        problems.push(format!(
            "the runs' evidence folders are not their own: {} and {} folders, {} shared",
            evidence[0].len(),
            evidence[1].len(),
            evidence[0].intersection(&evidence[1]).count()
        ));
    }
    let explained = Command::new(env!("CARGO_BIN_EXE_natvet"))
        .args(["explain", "forward/tcp", "--out"])
        .arg(&out)
        .current_dir(repo())
        .output()
        .map_err(|e| format!("running natvet explain: {e}"))?;
    let text = String::from_utf8_lossy(&explained.stdout);
    if !text.contains("Last evidence (2 folder(s)") || !text.contains("/verify-") {
        problems.push(format!(
            "natvet explain does not find both runs' evidence:\n{text}"
        ));
    }
    if !problems.is_empty() {
        return Err(problems.join("\n").into());
    }
    Ok(())
}

/// The agent child of a `natvet verify` run (`natvet agent ...`).
fn agent_children(pid: u32) -> Vec<u32> {
    children_where(pid, |_, cmdline| {
        cmdline.split(|b| *b == 0).any(|a| a == b"agent")
    })
}

/// Interrupt `natvet verify` while its agent runs checks (`signal` to its
/// whole process group, as a terminal's Ctrl-C does, or SIGKILL to natvet
/// alone): the exit code says so, the agent is gone, the host is as before.
fn verify_interrupted(signal: i32, group: bool, want_code: i32) -> Result<(), Failed> {
    use std::os::unix::process::CommandExt;
    let before = host_state();
    let out = out_dir(&format!("verify-signal-{signal}"));
    let _ = std::fs::remove_dir_all(&out);
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natvet"));
    cmd.args(["verify", "--quiet", "--out"])
        .arg(&out)
        .current_dir(repo())
        .process_group(0);
    let (child, agent) = start_until_child(&mut cmd, agent_children, "its agent", 60)?;
    let pid = child.id();
    // Mid-run: the namespaces, links and rules exist now.
    std::thread::sleep(std::time::Duration::from_millis(400));
    let target = if group { -(pid as i32) } else { pid as i32 };
    // SAFETY: kill(2) on a process (group) this test started.
    unsafe {
        libc::kill(target, signal);
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let code = output.status.code().unwrap_or_else(|| {
        128 + std::os::unix::process::ExitStatusExt::signal(&output.status).unwrap_or(0)
    });
    let gone = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while Path::new(&format!("/proc/{agent}")).exists() && std::time::Instant::now() < gone {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let after = host_state();
    let changed = diff(&before, &after);
    let mut problems = Vec::new();
    if code != want_code {
        problems.push(format!("exit {code}, expected {want_code}"));
    }
    if Path::new(&format!("/proc/{agent}")).exists() {
        problems.push(format!("the agent (pid {agent}) outlived natvet"));
    }
    if !changed.is_empty() {
        problems.push(format!("the host changed:\n{changed}"));
    }
    if !problems.is_empty() {
        return Err(format!(
            "{}\n--- stderr\n{}",
            problems.join("\n"),
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(())
}

/// Input errors exit 2 with a message that says what to do, before anything boots.
fn bad_input(args: &[&str], says: &str) -> Result<(), Failed> {
    let run = natvet("bad-input", args)?;
    if run.code != 2 || !run.stderr.contains(says) {
        return Err(format!("expected exit 2 saying {says:?}\n{}", explain(&run)).into());
    }
    Ok(())
}

/// natvet as PID 1 of a new PID namespace (a container without an init)
/// is the command line: `scenarios list` answers, exit 0, and nothing is
/// mounted (the agent would mount /dev, /proc, /sys, /run and /tmp and
/// reboot). Run inside a private mount namespace, whose mounts it compares.
fn pid1_without_marker_is_the_cli() -> Result<(), Failed> {
    let script = r#"before=$(wc -l < /proc/self/mountinfo)
unshare --pid --fork "$1" scenarios list > "$2"
rc=$?
after=$(wc -l < /proc/self/mountinfo)
echo "rc=$rc mounts=$before,$after""#;
    let listing = out_dir("pid1-listing");
    let _ = std::fs::remove_dir_all(&listing);
    std::fs::create_dir_all(&listing).map_err(|e| e.to_string())?;
    let listing = listing.join("stdout");
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(env!("CARGO_BIN_EXE_natvet"))
        .arg(&listing)
        .output()
        .map_err(|e| format!("running unshare: {e}"))?;
    let said = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let line = said.lines().last().unwrap_or_default();
    let mounts = line
        .split_once("mounts=")
        .and_then(|(_, m)| m.split_once(','))
        .map(|(a, b)| (a.trim().to_string(), b.trim().to_string()));
    let stdout = std::fs::read_to_string(&listing).unwrap_or_default();
    let unchanged = mounts.as_ref().is_some_and(|(a, b)| a == b);
    if !line.starts_with("rc=0 ") || !unchanged || !stdout.contains("extended-ports") {
        return Err(format!(
            "natvet as PID 1 without the guest marker: {line} (want rc=0 and the same mounts)\n--- its stdout\n{stdout}\n--- stderr\n{stderr}"
        )
        .into());
    }
    Ok(())
}

/// A command that needs no VM exits with `code` and says `says` on stderr.
fn exits_with(name: &str, args: &[&str], code: i32, says: &str) -> Result<(), Failed> {
    let run = natvet(name, args)?;
    if run.code != code || !run.stderr.contains(says) {
        return Err(format!("expected exit {code} saying {says:?}\n{}", explain(&run)).into());
    }
    Ok(())
}

/// `vet --bisect-exit-codes` on a build tree that has no kernel image: git
/// bisect must skip the commit (125), not call it bad.
fn bisect_exit_codes_skip_tree_without_image() -> Result<(), Failed> {
    let tree = out_dir("bisect-tree-without-image-src");
    let _ = std::fs::remove_dir_all(&tree);
    std::fs::create_dir_all(&tree).map_err(|e| e.to_string())?;
    std::fs::write(tree.join(".config"), "CONFIG_MODULES=y\n").map_err(|e| e.to_string())?;
    let spec = format!("build:{}", tree.display());
    exits_with(
        "bisect-tree-without-image",
        &["vet", "--kernel", &spec, "--bisect-exit-codes"],
        125,
        "arch/x86/boot/bzImage",
    )
}

/// `natvet soak --duration`: sessions kept going, and an outage that begins
/// well into the soak (the relay blackholes the internet host for 4 s,
/// 25 s in) fails every session, with the moment it began in its series;
/// the HTML report plots it.
fn soak_shows_when_an_outage_began() -> Result<(), Failed> {
    let mut scenario = Scenario::load("extended-ports")
        .map_err(|e| format!("loading the shipped scenario: {e}"))?;
    scenario.name = "soak-outage".into();
    scenario.backends = vec![BackendKind::Nftables];
    scenario.relay.families = vec![natvet::types::Family::Ipv4];
    for c in &mut scenario.checks {
        if let CheckSpec::Session(c) = c {
            c.ports = vec![53, 60000];
            c.duration = 40;
            c.faults = vec![Fault {
                at: 25,
                kind: FaultKind::Outage,
                seconds: 4,
            }];
        }
    }
    let dir = repo().join("target/natvet-tests/controls");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let path = dir.join("soak-outage.toml");
    let text = toml::to_string(&scenario).map_err(|e| e.to_string())?;
    std::fs::write(&path, text).map_err(|e| e.to_string())?;
    let html = out_dir("soak-outage-html");
    let run = natvet(
        "soak-outage",
        &[
            "soak",
            "--duration",
            "40s",
            "--kernel",
            CONTROL_KERNEL,
            "--scenario",
            &path.display().to_string(),
            "--capture",
            "never",
            "--cpus",
            guest_cpus(),
            "--html",
            &html.display().to_string(),
        ],
    )?;
    let report = run.report.as_ref().ok_or_else(|| explain(&run))?;
    let sessions: Vec<&Value> = report["kernels"][0]["results"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| {
            r["check"]
                .as_str()
                .is_some_and(|c| c.starts_with("session/"))
        })
        .collect();
    let mut problems = Vec::new();
    if run.code != 1 || sessions.len() != 2 {
        problems.push(format!("exit {}, {} sessions", run.code, sessions.len()));
    }
    for s in &sessions {
        let stopped = s["series"]["stopped_at_ms"].as_u64();
        if s["status"] != "fail" || !stopped.is_some_and(|t| (24_000..=29_000).contains(&t)) {
            problems.push(format!(
                "{}: {} stopped at {stopped:?} (the outage began at 25 s): {}",
                s["check"], s["status"], s["observed"]
            ));
        }
    }
    let page = std::fs::read_to_string(html.join("index.html")).unwrap_or_default();
    if !page.contains("<svg") {
        problems.push("the HTML report has no plot".into());
    }
    if !problems.is_empty() {
        return Err(format!("{}\n{}", problems.join("\n"), explain(&run)).into());
    }
    Ok(())
}

/// A kernel that panics ends the run as an infrastructure error (exit 3) that
/// shows the last console lines, never a hang and never a NAT verdict.
fn panic_is_infra() -> Result<(), Failed> {
    // rdinit pointing nowhere makes the kernel panic: no working init.
    let run = natvet(
        "panic",
        &[
            "vet",
            "--kernel",
            CONTROL_KERNEL,
            "--kernel-cmdline",
            "rdinit=/does-not-exist",
            "--timeout",
            "120",
        ],
    )?;
    let report = run.report.as_ref().ok_or_else(|| explain(&run))?;
    let state = &report["kernels"][0]["state"];
    let tail = state["console_tail"].to_string();
    if run.code != 3
        || state["state"] != "infra_error"
        || !tail.contains("Kernel panic")
        || !run.stdout.contains("Kernel panic")
        || !results(report).is_empty()
    {
        return Err(format!(
            "expected exit 3 with the panic in the console tail\n{}",
            explain(&run)
        )
        .into());
    }
    Ok(())
}

/// The qemu VMs whose parent is `pid`.
fn qemu_children(pid: u32) -> Vec<u32> {
    children_where(pid, |stat, cmdline| {
        // The VM, not a `qemu-system-x86_64 --version` probe.
        stat.contains("(qemu-system-x86") && String::from_utf8_lossy(cmdline).contains("-kernel")
    })
}

/// The processes whose parent is `pid` and whose /proc stat and cmdline pass `keep`.
fn children_where(pid: u32, keep: impl Fn(&str, &[u8]) -> bool) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // pid (comm) state ppid ...
            let after = stat.rsplit_once(") ").map(|(_, a)| a).unwrap_or("");
            let ppid = after.split(' ').nth(1).and_then(|x| x.parse::<u32>().ok());
            let cmdline = std::fs::read(format!("/proc/{p}/cmdline")).unwrap_or_default();
            ppid == Some(pid) && keep(&stat, &cmdline)
        })
        .collect()
}

/// Start `cmd` (natvet) with its output piped and wait up to `seconds` until
/// `children` finds the child it starts (`what`); natvet's output if it never does.
fn start_until_child(
    cmd: &mut Command,
    children: fn(u32) -> Vec<u32>,
    what: &str,
    seconds: u64,
) -> Result<(std::process::Child, u32), Failed> {
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running natvet: {e}"))?;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(seconds);
    loop {
        if let Some(c) = children(child.id()).first() {
            return Ok((child, *c));
        }
        if std::time::Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let output = child.wait_with_output().map_err(|e| e.to_string())?;
            return Err(format!(
                "natvet never started {what} (exit {:?})\nstdout:\n{}\nstderr:\n{}",
                output.status.code(),
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            )
            .into());
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Start natvet on one kernel with a private TMPDIR, wait until its VM runs,
/// hit it with `signal` (at qemu or at natvet itself), and check that no qemu,
/// temporary folder or lock survives and that the exit code says why.
/// A helper natvet runs for a kernel (here `make modules_install` of a
/// `build:PATH` tree, whose Makefile leaves a job in the background and one
/// in the foreground) dies with everything it started when natvet is
/// interrupted (`signals`: one, or two in a row), natvet exits at once with
/// 128 + the signal, and the cache keeps no half-installed module tree.
fn interrupted_helper_leaves_nothing(signals: &[i32], want_code: i32) -> Result<(), Failed> {
    let name = format!(
        "teardown-helper-{}",
        signals
            .iter()
            .map(i32::to_string)
            .collect::<Vec<_>>()
            .join("-")
    );
    let out = out_dir(&name);
    let _ = std::fs::remove_dir_all(&out);
    // A real kernel image, so that the tree resolves as far as its modules.
    let fetch = Command::new(env!("CARGO_BIN_EXE_natvet"))
        .args(["kernels", "fetch", CONTROL_KERNEL])
        .current_dir(repo())
        .output()
        .map_err(|e| format!("running natvet kernels fetch: {e}"))?;
    let said = String::from_utf8_lossy(&fetch.stdout).into_owned();
    let image = said
        .split_whitespace()
        .skip_while(|w| *w != "image")
        .nth(1)
        .map(PathBuf::from)
        .ok_or_else(|| format!("kernels fetch {CONTROL_KERNEL} named no image: {said}"))?;
    let vmlinuz = image.with_file_name("vmlinuz");
    let tree = out.join("tree");
    let boot = tree.join("arch/x86/boot");
    std::fs::create_dir_all(&boot).map_err(|e| e.to_string())?;
    std::fs::copy(&vmlinuz, boot.join("bzImage"))
        .map_err(|e| format!("copying {}: {e}", vmlinuz.display()))?;
    std::fs::write(tree.join(".config"), "CONFIG_MODULES=y\n").map_err(|e| e.to_string())?;
    std::fs::write(tree.join("modules.order"), "").map_err(|e| e.to_string())?;
    std::fs::write(
        tree.join("Makefile"),
        "modules_install:\n\tsleep 300 & echo $$! > bg.pid; sh -c 'echo $$$$ > fg.pid; exec sleep 300'\n",
    )
    .map_err(|e| e.to_string())?;
    let cache = out.join("cache");
    let spec = format!("build:{}", tree.display());
    let mut child = Command::new(env!("CARGO_BIN_EXE_natvet"))
        .args(["vet", "--kernel", &spec, "--quiet", "--out"])
        .arg(out.join("vet"))
        .env("NATVET_CACHE", &cache)
        .current_dir(repo())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("running natvet: {e}"))?;
    let read_pid = |f: &str| -> Option<i32> {
        std::fs::read_to_string(tree.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    let start = std::time::Instant::now();
    let (bg, fg) = loop {
        if let (Some(bg), Some(fg)) = (read_pid("bg.pid"), read_pid("fg.pid")) {
            break (bg, fg);
        }
        if start.elapsed() > std::time::Duration::from_secs(120) {
            let _ = child.kill();
            let o = child.wait_with_output().map_err(|e| e.to_string())?;
            return Err(format!(
                "make modules_install never started its jobs\n--- stderr\n{}",
                String::from_utf8_lossy(&o.stderr)
            )
            .into());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let struck = std::time::Instant::now();
    for sig in signals {
        // SAFETY: kill(2) on the natvet this test started.
        unsafe {
            libc::kill(child.id() as i32, *sig);
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let took = struck.elapsed();
    let code = output.status.code().unwrap_or(-1);
    let alive = |pid: i32| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    };
    let gone_by = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while (alive(bg) || alive(fg)) && std::time::Instant::now() < gone_by {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let leftovers: Vec<String> = std::fs::read_dir(cache.join("local"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with(".tmp-") || n.starts_with("build-modules-") && !n.ends_with(".lock")
        })
        .collect();
    let (bg_alive, fg_alive) = (alive(bg), alive(fg));
    // Whatever happens, leave no sleep behind.
    for pid in [bg, fg] {
        if alive(pid) {
            // SAFETY: the test's own helpers' jobs, which it checked are alive.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
    if code != want_code
        || bg_alive
        || fg_alive
        || took > std::time::Duration::from_secs(20)
        || !leftovers.is_empty()
    {
        return Err(format!(
            "after signals {signals:?} to natvet during make modules_install: exit {code} (want {want_code}) after {took:?}; make's background job alive: {bg_alive}, its foreground job alive: {fg_alive}; in the cache: {leftovers:?}\n--- stderr\n{}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into());
    }
    Ok(())
}

fn interrupted_run_leaves_nothing(target: &str, signal: i32, want_code: i32) -> Result<(), Failed> {
    let name = format!("teardown-{target}-{signal}");
    let out = out_dir(&name);
    let _ = std::fs::remove_dir_all(&out);
    // Deliberately longer than a unix socket path may be (108 bytes): natvet
    // must not depend on the length of TMPDIR.
    let tmp = out.join("tmp").join("x".repeat(110));
    std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_natvet"));
    cmd.args(["vet", "--kernel", CONTROL_KERNEL, "--quiet", "--out"])
        .arg(&out)
        .arg("--json")
        .arg(out.join("report.json"))
        .env("TMPDIR", &tmp)
        .current_dir(repo());
    let (child, qemu) = start_until_child(&mut cmd, qemu_children, "qemu", 300)?;
    let pid = child.id();
    // Let the guest get going, then strike.
    std::thread::sleep(std::time::Duration::from_secs(2));
    let victim = if target == "qemu" { qemu } else { pid };
    // SAFETY: kill(2) on processes this test started.
    unsafe {
        libc::kill(victim as i32, signal);
    }
    let output = child.wait_with_output().map_err(|e| e.to_string())?;
    let code = output.status.code().unwrap_or(-1);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    // qemu dies with natvet (PR_SET_PDEATHSIG) even when natvet is SIGKILLed.
    let gone_by = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let alive = || {
        std::fs::read_to_string(format!("/proc/{qemu}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
    };
    while alive() && std::time::Instant::now() < gone_by {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let qemu_alive = alive();
    let list = || -> Vec<PathBuf> {
        std::fs::read_dir(&tmp)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default()
    };
    if signal == libc::SIGKILL && target == "natvet" {
        // A SIGKILLed natvet cannot clean up; the next run removes what it left.
        if list().is_empty() {
            return Err("a SIGKILLed natvet left no temporary folder: did it start the VM?".into());
        }
        let next = Command::new(env!("CARGO_BIN_EXE_natvet"))
            .args([
                "vet",
                "--kernel",
                CONTROL_KERNEL,
                "--backend",
                "nftables",
                "--quiet",
                "--out",
            ])
            .arg(&out)
            .env("TMPDIR", &tmp)
            .current_dir(repo())
            .output()
            .map_err(|e| e.to_string())?;
        if next.status.code() != Some(0) {
            return Err(format!(
                "the next run exited {:?}\n--- stdout\n{}\n--- stderr\n{}",
                next.status.code(),
                String::from_utf8_lossy(&next.stdout),
                String::from_utf8_lossy(&next.stderr)
            )
            .into());
        }
    }
    let leftovers = list();
    if code != want_code || qemu_alive || !leftovers.is_empty() {
        return Err(format!(
            "after signal {signal} to {target} (pid {victim}): exit {code} (want {want_code}), qemu alive: {qemu_alive}, left in TMPDIR: {leftovers:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}\n--- report\n{}",
            std::fs::read_to_string(out.join("report.json")).unwrap_or_default()
        )
        .into());
    }
    Ok(())
}

fn main() {
    let args = Arguments::from_args();
    let threads = args.test_threads.unwrap_or_else(natvet::host::cores);
    let _ = GUEST_CPUS.set(natvet::host::default_cpus(threads).to_string());
    let kernels: Vec<String> = match std::env::var("NATVET_KERNELS") {
        Ok(v) if !v.trim().is_empty() => v.split(',').map(|s| s.trim().to_string()).collect(),
        _ => match natvet::kernel_sets::kernel_set("default") {
            Ok(k) => k,
            Err(e) => {
                eprintln!("vm-images/matrix.toml: {e:#}");
                std::process::exit(2);
            }
        },
    };
    let mut trials = Vec::new();
    for kernel in &kernels {
        for scenario in natvet::scenario::default_set() {
            let k = kernel.clone();
            trials.push(Trial::test(
                format!("vet::{kernel}::{scenario}"),
                move || vet_passes(&k, scenario),
            ));
        }
    }
    // What `make vet` does on each kernel: every default scenario in one
    // boot, their runs overlapping in the guest.
    let together = kernels
        .iter()
        .find(|k| k.contains("6.12"))
        .or(kernels.first())
        .cloned();
    if let Some(k) = together {
        trials.push(Trial::test(
            format!("vet::{k}::every-scenario-one-boot"),
            move || every_scenario_passes(&k),
        ));
    }
    // Slow scenarios (minutes each) on one kernel.
    for (scenario, _) in natvet::scenario::SHIPPED {
        if !natvet::scenario::default_set().contains(scenario) {
            trials.push(Trial::test(
                format!("vet::{CONTROL_KERNEL}::{scenario}"),
                move || vet_passes(CONTROL_KERNEL, scenario),
            ));
        }
    }
    if let Ok(local) = std::env::var("NATVET_LOCAL_KERNEL") {
        trials.push(Trial::test(
            format!("vet::local::{local}::extended-ports"),
            move || vet_passes(&local, "extended-ports"),
        ));
    }
    for c in controls() {
        trials.push(Trial::test(format!("control::{}", c.name), move || {
            control_fails(&c)
        }));
    }
    trials.push(Trial::test(
        format!("relay::{CONTROL_KERNEL}::example-bundles-pass"),
        || relay_bundles_pass(CONTROL_KERNEL),
    ));
    trials.push(Trial::test(
        "relay::gate-flags-a-ruleset-change-that-drops-a-range",
        relay_gate_flags_the_dropped_range,
    ));
    trials.push(Trial::test(
        "relay::a-construct-the-kernel-lacks-fails-that-kernel-only",
        relay_construct_missing_fails_only_that_kernel,
    ));
    trials.push(Trial::test(
        "relay::capture-is-read-only-redacts-and-loads",
        relay_capture_is_read_only,
    ));
    trials.push(Trial::test(
        "relay::bundle-errors-exit-2-before-any-vm",
        relay_bundle_errors_exit_2,
    ));
    trials.push(Trial::test(
        "perf::control-slow-relay-is-flagged-slower-and-nothing-else",
        slow_relay_is_slower,
    ));
    for i in 1..=EQUAL_GATES {
        trials.push(Trial::test(
            format!("perf::equal-kernels-no-false-alarm-{i}-of-{EQUAL_GATES}"),
            move || equal_kernels_no_regression(i),
        ));
    }
    trials.push(Trial::test(
        "soak::outage-fails-with-the-moment-it-began",
        soak_shows_when_an_outage_began,
    ));
    trials.push(Trial::test("infra::kernel-panic-exits-3", panic_is_infra));
    trials.push(Trial::test(
        "teardown::sigkill-qemu-exits-3-leaves-nothing",
        || interrupted_run_leaves_nothing("qemu", libc::SIGKILL, 3),
    ));
    trials.push(Trial::test(
        "teardown::sigkill-natvet-kills-qemu-next-run-cleans",
        || interrupted_run_leaves_nothing("natvet", libc::SIGKILL, -1),
    ));
    trials.push(Trial::test(
        "teardown::sigint-natvet-exits-130-leaves-nothing",
        || interrupted_run_leaves_nothing("natvet", libc::SIGINT, 130),
    ));
    trials.push(Trial::test(
        "teardown::sigterm-natvet-exits-143-leaves-nothing",
        || interrupted_run_leaves_nothing("natvet", libc::SIGTERM, 143),
    ));
    trials.push(Trial::test(
        "teardown::sigint-during-a-build-helper-kills-all-it-started",
        || interrupted_helper_leaves_nothing(&[libc::SIGINT], 130),
    ));
    trials.push(Trial::test(
        "teardown::second-sigint-during-a-build-helper-kills-all-it-started",
        || interrupted_helper_leaves_nothing(&[libc::SIGINT, libc::SIGINT], 130),
    ));
    trials.push(Trial::test(
        "teardown::sigterm-during-a-build-helper-kills-all-it-started",
        || interrupted_helper_leaves_nothing(&[libc::SIGTERM], 143),
    ));
    trials.push(Trial::test(
        "verify::host-nat-checks-leave-host-untouched",
        verify_on_host,
    ));
    trials.push(Trial::test(
        "verify::global-sysctl-in-a-namespace-exits-2-before-anything-runs",
        verify_refuses_global_sysctl,
    ));
    trials.push(Trial::test(
        "verify::runs-at-once-keep-their-own-folders",
        verify_runs_at_once_keep_their_own_folders,
    ));
    trials.push(Trial::test(
        "verify::sigint-exits-130-leaves-host-untouched",
        || verify_interrupted(libc::SIGINT, true, 130),
    ));
    trials.push(Trial::test(
        "verify::sigterm-exits-143-leaves-host-untouched",
        || verify_interrupted(libc::SIGTERM, false, 143),
    ));
    trials.push(Trial::test(
        "verify::sigkill-leaves-no-agent-and-host-untouched",
        || verify_interrupted(libc::SIGKILL, false, 137),
    ));
    trials.push(Trial::test("input::unknown-release-exits-2", || {
        bad_input(&["vet", "--kernel", "debian:9.9.9"], "debian:9.9.9")
    }));
    trials.push(Trial::test("input::missing-kernel-file-exits-2", || {
        bad_input(
            &["vet", "--kernel", "/nonexistent/bzImage"],
            "/nonexistent/bzImage",
        )
    }));
    trials.push(Trial::test("input::scenario-value-out-of-range-exits-2", || {
        bad_input(
            &[
                "vet",
                "--kernel",
                CONTROL_KERNEL,
                "--scenario",
                "tests/controls/huge-flows.toml",
            ],
            "line 9: check many-flows: value out of range: flows = 1000000000 must be between 1 and 10000 because",
        )
    }));
    trials.push(Trial::test("input::timeout-out-of-range-exits-2", || {
        bad_input(
            &["vet", "--kernel", CONTROL_KERNEL, "--timeout", "0"],
            "value out of range: --timeout = 0 must be between 10 and 86400 s because",
        )
    }));
    trials.push(Trial::test(
        "input::pid1-without-guest-marker-is-the-cli",
        pid1_without_marker_is_the_cli,
    ));
    trials.push(Trial::test("input::malformed-scenario-exits-2", || {
        bad_input(
            &[
                "vet",
                "--kernel",
                CONTROL_KERNEL,
                "--scenario",
                "tests/controls/malformed.toml",
            ],
            "line 3",
        )
    }));
    trials.push(Trial::test(
        "input::bisect-exit-codes-125-on-missing-build-tree",
        || {
            exits_with(
                "bisect-missing-tree",
                &[
                    "vet",
                    "--kernel",
                    "build:/nonexistent/linux",
                    "--bisect-exit-codes",
                ],
                125,
                "/nonexistent/linux",
            )
        },
    ));
    trials.push(Trial::test(
        "input::bisect-exit-codes-125-on-build-tree-without-image",
        bisect_exit_codes_skip_tree_without_image,
    ));
    trials.push(Trial::test("input::bisect-different-lines-exits-2", || {
        exits_with(
            "bisect-different-lines",
            &[
                "bisect",
                "--good",
                "debian:6.1.0-40-amd64",
                "--bad",
                "debian:6.12.43+deb12-amd64",
            ],
            2,
            "natvet bisects within one line",
        )
    }));
    trials.push(Trial::test("input::bisect-unknown-check-exits-2", || {
        exits_with(
            "bisect-unknown-check",
            &[
                "bisect",
                "--good",
                "debian:6.12.43+deb12-amd64",
                "--bad",
                "debian:6.12.95+deb12-amd64",
                "--check",
                "handshake/1",
            ],
            2,
            "--check handshake/1 matches none",
        )
    }));
    trials.extend(repository::trials());
    libtest_mimic::run(&args, trials).exit();
}
