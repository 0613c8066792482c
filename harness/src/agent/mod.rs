//! The agent: natvet as the guest's PID 1 (it mounts what a tiny system needs,
//! loads modules, and ends the VM when done), or as a child of `natvet verify`
//! on the host's running kernel. Either way it builds each scenario's topology
//! in namespaces of its own, runs the checks and reports every result as a
//! typed message on its results channel (the guest's second serial port, or a
//! socket inherited from natvet on the host).

pub mod capture;
pub mod channel;
pub mod clients;
pub mod kmsg;
pub mod netlink;
pub mod netns;
pub mod probes;
pub mod topology;
pub mod wireguard;

use std::fs::{File, OpenOptions};
use std::path::Path;
use std::time::Instant;

use anyhow::{Context as _, Result};
use nix::mount::{mount, MsFlags};

use crate::checks::context::Context;
use crate::checks::Phase;
use crate::nat::NatBackend;
use crate::perf::PerfSpec;
use crate::protocol::job::{Job, PerfMode, JOB_PATH};
use crate::protocol::perf::PerfFigure;
use crate::protocol::{
    CheckResult, GuestMessage, GuestResult, RunTiming, Status, PROTOCOL_VERSION, RESULTS_TTY,
};
use crate::scenario::Scenario;
use channel::send;
use topology::Tunnel;

/// PID 1's entry point: never returns, the VM ends.
pub fn main_pid1() -> ! {
    let start = Instant::now();
    std::panic::set_hook(Box::new(|info| {
        send(&GuestMessage::Fatal {
            error: format!("the agent panicked: {info}"),
        });
    }));
    let outcome = std::panic::catch_unwind(|| run(start));
    match outcome {
        Ok(Ok(())) => send(&GuestMessage::Done {
            elapsed_ms: start.elapsed().as_millis() as u64,
        }),
        Ok(Err(e)) => send(&GuestMessage::Fatal {
            error: format!("{e:#}"),
        }),
        Err(_) => {} // the hook has reported it
    }
    power_off()
}

fn power_off() -> ! {
    nix::unistd::sync();
    // With qemu's -no-reboot, a reboot request ends qemu on every kernel.
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // Only reached if reboot was refused: exiting PID 1 panics the kernel (panic=-1 ends qemu).
    std::process::exit(1)
}

fn mount_basics() -> Result<()> {
    let mounts: [(&str, &str, &str); 5] = [
        ("devtmpfs", "/dev", "devtmpfs"),
        ("proc", "/proc", "proc"),
        ("sysfs", "/sys", "sysfs"),
        ("tmpfs", "/run", "tmpfs"),
        ("tmpfs", "/tmp", "tmpfs"),
    ];
    for (src, target, fstype) in mounts {
        std::fs::create_dir_all(target).ok();
        match mount(
            Some(src),
            target,
            Some(fstype),
            MsFlags::empty(),
            None::<&str>,
        ) {
            Ok(()) => {}
            // devtmpfs may already be mounted by the kernel.
            Err(nix::errno::Errno::EBUSY) => {}
            Err(e) => return Err(e).with_context(|| format!("mounting {fstype} on {target}")),
        }
    }
    Ok(())
}

fn open_results_port() -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(RESULTS_TTY)
        .with_context(|| format!("opening the results port {RESULTS_TTY}"))?;
    // Raw mode: no newline translation, no echo.
    let mut tio = nix::sys::termios::tcgetattr(&file).context("reading tty attributes")?;
    nix::sys::termios::cfmakeraw(&mut tio);
    nix::sys::termios::tcsetattr(&file, nix::sys::termios::SetArg::TCSANOW, &tio)
        .context("setting the results port raw")?;
    Ok(file)
}

fn uptime_ms() -> u64 {
    std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .map(|s| (s * 1000.0) as u64)
        .unwrap_or(0)
}

fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn hello(release: &str) {
    send(&GuestMessage::Hello {
        version: PROTOCOL_VERSION,
        kernel_release: release.to_string(),
        uptime_ms: uptime_ms(),
    });
}

fn read_job(path: &Path) -> Result<Job> {
    serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading the job {}", path.display()))?,
    )
    .context("parsing the job")
}

/// `natvet agent` on the host (started by `natvet verify`): the same checks on
/// the running kernel, in namespaces that exist only as long as this process
/// does. Results go to the inherited descriptor `results_fd`.
pub fn main_host(job: &Path, results_fd: i32) -> i32 {
    let start = Instant::now();
    // SAFETY: natvet passed this descriptor to us for exactly this use, and
    // nothing else in this process owns it.
    let file = unsafe { <File as std::os::fd::FromRawFd>::from_raw_fd(results_fd) };
    channel::install(file);
    std::panic::set_hook(Box::new(|info| {
        send(&GuestMessage::Fatal {
            error: format!("the agent panicked: {info}"),
        });
    }));
    let outcome = std::panic::catch_unwind(|| -> Result<()> {
        hello(&kernel_release());
        let job = read_job(job)?;
        run_job(&job, KernelWide::Leave);
        Ok(())
    });
    match outcome {
        Ok(Ok(())) => {
            send(&GuestMessage::Done {
                elapsed_ms: start.elapsed().as_millis() as u64,
            });
            0
        }
        Ok(Err(e)) => {
            send(&GuestMessage::Fatal {
                error: format!("{e:#}"),
            });
            1
        }
        Err(_) => 1,
    }
}

fn run(start: Instant) -> Result<()> {
    mount_basics()?;
    let port = open_results_port()?;
    channel::install(port);
    let release = kernel_release();
    hello(&release);
    let job = read_job(&Path::new("/").join(JOB_PATH))?;

    let modules_dir = Path::new("/lib/modules").join(&release);
    if modules_dir.join("modules.dep").exists() {
        // The kernel asks /sbin/modprobe (natvet again) for anything else on demand.
        std::fs::write("/proc/sys/kernel/modprobe", "/sbin/modprobe\n").ok();
        let names: Vec<&str> = job.preload_modules.iter().map(|s| s.as_str()).collect();
        let report =
            crate::modules::load_modules(&modules_dir, &names).context("loading kernel modules")?;
        let mut note = format!(
            "modules: {} loaded, {} already present",
            report.loaded.len(),
            report.already.len()
        );
        if !report.failed.is_empty() {
            note.push_str(&format!(", failed: {:?}", report.failed));
        }
        send(&GuestMessage::Note { message: note });
    } else {
        send(&GuestMessage::Note {
            message: "no module tree: the kernel is expected to have everything built in".into(),
        });
    }

    run_job(&job, KernelWide::Set);
    send(&GuestMessage::Note {
        message: format!("agent finished in {} ms", start.elapsed().as_millis()),
    });
    Ok(())
}

/// Overlapping scenario runs hold many sockets at once (reload-under-traffic
/// opens a new flow every 10 ms): lift the open-file limit from the 1024
/// that PID 1 starts with, as far as the kernel lets us.
fn raise_open_file_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    const WANT: u64 = 65536;
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        // Raising the hard limit needs privilege; without, the soft one goes to it.
        if setrlimit(Resource::RLIMIT_NOFILE, WANT.max(soft), WANT.max(hard)).is_err() {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard.max(soft), hard);
        }
    }
}

/// Every (scenario, backend) run of the job, `job.parallel` at a time. Each
/// builds its own namespaces, so runs cannot see each other's links, rules
/// or conntrack entries; results carry their scenario and backend, and the
/// host puts them back in order.
fn run_job(job: &Job, kernel_wide: KernelWide) {
    crate::checks::patience::PATIENCE.set(job.waits);
    raise_open_file_limit();
    let refused = kernel_settings(job, kernel_wide);
    let runs: Vec<(&Scenario, crate::nat::BackendKind)> = job
        .scenarios
        .iter()
        .flat_map(|s| s.backends.iter().map(move |b| (s, *b)))
        .collect();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let worker = || loop {
        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let Some((scenario, kind)) = runs.get(i) else {
            break;
        };
        let start = Instant::now();
        let backend = kind.backend();
        let setup_ms = match refused.iter().find(|(name, _)| *name == scenario.name) {
            Some((_, why)) => {
                settle(
                    scenario,
                    backend.as_ref(),
                    scenario.result_names(),
                    Status::Unsupported,
                    why,
                );
                0
            }
            None => run_scenario(scenario, backend.as_ref(), job),
        };
        send(&GuestMessage::RunDone(RunTiming {
            scenario: scenario.name.clone(),
            backend: kind.to_string(),
            setup_ms,
            elapsed_ms: start.elapsed().as_millis() as u64,
        }));
    };
    if job.perf != PerfMode::Only {
        std::thread::scope(|s| {
            for _ in 1..job.parallel.clamp(1, runs.len().max(1)) {
                s.spawn(worker);
            }
            worker();
        });
    }
    if job.perf == PerfMode::Skip {
        return;
    }
    // Performance probes one run at a time, after every check: nothing
    // else shares the guest's CPU while they measure.
    for (scenario, kind) in &runs {
        let Some(perf) = &scenario.perf else {
            continue;
        };
        let backend = kind.backend();
        match refused.iter().find(|(name, _)| *name == scenario.name) {
            Some((_, why)) => settle_perf(scenario, backend.as_ref(), why),
            None => run_perf(scenario, perf, backend.as_ref(), job),
        }
    }
}

/// One scenario's performance probes with one backend, in a topology of
/// their own.
fn run_perf(scenario: &Scenario, perf: &PerfSpec, backend: &dyn NatBackend, job: &Job) {
    let mut kmsg = kmsg::Kmsg::open();
    let topo = match set_up(scenario, backend, &mut kmsg) {
        Ok(topo) => topo,
        Err(
            SetupFailure::Unsupported(why)
            | SetupFailure::Failed(why)
            | SetupFailure::Rejected(why),
        ) => {
            return settle_perf(scenario, backend, &why);
        }
    };
    let mut ctx = Context::new(topo, backend, kmsg, job.evidence_always, job.capture);
    ctx.rules = scenario.nat_rules(crate::scenario::topology::RELAY);
    let not_up = match ctx.topo.start_tunnel() {
        Ok(Tunnel::WireGuard { .. }) => None,
        Ok(Tunnel::StandIn { why }) => Some(format!(
            "{why}: the probes measure WireGuard, so there is nothing to measure"
        )),
        Err(e) => Some(format!("bringing up the tunnel failed: {e:#}")),
    };
    match not_up {
        None => {
            let mut emit = |f: PerfFigure| send(&GuestMessage::Perf(Box::new(f)));
            perf.run(&mut ctx, &scenario.setup(), &scenario.name, &mut emit);
        }
        Some(why) => settle_perf(scenario, backend, &why),
    }
    ctx.topo.stop();
}

/// Report every figure of `scenario` as not measured, with why.
fn settle_perf(scenario: &Scenario, backend: &dyn NatBackend, why: &str) {
    let Some(perf) = &scenario.perf else {
        return;
    };
    for f in perf.figures(&scenario.setup()) {
        send(&GuestMessage::Perf(Box::new(PerfFigure {
            scenario: scenario.name.clone(),
            backend: backend.kind().to_string(),
            probe: f.probe,
            unit: f.unit.to_string(),
            better: f.better,
            value: None,
            samples: vec![],
            note: why.to_string(),
        })));
    }
}

/// What the agent may do with the kernel's own (not a namespace's) settings.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KernelWide {
    /// In natvet's own guest: set what the scenarios ask for.
    Set,
    /// On a live host (`natvet verify`): never change them.
    Leave,
}

/// Apply (or, on a live host, only compare) every scenario's kernel-wide
/// sysctls; the scenarios that cannot run, with why.
fn kernel_settings(job: &Job, kernel_wide: KernelWide) -> Vec<(String, String)> {
    let mut refused = Vec::new();
    for s in &job.scenarios {
        for (key, value) in &s.kernel.sysctls {
            let path = crate::scenario::topology::sysctl_path(key);
            let now = std::fs::read_to_string(&path).map(|v| v.trim().to_string());
            let why = match (&now, kernel_wide) {
                (Ok(v), _) if *v == value.0 => None,
                (Err(e), _) => Some(format!(
                    "the scenario needs the kernel-wide sysctl {key} = {}, which this kernel does not have ({e})",
                    value.0
                )),
                (Ok(v), KernelWide::Leave) => Some(format!(
                    "the scenario needs the kernel-wide sysctl {key} = {} (it is {v} here), and natvet verify does not change a live host's kernel-wide settings",
                    value.0
                )),
                (Ok(_), KernelWide::Set) => std::fs::write(&path, &value.0).err().map(|e| {
                    format!("setting the kernel-wide sysctl {key} = {} failed: {e}", value.0)
                }),
            };
            if let Some(why) = why {
                refused.push((s.name.clone(), why));
                break;
            }
        }
    }
    refused
}

/// Why a run's setup did not finish, as its checks will be reported.
enum SetupFailure {
    /// The kernel (or the host's tools) lacks what the setup needs.
    Unsupported(String),
    /// The setup went wrong: natvet could not run the checks.
    Failed(String),
    /// The kernel refused the relay's own ruleset: every check fails, since
    /// that deploy would leave the relay without its rules.
    Rejected(String),
}

/// The topology of `scenario` with `backend`'s NAT rules applied. Whether a
/// failure means "the kernel lacks this" comes from the error's kind (its
/// errno, or the backend's capability probe), never from its text.
fn set_up(
    scenario: &Scenario,
    backend: &dyn NatBackend,
    kmsg: &mut kmsg::Kmsg,
) -> Result<topology::Topology, SetupFailure> {
    let setup = scenario.setup();
    let topo = topology::Topology::build(&setup).map_err(|e| {
        let why = format!(
            "building the topology failed: {e:#}\n{}",
            kmsg.drain().join("\n")
        );
        if topology::kernel_lacks(&e) {
            SetupFailure::Unsupported(why)
        } else {
            SetupFailure::Failed(why)
        }
    })?;
    match topo.apply_nat(backend, &setup) {
        Ok(Ok(())) => Ok(topo),
        Ok(Err(reason)) => {
            topo.stop();
            Err(SetupFailure::Unsupported(reason))
        }
        Err(e) => {
            topo.stop();
            match e.downcast_ref::<topology::RulesetRejected>() {
                Some(rejected) => Err(SetupFailure::Rejected(rejected.to_string())),
                None => Err(SetupFailure::Failed(format!("{e:#}"))),
            }
        }
    }
}

/// One scenario with one backend. Setup failures become results for every
/// check (error, or unsupported when the kernel lacks the backend), so the
/// host always learns the fate of each check by name. Returns the time the
/// setup (topology and NAT rules) took, in ms.
fn run_scenario(scenario: &Scenario, backend: &dyn NatBackend, job: &Job) -> u64 {
    let start = Instant::now();
    let mut kmsg = kmsg::Kmsg::open();
    let topo = match set_up(scenario, backend, &mut kmsg) {
        Ok(topo) => topo,
        Err(failure) => {
            let (status, why) = match failure {
                SetupFailure::Unsupported(why) => (Status::Unsupported, why),
                SetupFailure::Failed(why) => (Status::Error, why),
                SetupFailure::Rejected(why) => (Status::Fail, why),
            };
            settle(scenario, backend, scenario.result_names(), status, &why);
            return start.elapsed().as_millis() as u64;
        }
    };
    let setup_ms = start.elapsed().as_millis() as u64;
    let mut ctx = Context::new(topo, backend, kmsg, job.evidence_always, job.capture);
    ctx.rules = scenario.nat_rules(crate::scenario::topology::RELAY);
    let mut emit = |r: CheckResult| send(&GuestMessage::Check(Box::new(r.into())));
    // Plain-UDP redirect checks first, in each family: they need the listen
    // port that the tunnel takes over.
    let plan = scenario.plan();
    let (early, late): (Vec<_>, Vec<_>) = plan
        .iter()
        .partition(|(_, c)| c.info().phase == Phase::BeforeTunnel);
    for (family, spec) in early {
        ctx.family = family;
        spec.run(&mut ctx, &scenario.name, &mut emit);
    }
    match ctx.topo.start_tunnel() {
        Ok(Tunnel::StandIn { why }) => send(&GuestMessage::Note {
            message: format!(
                "{} [{}]: {why}; a veth pair stands in for the tunnel, WireGuard checks are unsupported",
                scenario.name,
                backend.kind()
            ),
        }),
        Ok(Tunnel::WireGuard { .. }) => {}
        Err(e) => {
            let why = format!("bringing up the tunnel failed: {e:#}");
            let names = late
                .iter()
                .flat_map(|(f, c)| c.result_names_in(*f))
                .collect();
            settle(scenario, backend, names, Status::Error, &why);
            ctx.topo.stop();
            return setup_ms;
        }
    }
    if scenario.relay.flowtable {
        ctx.flowtable = Some(match ctx.topo.start_flowtable() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(why)) => Err((Status::Unsupported, why)),
            Err(e) => Err((Status::Error, format!("{e:#}"))),
        });
    }
    for (family, spec) in late {
        ctx.family = family;
        spec.run(&mut ctx, &scenario.name, &mut emit);
    }
    ctx.topo.stop();
    setup_ms
}

/// Report `names` as settled without running them (setup failed).
fn settle(
    scenario: &Scenario,
    backend: &dyn NatBackend,
    names: Vec<String>,
    status: Status,
    why: &str,
) {
    for name in names {
        send(&GuestMessage::Check(Box::new(GuestResult {
            scenario: scenario.name.clone(),
            backend: backend.kind().to_string(),
            check: name,
            status,
            expected: "the scenario's setup succeeds".into(),
            observed: why.to_string(),
            duration_ms: 0,
            evidence: None,
            series: None,
        })));
    }
}
