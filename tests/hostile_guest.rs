//! A hostile guest, without a VM: this test binary is also the guest. natvet
//! runs it exactly as it runs its own agent for `natvet verify` (`natvet
//! agent --job FILE --results-fd N`, through `/proc/self/exe`), so every
//! attack below goes through the same socket pair, the same console pipe
//! and the same host code (`vet::run`: launch, collect, judge, evidence,
//! report) as a real guest's messages.
//!
//! Each test names one attack; the fake guest reads it from
//! `NATVET_HOSTILE_ATTACK`. Every test asserts what the host made of it (an
//! infrastructure error with its reason, or a run that stayed within its
//! bounds), that nothing was written outside `--out`, and that the host's
//! heap stayed bounded while the guest sent far more than that. Tests run
//! one at a time: the heap is measured for the whole process.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use natvet::kernel::{BootKind, Kernel};
use natvet::nat::BackendKind;
use natvet::protocol::job::Job;
use natvet::protocol::CaptureMode;
use natvet::report::{InfraStage, KernelRun, KernelState, RunReport};
use natvet::scenario::Scenario;
use natvet::vet::{self, BootPreference, VetOptions};
use serde_json::{json, Value};

/// The heap of this process (the host), now and at its highest.
struct Counting;

static HEAP: AtomicUsize = AtomicUsize::new(0);
static HEAP_PEAK: AtomicUsize = AtomicUsize::new(0);

fn grew(by: usize) {
    let now = HEAP.fetch_add(by, Ordering::Relaxed) + by;
    HEAP_PEAK.fetch_max(now, Ordering::Relaxed);
}

// SAFETY: every call is passed on to the system allocator unchanged; the
// counters only add and subtract the sizes asked for.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            grew(layout.size());
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        HEAP.fetch_sub(layout.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            HEAP.fetch_sub(layout.size(), Ordering::Relaxed);
            grew(new_size);
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What the host's heap may grow by during one attack. Each attack that
/// floods sends at least four times as much.
const HEAP_BOUND: usize = 64 << 20;

/// The longest the guest may go without progress (`--check-timeout`).
const STALL: Duration = Duration::from_secs(2);
/// The whole run (`--timeout`).
const TIMEOUT: Duration = Duration::from_secs(30);

const ATTACK: &str = "NATVET_HOSTILE_ATTACK";
const HOST_RELEASE: &str = "6.1.0-99-hostile";

// ---------------------------------------------------------------------------
// The guest's side.

/// The fake guest: `agent --job FILE --results-fd N`, as natvet starts its agent.
fn fake_guest(args: &[String]) -> i32 {
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_default()
    };
    let job: Job = match std::fs::read(arg("--job"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(j) => j,
        None => return 2,
    };
    let Ok(fd) = arg("--results-fd").parse::<i32>() else {
        return 2;
    };
    // SAFETY: natvet handed this descriptor to its child for exactly this.
    let channel = unsafe { std::fs::File::from_raw_fd(fd) };
    let mut guest = Guest {
        channel,
        asked: natvet::vet::expected_results(&job.scenarios),
    };
    let attack = std::env::var(ATTACK).unwrap_or_default();
    // A write fails once the host has had enough and closed its end: the
    // attack is over then.
    let _ = guest.attack(&attack);
    0
}

struct Guest {
    channel: std::fs::File,
    /// (scenario, backend, check) of every result the job asks for.
    asked: Vec<(String, String, String)>,
}

impl Guest {
    fn send(&mut self, msg: Value) -> std::io::Result<()> {
        let mut line = msg.to_string();
        line.push('\n');
        self.channel.write_all(line.as_bytes())
    }

    fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.channel.write_all(bytes)
    }

    fn console(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let mut out = std::io::stdout().lock();
        out.write_all(bytes)?;
        out.flush()
    }

    fn hello(&mut self, release: &str) -> std::io::Result<()> {
        self.send(
            json!({"type": "hello", "version": natvet::protocol::PROTOCOL_VERSION, "kernel_release": release, "uptime_ms": 10}),
        )
    }

    fn result(&mut self, i: usize, status: &str, extra: Value) -> std::io::Result<()> {
        let (s, b, c) = self.asked[i].clone();
        let mut r = json!({
            "type": "check", "scenario": s, "backend": b, "check": c, "status": status,
            "expected": "the packet crosses the NAT", "observed": "it did", "duration_ms": 3,
        });
        if let (Some(r), Some(extra)) = (r.as_object_mut(), extra.as_object()) {
            r.extend(extra.clone());
        }
        self.send(r)
    }

    /// A result for every check, all passing, from `from` on.
    fn pass_from(&mut self, from: usize) -> std::io::Result<()> {
        for i in from..self.asked.len() {
            self.result(i, "pass", json!({}))?;
        }
        Ok(())
    }

    fn done(&mut self) -> std::io::Result<()> {
        self.send(json!({"type": "done", "elapsed_ms": 100}))
    }

    /// Evidence as a guest gathers it, with `text` in every field.
    fn evidence(text: &str) -> Value {
        json!({"conntrack": text, "ruleset": text, "counters": text, "routes": text,
               "wireguard": text, "dmesg": [text], "capture_note": text})
    }

    /// `total` bytes of `byte` in writes of 1 MiB, to the channel or the console.
    fn flood(&mut self, byte: u8, total: usize, console: bool) -> std::io::Result<()> {
        let chunk = vec![byte; 1 << 20];
        for _ in 0..total / chunk.len() {
            if console {
                self.console(&chunk)?;
            } else {
                self.raw(&chunk)?;
            }
        }
        Ok(())
    }

    fn attack(&mut self, attack: &str) -> std::io::Result<()> {
        match attack {
            // The release becomes a folder name: `..` would leave --out.
            "release-dot-dot" => {
                self.hello("..")?;
                for i in 0..self.asked.len() {
                    self.result(i, "fail", json!({"evidence": Guest::evidence("x")}))?;
                }
                self.done()
            }
            // A release other than the one the host booted.
            "release-other" => {
                self.hello("6.1.0-1-impostor")?;
                self.result(0, "fail", json!({"evidence": Guest::evidence("x")}))?;
                self.pass_from(1)?;
                self.done()
            }
            "escape-sequences" => {
                let esc = "\u{1b}[2J\u{1b}]0;owned\u{7}\r\u{9b}31m\u{8}";
                self.console(format!("[ 1.0] {esc}boot\n").as_bytes())?;
                self.console(format!("[ 1.1] WARNING: CPU: 0 PID: 1 {esc}\n").as_bytes())?;
                self.hello("6.1.0-99-hostile")?;
                self.send(json!({"type": "note", "message": format!("modules {esc}")}))?;
                self.send(json!({"type": "check_started", "scenario": self.asked[0].0,
                    "backend": self.asked[0].1, "check": self.asked[0].2}))?;
                self.result(
                    0,
                    "error",
                    json!({"expected": format!("e{esc}"), "observed": format!("o{esc}"),
                           "evidence": Guest::evidence(esc)}),
                )?;
                self.send(json!({"type": "fatal", "error": format!("gave up {esc}")}))
            }
            // 256 MiB of console without a line end.
            "console-endless-line" => {
                self.hello(HOST_RELEASE)?;
                self.flood(b'A', 256 << 20, true)?;
                self.console(b"\n")?;
                self.pass_from(0)?;
                self.done()
            }
            // A kernel warning on every console line, 100,000 times.
            "console-alarm-flood" => {
                self.hello(HOST_RELEASE)?;
                let line =
                    b"[ 1.0] WARNING: CPU: 0 PID: 1 at net/netfilter/x.c:1 hostile+0x0/0x0\n";
                let block: Vec<u8> = line.repeat(1000);
                for _ in 0..100 {
                    self.console(&block)?;
                }
                self.pass_from(0)?;
                self.done()
            }
            "note-flood" => {
                self.hello(HOST_RELEASE)?;
                let mut block = String::new();
                for i in 0..1000 {
                    block.push_str(&json!({"type": "note", "message": format!("note {i} {}", "n".repeat(200))}).to_string());
                    block.push('\n');
                }
                for _ in 0..300 {
                    self.raw(block.as_bytes())?;
                }
                self.pass_from(0)?;
                self.done()
            }
            // Bytes that never make a message, often enough to look alive.
            "trickle-bytes" | "trickle-blank-lines" => {
                self.hello(HOST_RELEASE)?;
                let byte: &[u8] = if attack == "trickle-bytes" {
                    b"{"
                } else {
                    b"\n"
                };
                let end = Instant::now() + 2 * TIMEOUT;
                while Instant::now() < end {
                    self.raw(byte)?;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(())
            }
            // 64 MiB of blank lines, then an honest run.
            "blank-line-flood" => {
                self.hello(HOST_RELEASE)?;
                self.flood(b'\n', 64 << 20, false)?;
                self.pass_from(0)?;
                self.done()
            }
            "unasked-result" => {
                self.hello(HOST_RELEASE)?;
                self.pass_from(0)?;
                let (s, b, _) = self.asked[0].clone();
                self.send(json!({"type": "check", "scenario": s, "backend": b,
                    "check": "made-up/../../x", "status": "fail", "expected": "e", "observed": "o",
                    "duration_ms": 1}))?;
                self.done()
            }
            // Pass, then fail, for one check (the gate took the first, vet the last).
            "second-result" => {
                self.hello(HOST_RELEASE)?;
                self.result(0, "pass", json!({}))?;
                self.result(0, "fail", json!({}))?;
                self.pass_from(1)?;
                self.done()
            }
            "guest-says-flaky" => {
                self.hello(HOST_RELEASE)?;
                self.result(0, "flaky", json!({}))?;
                self.pass_from(1)?;
                self.done()
            }
            "guest-sets-evidence-dir" => {
                self.hello(HOST_RELEASE)?;
                self.result(0, "fail", json!({"evidence_dir": "/etc"}))?;
                self.pass_from(1)?;
                self.done()
            }
            "unasked-check-started" => {
                self.hello(HOST_RELEASE)?;
                let (s, b, _) = self.asked[0].clone();
                self.send(json!({"type": "check_started", "scenario": s, "backend": b, "check": "made-up"}))?;
                self.pass_from(0)?;
                self.done()
            }
            "unasked-run-done" => {
                self.hello(HOST_RELEASE)?;
                self.pass_from(0)?;
                self.send(
                    json!({"type": "run_done", "scenario": "made-up", "backend": "nftables",
                    "setup_ms": 1, "elapsed_ms": 2}),
                )?;
                self.done()
            }
            "message-after-done" => {
                self.hello(HOST_RELEASE)?;
                self.pass_from(0)?;
                self.done()?;
                self.send(json!({"type": "note", "message": "one more thing"}))
            }
            "result-before-hello" => {
                self.pass_from(0)?;
                self.hello(HOST_RELEASE)?;
                self.done()
            }
            // Numbers that overflow what the host computes from them.
            "numbers-that-overflow" => {
                self.hello(HOST_RELEASE)?;
                self.result(
                    0,
                    "pass",
                    json!({"duration_ms": u64::MAX,
                           "series": {"step_ms": u64::MAX, "sent": [1, 1], "answered": [1, 1]}}),
                )?;
                self.pass_from(1)?;
                self.done()
            }
            // Capture names that are paths, and a capture that is not base64.
            "capture-names" => {
                self.hello(HOST_RELEASE)?;
                let mut ev = Guest::evidence("x");
                ev["captures"] = json!([{"namespace": "../..", "interface": "../x",
                    "packets": 1, "pcap_base64": "@@not base64@@"}]);
                self.result(0, "fail", json!({"evidence": ev}))?;
                self.pass_from(1)?;
                self.done()
            }
            "over-long-line" => {
                self.hello(HOST_RELEASE)?;
                self.flood(b'x', 8 << 20, false)?;
                self.raw(b"\n")?;
                self.done()
            }
            _ => Ok(()),
        }
    }
}

// ---------------------------------------------------------------------------
// The host's side.

/// A small job: one scenario, one backend.
fn scenarios() -> Vec<Scenario> {
    let mut s = Scenario::load("pmtu").expect("the shipped scenario pmtu parses");
    s.backends = vec![BackendKind::Nftables];
    vec![s]
}

/// What one attack came to.
struct Attacked {
    report: RunReport,
    wall: Duration,
    out: PathBuf,
    _root: tempfile::TempDir,
}

impl Attacked {
    fn kernel(&self) -> &KernelRun {
        &self.report.kernels[0]
    }
}

/// Run one attack through `vet::run`, as `natvet verify` runs its agent, and
/// check what holds for every attack: no panic (the run returns), nothing
/// outside --out, the host's heap bounded.
fn attack(name: &str, host_release: Option<&str>) -> Result<Attacked, Failed> {
    let root = tempfile::tempdir().map_err(|e| format!("a temporary folder: {e}"))?;
    let out = root.path().join("out");
    let opts = VetOptions {
        kernels: vec![],
        scenarios: scenarios(),
        jobs: 1,
        timeout: TIMEOUT,
        check_timeout: STALL,
        memory_mb: 256,
        cpus: 1,
        out_dir: out.clone(),
        cmdline_extra: String::new(),
        evidence_always: false,
        capture: CaptureMode::Failures,
        waits: natvet::checks::patience::Waits::Adaptive,
        boot: BootPreference::Auto,
        parallel: 1,
        run_id: None,
        perf: natvet::protocol::job::PerfMode::Skip,
    };
    let kernel = Kernel {
        spec: "fake-guest".into(),
        release: host_release.map(str::to_string),
        boot_image: PathBuf::new(),
        boot_kind: BootKind::Running,
        bzimage: None,
        modules_dir: None,
        package: None,
    };
    std::env::set_var(ATTACK, name);
    let ui = natvet::ui::Ui::new(true);
    let base = HEAP.load(Ordering::Relaxed);
    HEAP_PEAK.store(base, Ordering::Relaxed);
    let start = Instant::now();
    let report = vet::run(&opts, vec![(kernel.spec.clone(), Ok((kernel, 0)))], &ui);
    let wall = start.elapsed();
    let heap = HEAP_PEAK.load(Ordering::Relaxed).saturating_sub(base);
    if heap > HEAP_BOUND {
        return Err(format!(
            "the host's heap grew by {} MiB during the attack (bound {} MiB)",
            heap >> 20,
            HEAP_BOUND >> 20
        )
        .into());
    }
    let outside: Vec<String> = std::fs::read_dir(root.path())
        .map_err(|e| format!("listing {}: {e}", root.path().display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "out")
        .collect();
    if !outside.is_empty() {
        return Err(format!("written outside --out: {outside:?}").into());
    }
    for path in walk(&out) {
        let inside = path
            .canonicalize()
            .map(|p| p.starts_with(out.canonicalize().unwrap_or_default()))
            .unwrap_or(false);
        if !inside {
            return Err(format!("{} is not inside --out", path.display()).into());
        }
    }
    if report.kernels.len() != 1 {
        return Err(format!("{} kernels in the report, not 1", report.kernels.len()).into());
    }
    Ok(Attacked {
        report,
        wall,
        out,
        _root: root,
    })
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            found.extend(walk(&p));
        }
        found.push(p);
    }
    found
}

/// The run is an infrastructure error (exit 3) at `stage`, its reason naming `what`.
fn infra_error(a: &Attacked, stage: InfraStage, what: &[&str]) -> Result<(), Failed> {
    let k = a.kernel();
    let KernelState::InfraError {
        stage: s, reason, ..
    } = &k.state
    else {
        return Err(format!(
            "the run completed (exit {}), where {stage} error was due; results: {:?}",
            a.report.exit_code(),
            k.results
                .iter()
                .map(|r| format!("{} {}", r.check, r.status.label()))
                .collect::<Vec<_>>()
        )
        .into());
    };
    if *s != stage {
        return Err(format!("a {s} error ({reason}), not a {stage} error").into());
    }
    for w in what {
        if !reason.contains(w) {
            return Err(format!("the reason does not name {w:?}: {reason}").into());
        }
    }
    if a.report.exit_code() != 3 {
        return Err(format!("exit {}, not 3", a.report.exit_code()).into());
    }
    Ok(())
}

/// The run completed and every check it asked for came once.
fn completed(a: &Attacked) -> Result<(), Failed> {
    let k = a.kernel();
    if k.state != KernelState::Completed {
        return Err(format!("the run did not complete: {:?}", k.state).into());
    }
    let asked: usize = scenarios()
        .iter()
        .map(|s| s.result_names().len() * s.backends.len())
        .sum();
    if k.results.len() != asked {
        return Err(format!("{} results, {asked} asked for", k.results.len()).into());
    }
    Ok(())
}

fn check(cond: bool, what: impl FnOnce() -> String) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(what().into())
    }
}

/// Every string in `v`, with where it is.
fn strings(v: &Value, at: &str, out: &mut Vec<(String, String)>) {
    match v {
        Value::String(s) => out.push((at.to_string(), s.clone())),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .for_each(|(i, x)| strings(x, &format!("{at}[{i}]"), out)),
        Value::Object(o) => o
            .iter()
            .for_each(|(k, x)| strings(x, &format!("{at}.{k}"), out)),
        _ => {}
    }
}

fn control(c: char) -> bool {
    c.is_control() && c != '\n' && c != '\t'
}

fn trials() -> Vec<Trial> {
    let t = |name: &'static str, f: fn() -> Result<(), Failed>| Trial::test(name, f);
    vec![
        t("release-dot-dot-writes-nothing-outside-out", || {
            let a = attack("release-dot-dot", None)?;
            infra_error(&a, InfraStage::Protocol, &["release", ".."])
        }),
        t("release-other-than-booted-names-nothing", || {
            let a = attack("release-other", Some(HOST_RELEASE))?;
            completed(&a)?;
            let k = a.kernel();
            check(k.release.as_deref() == Some(HOST_RELEASE), || {
                format!(
                    "the report names the kernel {:?}, not {HOST_RELEASE}",
                    k.release
                )
            })?;
            check(
                k.notes.iter().any(|n| n.contains("6.1.0-1-impostor")),
                || format!("no note says what the guest claimed: {:?}", k.notes),
            )?;
            let dirs: Vec<String> = std::fs::read_dir(&a.out)
                .map_err(|e| format!("{e}"))?
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            check(dirs == [HOST_RELEASE], || {
                format!("--out holds {dirs:?}, not only the host's folder {HOST_RELEASE}")
            })?;
            let r = &k.results[0];
            let dir = r.evidence_dir.as_deref().unwrap_or("");
            check(
                dir.contains(HOST_RELEASE) && Path::new(dir).join("result.txt").exists(),
                || format!("the evidence is not in the host's folder: {dir:?}"),
            )
        }),
        t("escape-sequences-never-reach-the-terminal", || {
            let a = attack("escape-sequences", Some(HOST_RELEASE))?;
            infra_error(&a, InfraStage::Agent, &["gave up"])?;
            let report = &a.report;
            let rendered = [
                (
                    "the compact table",
                    natvet::report::terminal::compact(report),
                ),
                ("the full table", natvet::report::terminal::full(report)),
                ("markdown", natvet::report::render::markdown(report)),
                ("junit", natvet::report::render::junit(report)),
            ];
            for (what, text) in rendered {
                if let Some(c) = text.chars().find(|c| control(*c)) {
                    return Err(format!("{what} holds the control character {c:?}:\n{text}").into());
                }
            }
            let json = serde_json::to_value(report).map_err(|e| format!("{e}"))?;
            let mut all = Vec::new();
            strings(&json, "report", &mut all);
            for (at, s) in all {
                if s.chars().any(control) {
                    return Err(format!("{at} holds a control character: {s:?}").into());
                }
            }
            for path in walk(&a.out) {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                if name.ends_with(".txt") {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    check(!text.chars().any(control), || {
                        format!("{} holds a control character: {text:?}", path.display())
                    })?;
                }
            }
            Ok(())
        }),
        t("console-endless-line-is-capped", || {
            let a = attack("console-endless-line", Some(HOST_RELEASE))?;
            completed(&a)?;
            let log = a.out.join(HOST_RELEASE).join("console.log");
            let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
            check(size > 0 && size <= 64 << 20, || {
                format!("console.log is {size} bytes for 256 MiB of console")
            })
        }),
        t("console-alarm-flood-is-capped", || {
            let a = attack("console-alarm-flood", Some(HOST_RELEASE))?;
            completed(&a)?;
            let notes = &a.kernel().notes;
            check(notes.len() <= 250, || {
                format!("{} notes kept for 100,000 console warnings", notes.len())
            })?;
            check(notes.iter().any(|n| n.contains("WARNING: CPU")), || {
                "no note shows a console warning".into()
            })?;
            check(notes.iter().any(|n| n.contains("more")), || {
                "no note says how many warnings were left out".into()
            })
        }),
        t("note-flood-is-capped", || {
            let a = attack("note-flood", Some(HOST_RELEASE))?;
            completed(&a)?;
            let notes = &a.kernel().notes;
            check(notes.len() <= 250, || {
                format!("{} notes kept of 300,000", notes.len())
            })?;
            check(notes.iter().any(|n| n.contains("left out")), || {
                "no note says how many notes were left out".into()
            })
        }),
        t("trickled-bytes-do-not-hold-off-the-stall-timeout", || {
            let a = attack("trickle-bytes", Some(HOST_RELEASE))?;
            infra_error(&a, InfraStage::CheckTimeout, &["no message"])?;
            // Two attempts (a harness error is retried once), each ended at STALL.
            check(a.wall < TIMEOUT, || {
                format!("the run took {:.1} s", a.wall.as_secs_f64())
            })
        }),
        t(
            "trickled-blank-lines-do-not-hold-off-the-stall-timeout",
            || {
                let a = attack("trickle-blank-lines", Some(HOST_RELEASE))?;
                infra_error(&a, InfraStage::CheckTimeout, &["no message"])?;
                check(a.wall < TIMEOUT, || {
                    format!("the run took {:.1} s", a.wall.as_secs_f64())
                })
            },
        ),
        t("blank-line-flood-costs-linear-time", || {
            let a = attack("blank-line-flood", Some(HOST_RELEASE))?;
            completed(&a)?;
            check(a.wall < Duration::from_secs(15), || {
                format!("64 MiB of blank lines took {:.1} s", a.wall.as_secs_f64())
            })
        }),
        t("result-nobody-asked-for-is-a-protocol-error", || {
            let a = attack("unasked-result", Some(HOST_RELEASE))?;
            infra_error(
                &a,
                InfraStage::Protocol,
                &["made-up/../../x", "did not ask for"],
            )
        }),
        t("second-result-for-a-check-is-a-protocol-error", || {
            let a = attack("second-result", Some(HOST_RELEASE))?;
            infra_error(&a, InfraStage::Protocol, &["second result"])
        }),
        t("guest-cannot-say-flaky", || {
            let a = attack("guest-says-flaky", Some(HOST_RELEASE))?;
            infra_error(&a, InfraStage::Protocol, &["flaky"])
        }),
        t("guest-cannot-set-evidence-dir", || {
            let a = attack("guest-sets-evidence-dir", Some(HOST_RELEASE))?;
            infra_error(&a, InfraStage::Protocol, &["evidence_dir"])
        }),
        t("check-started-nobody-asked-for-is-a-protocol-error", || {
            let a = attack("unasked-check-started", Some(HOST_RELEASE))?;
            infra_error(&a, InfraStage::Protocol, &["made-up", "did not ask for"])
        }),
        t("run-done-nobody-asked-for-is-a-protocol-error", || {
            let a = attack("unasked-run-done", Some(HOST_RELEASE))?;
            infra_error(&a, InfraStage::Protocol, &["made-up", "did not ask for"])
        }),
        t("message-after-done-is-a-protocol-error", || {
            let a = attack("message-after-done", Some(HOST_RELEASE))?;
            infra_error(&a, InfraStage::Protocol, &["after"])
        }),
        t("result-before-hello-is-a-protocol-error", || {
            let a = attack("result-before-hello", Some(HOST_RELEASE))?;
            infra_error(&a, InfraStage::Protocol, &["before"])
        }),
        t("numbers-that-overflow-are-a-protocol-error", || {
            let a = attack("numbers-that-overflow", Some(HOST_RELEASE))?;
            // Rendering must not overflow either way.
            let _ = natvet::report::html::html(&a.report, None);
            infra_error(&a, InfraStage::Protocol, &["duration_ms"])
        }),
        t("capture-names-and-bad-base64-are-a-protocol-error", || {
            let a = attack("capture-names", Some(HOST_RELEASE))?;
            infra_error(&a, InfraStage::Protocol, &["capture"])
        }),
        t("over-long-line-is-a-protocol-error", || {
            let a = attack("over-long-line", Some(HOST_RELEASE))?;
            infra_error(&a, InfraStage::Protocol, &["bytes"])
        }),
    ]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("agent") {
        std::process::exit(fake_guest(&args[2..]));
    }
    let mut args = Arguments::from_args();
    // One attack at a time: the heap is measured for the whole process, and
    // the attack is named in the environment the guest inherits.
    args.test_threads = Some(1);
    libtest_mimic::run(&args, trials()).exit();
}
