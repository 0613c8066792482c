//! `natvet vet`: resolve kernels, build an initramfs for each, boot them in
//! parallel within a memory budget, and gather every check's result.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine as _;

use crate::initramfs::{InitramfsSpec, ModulesSpec};
use crate::kernel::{self, Cache, Kernel, KernelSpec};
use crate::launcher::{self, End, Outcome};
use crate::modules::{ModuleIndex, Resolved};
use crate::nat::BackendKind;
use crate::protocol::job::{Job, JOB_PATH};
use crate::protocol::{CheckResult, GuestMessage, RunTiming, Status, PROTOCOL_VERSION};
use crate::qemu::{self, VmConfig};
use crate::report::{self, InfraStage, KernelRun, KernelState, RunReport, Timings};
use crate::scenario::Scenario;
use crate::ui::{KernelProgress, Ui};

/// The default kernel sets, shipped with natvet.
pub const KERNEL_SETS: &str = include_str!("../../vm-images/matrix.toml");

/// Modules the agent loads before anything else; whatever else the kernel
/// asks for is loaded on demand by natvet's own modprobe.
pub const PRELOAD_MODULES: &[&str] = &[
    "veth",
    "wireguard",
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_chain_nat",
    "nft_masq",
    "nft_redir",
    "nft_counter",
    "nf_conntrack_netlink",
];

/// Whole module folders shipped so that on-demand loading finds what a backend needs.
pub const MODULE_DIRS: &[&str] = &[
    "kernel/net/netfilter",
    "kernel/net/ipv4/netfilter",
    "kernel/net/ipv6/netfilter",
    "kernel/drivers/net/wireguard",
];

/// Notes that carry a kernel warning seen on the console start with this.
const CONSOLE_ALARM: &str = "console: ";

/// The conntrack tool, for checks and evidence.
const CONNTRACK: &str = "/usr/sbin/conntrack";
const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";

#[derive(Debug, Clone)]
pub struct VetOptions {
    pub kernels: Vec<KernelSpec>,
    pub scenarios: Vec<Scenario>,
    pub jobs: usize,
    pub timeout: Duration,
    /// The longest one check may take, measured on the host.
    pub check_timeout: Duration,
    pub memory_mb: u32,
    /// Virtual CPUs per guest.
    pub cpus: usize,
    pub out_dir: PathBuf,
    pub cmdline_extra: String,
    pub evidence_always: bool,
    pub capture: crate::protocol::CaptureMode,
    pub boot: BootPreference,
    /// Scenario runs at once inside each guest.
    pub parallel: usize,
}

/// Which kernel image qemu boots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootPreference {
    /// The uncompressed vmlinux through PVH where the kernel has it (fastest), else the bzImage.
    Auto,
    /// Always the bzImage (for comparison).
    #[value(name = "bzimage")]
    BzImage,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Sets {
    set: std::collections::BTreeMap<String, Set>,
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Set {
    kernels: Vec<String>,
}

fn kernel_sets() -> Result<Sets> {
    toml::from_str(KERNEL_SETS).context("vm-images/matrix.toml is malformed")
}

/// The names of the kernel sets in vm-images/matrix.toml.
pub fn kernel_set_names() -> Result<Vec<String>> {
    Ok(kernel_sets()?.set.into_keys().collect())
}

/// The kernels of a named set in vm-images/matrix.toml.
pub fn kernel_set(name: &str) -> Result<Vec<String>> {
    let sets = kernel_sets()?;
    match sets.set.get(name) {
        Some(s) => Ok(s.kernels.clone()),
        None => bail!(
            "no kernel set named '{name}'; sets: {}",
            sets.set.keys().cloned().collect::<Vec<_>>().join(", ")
        ),
    }
}

/// The host's cores (1 if it cannot tell).
pub fn host_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A sensible number of parallel VMs: one per core, as many as memory allows.
pub fn default_jobs(memory_mb: u32) -> usize {
    let cores = host_cores();
    let per_vm = u64::from(memory_mb) + 200;
    let avail = available_memory_mb().unwrap_or(per_vm);
    cores.min((avail / per_vm).max(1) as usize).max(1)
}

/// Virtual CPUs per guest when `vms` run at once: the host's cores shared
/// among them, at least one each (more would only make them take turns).
pub fn default_cpus(vms: usize) -> usize {
    (host_cores() / vms.max(1)).max(1)
}

pub fn available_memory_mb() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kb: u64 = info
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb / 1024)
}

/// A kernel spec and what became of it: the kernel and how long resolving took
/// (ms), or why it could not be had (an infrastructure error).
pub type Resolution = (String, std::result::Result<(Kernel, u64), String>);

/// Resolve every kernel first: a user error (unknown release, missing file)
/// stops the run before anything boots.
pub fn resolve_all(
    specs: &[KernelSpec],
    cache: &Cache,
    ui: &Ui,
) -> std::result::Result<Vec<Resolution>, kernel::KernelError> {
    let mut out = Vec::new();
    for spec in specs {
        let start = Instant::now();
        let progress = |msg: &str| ui.println(&format!("[{spec}] {msg}"));
        match kernel::resolve(spec, cache, &progress) {
            Ok(k) => out.push((
                spec.to_string(),
                Ok((k, start.elapsed().as_millis() as u64)),
            )),
            Err(e) if e.is_user_error() => return Err(e),
            Err(e) => out.push((spec.to_string(), Err(format!("{e}")))),
        }
    }
    Ok(out)
}

/// Temporary folders are named for the natvet process that owns them, so a
/// later run can tell which ones a killed run left behind.
fn work_prefix() -> String {
    format!("natvet-{}-", std::process::id())
}

/// Remove temporary folders of natvet processes that no longer exist (a run
/// killed with SIGKILL cannot clean up after itself).
pub fn remove_stale_work_dirs() -> usize {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("natvet-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if !alive && e.path().is_dir() && std::fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// Run every resolved kernel, `opts.jobs` at a time.
pub fn run(opts: &VetOptions, resolved: Vec<Resolution>, ui: &Ui) -> RunReport {
    let started = chrono::Utc::now();
    let start = Instant::now();
    let stale = remove_stale_work_dirs();
    if stale > 0 {
        ui.println(&format!(
            "removed {stale} temporary folder(s) left by killed natvet runs"
        ));
    }
    // Two kernels of one release (a build and its patched twin) need names of their own.
    let names: Vec<Option<String>> = resolved
        .iter()
        .map(|(_, r)| r.as_ref().ok().and_then(|(k, _)| k.release.clone()))
        .collect();
    let ids: Vec<Option<String>> = names
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let n = n.as_ref()?;
            (names.iter().filter(|m| m.as_ref() == Some(n)).count() > 1)
                .then(|| format!("{n} [{}]", i + 1))
        })
        .collect();
    // Kernels start in the order given.
    let queue = Mutex::new(resolved.into_iter().enumerate().rev().collect::<Vec<_>>());
    let results: Mutex<Vec<(usize, KernelRun)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..opts.jobs.max(1) {
            s.spawn(|| loop {
                let next = queue.lock().ok().and_then(|mut q| q.pop());
                let Some((i, (spec, resolved))) = next else {
                    break;
                };
                if launcher::cancelled() {
                    let why = "natvet was interrupted before this kernel ran".to_string();
                    let run = infra_run(&spec, None, InfraStage::Interrupted, why, vec![]);
                    if let Ok(mut r) = results.lock() {
                        r.push((i, run));
                    }
                    continue;
                }
                let run = match resolved {
                    Ok((kernel, resolve_ms)) => {
                        let first = vet_kernel(opts, &kernel, ids[i].as_deref(), resolve_ms, ui);
                        match retry_reason(&first) {
                            Some(why) if !launcher::cancelled() => {
                                ui.println(&format!("[{}] {why}; retrying once", first.label()));
                                merge_retry(
                                    first,
                                    vet_kernel(opts, &kernel, ids[i].as_deref(), resolve_ms, ui),
                                )
                            }
                            _ => first,
                        }
                    }
                    Err(reason) => infra_run(&spec, None, InfraStage::Fetch, reason, vec![]),
                };
                if let Ok(mut r) = results.lock() {
                    r.push((i, run));
                }
            });
        }
    });
    let mut runs = results.into_inner().unwrap_or_default();
    runs.sort_by_key(|(i, _)| *i);
    RunReport {
        schema: report::SCHEMA.into(),
        natvet_version: env!("CARGO_PKG_VERSION").into(),
        started_at: started.to_rfc3339(),
        elapsed_ms: start.elapsed().as_millis() as u64,
        kernels: runs.into_iter().map(|(_, r)| r).collect(),
        gate: None,
    }
}

/// Why a kernel's run deserves a second try: a harness error (qemu died,
/// timeout, agent or protocol error) and no sign that the kernel itself is at
/// fault. A failed check, a kernel panic, or an oops/WARN/lockup on the
/// console is evidence about the kernel and is never retried away;
/// deterministic setup errors are not retried either.
fn retry_reason(run: &KernelRun) -> Option<String> {
    let kernel_trouble = run.notes.iter().any(|n| n.starts_with(CONSOLE_ALARM));
    if kernel_trouble || run.results.iter().any(|r| r.status == Status::Fail) {
        return None;
    }
    match &run.state {
        KernelState::InfraError {
            stage:
                InfraStage::Initramfs
                | InfraStage::Output
                | InfraStage::Interrupted
                | InfraStage::Fetch
                | InfraStage::KernelPanic
                | InfraStage::QemuKilled,
            ..
        } => None,
        KernelState::InfraError { stage, reason, .. } => Some(format!("{stage} error: {reason}")),
        KernelState::Completed => run
            .results
            .iter()
            .find(|r| r.status == Status::Error)
            .map(|r| format!("{} could not run: {}", r.check, r.observed)),
    }
}

/// The second attempt's results, with every check that passed only then marked
/// flaky, and the first attempt's trouble kept as a note.
fn merge_retry(first: KernelRun, mut second: KernelRun) -> KernelRun {
    let first_trouble = retry_reason(&first).unwrap_or_default();
    if second.state == KernelState::Completed {
        for r in &mut second.results {
            let passed_first = first.results.iter().any(|f| {
                f.scenario == r.scenario
                    && f.backend == r.backend
                    && f.check == r.check
                    && f.status == Status::Pass
            });
            if r.status == Status::Pass && !passed_first {
                r.status = Status::Flaky;
            }
        }
    }
    second.notes.insert(
        0,
        format!("attempt 1 of 2 ended in a harness error: {first_trouble}"),
    );
    second.attempts = 2;
    second
}

fn infra_run(
    spec: &str,
    kernel: Option<&Kernel>,
    stage: InfraStage,
    reason: String,
    tail: Vec<String>,
) -> KernelRun {
    KernelRun {
        spec: spec.to_string(),
        release: kernel.and_then(|k| k.release.clone()),
        id: None,
        package: kernel.and_then(|k| k.package.clone()),
        boot: None,
        state: KernelState::InfraError {
            stage,
            reason,
            console_tail: tail,
        },
        results: vec![],
        notes: vec![],
        attempts: 1,
        timings: Timings::default(),
        console_log: None,
    }
}

/// The host binaries the guest needs for these scenarios.
fn guest_tools(scenarios: &[Scenario]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut bins: Vec<PathBuf> = vec![CONNTRACK.into()];
    let mut dirs = Vec::new();
    for kind in scenarios.iter().flat_map(|s| s.backends.iter()) {
        for t in kind.backend().tools() {
            let t = PathBuf::from(t);
            if !bins.contains(&t) {
                bins.push(t);
            }
        }
        if *kind != BackendKind::Nftables && !dirs.contains(&PathBuf::from(XTABLES_DIR)) {
            dirs.push(XTABLES_DIR.into());
        }
    }
    (bins, dirs)
}

/// Check that the host has every tool the guest needs, before any VM boots.
pub fn check_host(scenarios: &[Scenario]) -> Result<()> {
    if !qemu::available() {
        bail!(
            "{} is not installed: run `apt-get install -y qemu-system-x86` (or `make deps`)",
            qemu::QEMU
        );
    }
    let (bins, dirs) = guest_tools(scenarios);
    let missing: Vec<String> = bins
        .iter()
        .chain(dirs.iter())
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the guest needs these host tools, which are missing: {}; run `apt-get install -y nftables iptables conntrack` (or `make deps`)",
            missing.join(", ")
        );
    }
    let exe = launcher::own_binary();
    let bytes = std::fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
    if !crate::elfdeps::is_static_elf(&bytes) {
        bail!(
            "{} is not a statically linked ELF, but it must run as the guest's PID 1 without a libc: build it with the repository's .cargo/config.toml (static, target x86_64-unknown-linux-gnu)",
            exe.display()
        );
    }
    Ok(())
}

/// One kernel's run, in four steps: `launch` (its output folder, then the
/// agent's job or the initramfs, and how to start it), `collect` (the guest's
/// messages until the run ends), `judge` (what the end and the reports add up
/// to) and `finish` (results in the job's order, evidence, the progress line).
fn vet_kernel(
    opts: &VetOptions,
    kernel: &Kernel,
    id: Option<&str>,
    resolve_ms: u64,
    ui: &Ui,
) -> KernelRun {
    let total = Instant::now();
    let label = id
        .map(str::to_string)
        .or_else(|| kernel.release.clone())
        .unwrap_or_else(|| kernel.spec.clone());
    let expected = expected_results(&opts.scenarios);
    let mut progress = ui.kernel(&label, expected.len());
    let launched = match launch(opts, kernel, &label, &progress) {
        Ok(l) => l,
        Err((stage, reason)) => {
            return infra_run(&kernel.spec, Some(kernel), stage, reason, vec![])
        }
    };
    let mut collected = Collected::new(kernel);
    let outcome = collect(&launched, &mut collected, id, &mut progress);
    let run = judge(
        opts, kernel, id, resolve_ms, &launched, collected, outcome, &expected,
    );
    finish(opts, run, &expected, total, &progress)
}

/// (scenario, backend, check) of every result the job must produce, in the job's order.
fn expected_results(scenarios: &[Scenario]) -> Vec<(String, String, String)> {
    scenarios
        .iter()
        .flat_map(|s| {
            s.backends.iter().flat_map(move |b| {
                s.result_names()
                    .into_iter()
                    .map(move |c| (s.name.clone(), b.to_string(), c))
            })
        })
        .collect()
}

/// How one kernel runs: booted in qemu, or the host's own (`natvet verify`).
enum Launch {
    Vm(VmConfig),
    Host {
        job: PathBuf,
        watch: launcher::Watch,
    },
}

/// A kernel ready to start: how, and what it took to get there.
struct Launched {
    launch: Launch,
    /// Holds the initramfs or the agent's job until the run ends.
    _work: tempfile::TempDir,
    console_log: PathBuf,
    initramfs_ms: u64,
    initramfs_bytes: u64,
}

/// Step 1: the kernel's output folder, a temporary folder, and the agent's
/// job (on the host) or the initramfs (in a VM). Failing here is natvet's own
/// trouble: the stage and why.
fn launch(
    opts: &VetOptions,
    kernel: &Kernel,
    label: &str,
    progress: &KernelProgress,
) -> std::result::Result<Launched, (InfraStage, String)> {
    let kdir = opts.out_dir.join(report::sanitize(label));
    if let Err(e) = std::fs::create_dir_all(&kdir) {
        return Err((
            InfraStage::Output,
            format!("cannot create {}: {e}", kdir.display()),
        ));
    }
    let work = match tempfile::Builder::new().prefix(&work_prefix()).tempdir() {
        Ok(w) => w,
        Err(e) => {
            return Err((
                InfraStage::Output,
                format!("cannot create a temporary folder: {e}"),
            ))
        }
    };

    let console_log = kdir.join("console.log");
    let mut initramfs_ms = 0;
    let mut initramfs_bytes = 0;
    let launch = if kernel.boot_kind == kernel::BootKind::Running {
        progress.stage("starting the agent");
        let job = work.path().join("job.json");
        if let Err(e) = serde_json::to_vec(&make_job(opts, vec![]))
            .map_err(anyhow::Error::from)
            .and_then(|bytes| Ok(std::fs::write(&job, bytes)?))
        {
            return Err((
                InfraStage::Output,
                format!("cannot write the agent's job {}: {e:#}", job.display()),
            ));
        }
        Launch::Host {
            job,
            watch: launcher::Watch {
                program: "the agent",
                timeout: opts.timeout,
                stall_timeout: opts.check_timeout,
                boot_timeout: opts.check_timeout.min(opts.timeout),
                console_log: console_log.clone(),
            },
        }
    } else {
        progress.stage("building initramfs");
        let initrd = work.path().join("initramfs.cpio");
        let t = Instant::now();
        match build_initramfs(opts, kernel, &initrd) {
            Ok(stats) => initramfs_bytes = stats.bytes,
            Err(e) => return Err((InfraStage::Initramfs, format!("{e:#}"))),
        };
        initramfs_ms = t.elapsed().as_millis() as u64;
        progress.stage("booting");
        Launch::Vm(VmConfig {
            kernel: match (opts.boot, &kernel.bzimage) {
                (BootPreference::BzImage, Some(bz)) => bz.clone(),
                _ => kernel.boot_image.clone(),
            },
            initrd,
            memory_mb: opts.memory_mb,
            cpus: opts.cpus,
            cmdline_extra: opts.cmdline_extra.clone(),
            timeout: opts.timeout,
            stall_timeout: opts.check_timeout,
            boot_timeout: opts.check_timeout.min(opts.timeout),
            console_log: console_log.clone(),
        })
    };
    Ok(Launched {
        launch,
        _work: work,
        console_log,
        initramfs_ms,
        initramfs_bytes,
    })
}

/// What the guest reported over its run.
struct Collected {
    results: Vec<CheckResult>,
    notes: Vec<String>,
    release: Option<String>,
    uptime: Option<u64>,
    fatal: Option<String>,
    /// Checks started and not yet reported (several, when scenario runs overlap).
    running: Vec<String>,
    agent_ms: Option<u64>,
    scenario_runs: Vec<RunTiming>,
}

impl Collected {
    fn new(kernel: &Kernel) -> Collected {
        Collected {
            results: Vec::new(),
            notes: Vec::new(),
            release: kernel.release.clone(),
            uptime: None,
            fatal: None,
            running: Vec::new(),
            agent_ms: None,
            scenario_runs: Vec::new(),
        }
    }

    fn on_message(&mut self, msg: &GuestMessage, id: Option<&str>, progress: &mut KernelProgress) {
        match msg {
            GuestMessage::Hello {
                kernel_release,
                uptime_ms,
                ..
            } => {
                self.release = Some(kernel_release.clone());
                self.uptime = Some(*uptime_ms);
                if id.is_none() {
                    progress.rename(kernel_release);
                }
                progress.stage("running checks");
            }
            GuestMessage::Note { message } => self.notes.push(message.clone()),
            GuestMessage::CheckStarted {
                scenario,
                backend,
                check,
            } => {
                self.running.push(format!("{scenario} [{backend}] {check}"));
                progress.check_started(check);
            }
            GuestMessage::Check(r) => {
                let name = format!("{} [{}] {}", r.scenario, r.backend, r.check);
                self.running.retain(|c| *c != name);
                progress.check_done(r);
                self.results.push((**r).clone());
            }
            GuestMessage::RunDone(t) => self.scenario_runs.push(t.clone()),
            GuestMessage::Done { elapsed_ms } => self.agent_ms = Some(*elapsed_ms),
            GuestMessage::Fatal { error } => self.fatal = Some(error.clone()),
        }
    }
}

/// Step 2: start the kernel and take in its messages until the run ends.
fn collect(
    launched: &Launched,
    collected: &mut Collected,
    id: Option<&str>,
    progress: &mut KernelProgress,
) -> std::result::Result<Outcome, String> {
    let mut on_message = |msg: &GuestMessage| collected.on_message(msg, id, progress);
    match &launched.launch {
        Launch::Vm(cfg) => qemu::run(cfg, &mut on_message).map_err(|e| e.to_string()),
        Launch::Host { job, watch } => {
            launcher::run_agent(job, watch, &mut on_message).map_err(|e| e.to_string())
        }
    }
}

/// Step 3: the kernel's run as the guest reported it, and whether natvet
/// could test it: how the run ended, whether the agent gave up, and whether
/// every expected result came.
#[allow(clippy::too_many_arguments)]
fn judge(
    opts: &VetOptions,
    kernel: &Kernel,
    id: Option<&str>,
    resolve_ms: u64,
    launched: &Launched,
    collected: Collected,
    outcome: std::result::Result<Outcome, String>,
    expected: &[(String, String, String)],
) -> KernelRun {
    let mut run = KernelRun {
        spec: kernel.spec.clone(),
        release: collected.release,
        id: id.map(str::to_string),
        package: kernel.package.clone(),
        boot: Some(match (opts.boot, &kernel.bzimage) {
            (BootPreference::BzImage, Some(_)) => "bzimage".to_string(),
            _ => format!("{:?}", kernel.boot_kind).to_lowercase(),
        }),
        state: KernelState::Completed,
        results: collected.results,
        notes: collected.notes,
        attempts: 1,
        timings: Timings {
            resolve_ms,
            initramfs_ms: launched.initramfs_ms,
            initramfs_bytes: launched.initramfs_bytes,
            guest_uptime_ms: collected.uptime,
            agent_ms: collected.agent_ms,
            scenario_runs: collected.scenario_runs,
            ..Timings::default()
        },
        console_log: Some(launched.console_log.display().to_string()),
    };
    let o = match outcome {
        Err(e) => {
            run.state = KernelState::InfraError {
                stage: InfraStage::Qemu,
                reason: e,
                console_tail: vec![],
            };
            return run;
        }
        Ok(o) => o,
    };
    run.timings.boot_ms = o.boot.map(|d| d.as_millis() as u64);
    run.timings.vm_ms = o.wall.as_millis() as u64;
    run.timings.peak_rss_mb = o.peak_rss_kb.map(|k| k / 1024);
    for a in &o.alarms {
        run.notes.push(format!("{CONSOLE_ALARM}{a}"));
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|(s, b, c)| {
            !run.results
                .iter()
                .any(|r| &r.scenario == s && &r.backend == b && &r.check == c)
        })
        .map(|(s, b, c)| format!("{s} [{b}] {c}"))
        .collect();
    if let Some((stage, reason)) = breakdown(&o.end, collected.fatal.as_deref(), &collected.running)
    {
        run.state = KernelState::InfraError {
            stage,
            reason,
            console_tail: o.console_tail,
        };
    } else if !missing.is_empty() {
        run.state = KernelState::InfraError {
            stage: InfraStage::Protocol,
            reason: format!(
                "the guest finished without reporting: {}",
                missing.join(", ")
            ),
            console_tail: o.console_tail,
        };
    }
    run
}

/// Where and why a run broke down, if it did: the agent giving up outranks
/// how the child ended. `running` names the checks under way at the end.
fn breakdown(end: &End, fatal: Option<&str>, running: &[String]) -> Option<(InfraStage, String)> {
    let during = if running.is_empty() {
        String::new()
    } else {
        format!(" while running {}", running.join(", "))
    };
    match (end, fatal) {
        (_, Some(err)) => Some((InfraStage::Agent, format!("the guest agent gave up{during}: {err}"))),
        (End::Completed, None) => None,
        (End::Panic(line), None) => Some((InfraStage::KernelPanic, format!("the kernel panicked{during}: {line}"))),
        (End::NoAgent(t), None) => Some((
            InfraStage::Boot,
            format!(
                "the kernel did not start natvet's agent within {} s (no message on the results port)",
                t.as_secs()
            ),
        )),
        (End::Stalled(t), None) => Some((
            InfraStage::CheckTimeout,
            format!(
                "the guest sent nothing for {} s{during}; raise --check-timeout if the kernel is just slow",
                t.as_secs()
            ),
        )),
        (End::Timeout(t), None) => Some((InfraStage::Timeout, format!("the VM did not finish within {} s{during}; raise --timeout if the kernel is just slow", t.as_secs()))),
        (End::Killed(sig), None) => Some((
            InfraStage::QemuKilled,
            format!("qemu was killed by signal {sig} from outside natvet{during}"),
        )),
        (End::Died(why), None) if launcher::cancelled() => {
            Some((InfraStage::Interrupted, format!("{why}{during}")))
        }
        (End::Died(why), None) => Some((InfraStage::Qemu, format!("{why}{during}"))),
        (End::Protocol(why), None) => Some((InfraStage::Protocol, why.clone())),
    }
}

/// Step 4: results back in the job's order (overlapping scenario runs report
/// in any order), the total time, evidence files, and the progress line.
fn finish(
    opts: &VetOptions,
    mut run: KernelRun,
    expected: &[(String, String, String)],
    total: Instant,
    progress: &KernelProgress,
) -> KernelRun {
    let rank = |r: &CheckResult| {
        expected
            .iter()
            .position(|(s, b, c)| *s == r.scenario && *b == r.backend && *c == r.check)
            .unwrap_or(usize::MAX)
    };
    run.results.sort_by_key(rank);
    run.timings.total_ms = total.elapsed().as_millis() as u64;
    if let Err(e) = write_evidence(&opts.out_dir, &mut run) {
        run.notes.push(format!("could not write evidence: {e:#}"));
    }
    let failed = run
        .results
        .iter()
        .filter(|r| r.status == Status::Fail)
        .count();
    progress.finish(&match &run.state {
        KernelState::Completed => format!(
            "{} checks, {failed} failed, {:.1} s (boot {:.1} s)",
            run.results.len(),
            run.timings.total_ms as f64 / 1000.0,
            run.timings.boot_ms.unwrap_or(0) as f64 / 1000.0
        ),
        KernelState::InfraError { stage, .. } => format!("not tested: {stage} error"),
    });
    run
}

fn make_job(opts: &VetOptions, preload_modules: Vec<String>) -> Job {
    Job {
        version: PROTOCOL_VERSION,
        scenarios: opts.scenarios.clone(),
        preload_modules,
        evidence_always: opts.evidence_always,
        capture: opts.capture,
        parallel: opts.parallel,
    }
}

fn build_initramfs(
    opts: &VetOptions,
    kernel: &Kernel,
    out: &Path,
) -> Result<crate::initramfs::InitramfsStats> {
    let exe = launcher::own_binary();
    // Preload what this kernel has as modules; names it builds in or lacks are left
    // to the kernel (a lacking feature then shows up as "unsupported").
    let preload: Vec<String> = match &kernel.modules_dir {
        Some(dir) => {
            let index = ModuleIndex::load(dir)
                .with_context(|| format!("reading the module index in {}", dir.display()))?;
            PRELOAD_MODULES
                .iter()
                .filter(|m| matches!(index.resolve(m), Resolved::Module(_)))
                .map(|m| m.to_string())
                .collect()
        }
        None => vec![],
    };
    let job = make_job(opts, preload.clone());
    let (host_binaries, host_dirs) = guest_tools(&opts.scenarios);
    let modules = match (&kernel.modules_dir, &kernel.release) {
        (Some(dir), Some(release)) => Some(ModulesSpec {
            dir: dir.clone(),
            release: release.clone(),
            wanted: preload,
            include_dirs: MODULE_DIRS.iter().map(|s| s.to_string()).collect(),
        }),
        (Some(dir), None) => bail!(
            "modules in {} but the kernel's release is unknown: natvet cannot tell where the guest will look for them",
            dir.display()
        ),
        _ => None,
    };
    let spec = InitramfsSpec {
        agent: &exe,
        files: vec![(JOB_PATH.to_string(), serde_json::to_vec(&job)?)],
        modules,
        host_binaries,
        host_dirs,
    };
    Ok(crate::initramfs::build(&spec, out)?)
}

/// Write each failing (or, on request, every) check's evidence as files.
fn write_evidence(out_dir: &Path, run: &mut KernelRun) -> Result<()> {
    let paths: Vec<Option<String>> = run
        .results
        .iter()
        .map(|r| r.evidence.as_ref().map(|_| report::evidence_path(run, r)))
        .collect();
    for (r, path) in run.results.iter_mut().zip(paths) {
        let (Some(ev), Some(path)) = (&r.evidence, path) else {
            continue;
        };
        let dir = out_dir.join(path);
        r.evidence_dir = Some(dir.display().to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let files = [
            (
                "result.txt",
                format!(
                    "status: {}\nexpected: {}\nobserved: {}\n",
                    r.status.label(),
                    r.expected,
                    r.observed
                ),
            ),
            ("conntrack.txt", ev.conntrack.clone()),
            ("ruleset.txt", ev.ruleset.clone()),
            ("counters.txt", ev.counters.clone()),
            ("routes.txt", ev.routes.clone()),
            ("wireguard.txt", ev.wireguard.clone()),
            ("dmesg.txt", ev.dmesg.join("\n")),
            ("captures.txt", ev.capture_note.clone()),
        ];
        for (name, text) in files {
            std::fs::write(dir.join(name), text)
                .with_context(|| format!("writing {}", dir.join(name).display()))?;
        }
        for c in &ev.captures {
            let name = format!(
                "{}-{}.pcap",
                report::sanitize(&c.namespace),
                report::sanitize(&c.interface)
            );
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(&c.pcap_base64)
                .with_context(|| format!("decoding the capture {name} from the guest"))?;
            std::fs::write(dir.join(&name), bytes)
                .with_context(|| format!("writing {}", dir.join(&name).display()))?;
        }
    }
    Ok(())
}
