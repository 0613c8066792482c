//! The guest side: natvet as PID 1. It mounts what a tiny system needs, loads
//! modules, builds each scenario's topology, runs its checks and reports every
//! result as a typed message on the second serial port, then ends the VM.

pub mod capture;
pub mod checks;
pub mod kmsg;
pub mod netlink;
pub mod netns;
pub mod probes;
pub mod topology;
pub mod wireguard;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::Instant;

use anyhow::{Context as _, Result};
use nix::mount::{mount, MsFlags};

use crate::nat::NatBackend;
use crate::protocol::{
    CheckResult, GuestMessage, Job, Status, JOB_PATH, PROTOCOL_VERSION, RESULTS_TTY,
};
use crate::scenario::Scenario;

static RESULTS: OnceLock<Mutex<File>> = OnceLock::new();

/// Send one message to the host. Messages are lines; a write error has nowhere to go.
pub fn send(msg: &GuestMessage) {
    if let Some(port) = RESULTS.get() {
        if let Ok(mut f) = port.lock() {
            let _ = writeln!(f, "{}", msg.to_line());
            let _ = f.flush();
        }
    }
}

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

fn run(start: Instant) -> Result<()> {
    mount_basics()?;
    let port = open_results_port()?;
    let _ = RESULTS.set(Mutex::new(port));
    let release = nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default();
    send(&GuestMessage::Hello {
        version: PROTOCOL_VERSION,
        kernel_release: release.clone(),
        uptime_ms: uptime_ms(),
    });

    let job: Job = serde_json::from_slice(
        &std::fs::read(Path::new("/").join(JOB_PATH)).context("reading the job")?,
    )
    .context("parsing the job")?;

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

    for scenario in &job.scenarios {
        for kind in &scenario.backends {
            let backend = kind.backend();
            run_scenario(scenario, backend.as_ref(), &job);
        }
    }
    send(&GuestMessage::Note {
        message: format!("agent finished in {} ms", start.elapsed().as_millis()),
    });
    Ok(())
}

/// One scenario with one backend. Setup failures become results for every
/// check (error, or unsupported when the kernel lacks the backend), so the
/// host always learns the fate of each check by name.
fn run_scenario(scenario: &Scenario, backend: &dyn NatBackend, job: &Job) {
    let mut kmsg = kmsg::Kmsg::open();
    let settle = |status: Status, why: String| {
        for name in scenario.result_names() {
            send(&GuestMessage::Check(Box::new(CheckResult {
                scenario: scenario.name.clone(),
                backend: backend.kind().to_string(),
                check: name,
                status,
                expected: "the scenario's setup succeeds".into(),
                observed: why.clone(),
                duration_ms: 0,
                evidence: None,
                evidence_dir: None,
            })));
        }
    };
    let topo = match topology::Topology::build(scenario.relay.listen_port) {
        Ok(t) => t,
        Err(e) => {
            let msg = format!("{e:#}");
            let lines = kmsg.drain();
            let unsupported =
                msg.contains("Operation not supported") || msg.contains("Not supported");
            let status = if unsupported {
                Status::Unsupported
            } else {
                Status::Error
            };
            return settle(
                status,
                format!("building the topology failed: {msg}\n{}", lines.join("\n")),
            );
        }
    };
    match topo.apply_nat(backend, &topology::nat_rules(scenario)) {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => {
            topo.stop();
            return settle(Status::Unsupported, reason);
        }
        Err(e) => {
            topo.stop();
            return settle(Status::Error, format!("{e:#}"));
        }
    }
    let mut ctx = checks::Context::new(topo, backend, kmsg, job.evidence_always, job.capture);
    for spec in &scenario.checks {
        checks::run_spec(&mut ctx, &scenario.name, spec, &mut |r| {
            send(&GuestMessage::Check(Box::new(r)))
        });
    }
    ctx.topo.stop();
}
