//! `natvet vet`: resolve kernels, build an initramfs for each, boot them in
//! parallel within a memory budget, and gather every check's result.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::evidence;
use crate::inbound::AskedFigure;
use crate::inbound::{Event, Inbound, Reported};
use crate::kernel::{self, Cache, Kernel, KernelSpec};
use crate::launcher::{self, End, Outcome};
use crate::protocol::job::{Job, PerfMode};
use crate::protocol::{CheckResult, Status, PROTOCOL_VERSION};
use crate::provision;
use crate::qemu::{self, VmConfig};
use crate::report::{self, InfraStage, KernelRun, KernelState, RunReport, Timings};
use crate::retry;
use crate::scenario::Scenario;
use crate::ui::{KernelProgress, Ui};

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
    pub waits: crate::checks::patience::Waits,
    pub boot: BootPreference,
    /// Scenario runs at once inside each guest.
    pub parallel: usize,
    /// The run's own name for its kernel (its folder under `out_dir` and its
    /// column): `natvet verify` names each run, so that runs at once never
    /// share a folder.
    pub run_id: Option<String>,
    /// Whether the scenarios' performance probes run (and whether only they do).
    pub perf: PerfMode,
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

/// Run every resolved kernel, `opts.jobs` at a time.
pub fn run(opts: &VetOptions, resolved: Vec<Resolution>, ui: &Ui) -> RunReport {
    let started = chrono::Utc::now();
    let start = Instant::now();
    let stale = provision::remove_stale_work_dirs();
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
            if let Some(id) = &opts.run_id {
                return Some(match names.len() {
                    1 => id.clone(),
                    _ => format!("{id} [{}]", i + 1),
                });
            }
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
                        match retry::reason(&first) {
                            Some(why) if !launcher::cancelled() => {
                                ui.println(&format!("[{}] {why}; retrying once", first.label()));
                                retry::merge(
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
        diagnosis: None,
    }
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
        perf: vec![],
        notes: vec![],
        attempts: 1,
        timings: Timings::default(),
        console_log: None,
    }
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
    let one = OneKernel {
        opts,
        kernel,
        id,
        resolve_ms,
        expected: match opts.perf {
            PerfMode::Only => vec![],
            _ => expected_results(&opts.scenarios),
        },
        expected_perf: match opts.perf {
            PerfMode::Skip => vec![],
            _ => expected_figures(&opts.scenarios),
        },
    };
    let mut progress = ui.kernel(&label, one.expected.len());
    let launched = match one.launch(&label, &progress) {
        Ok(l) => l,
        Err((stage, reason)) => {
            return infra_run(&kernel.spec, Some(kernel), stage, reason, vec![])
        }
    };
    let (collected, outcome) = one.collect(&launched, &mut progress);
    let run = one.judge(&launched, collected, outcome);
    one.finish(run, &launched, total, &progress)
}

/// What one kernel's run knows throughout its steps.
struct OneKernel<'a> {
    opts: &'a VetOptions,
    kernel: &'a Kernel,
    /// The kernel's name in this run, when its release alone is ambiguous.
    id: Option<&'a str>,
    resolve_ms: u64,
    /// (scenario, backend, check) of every result the job must produce, in the job's order.
    expected: Vec<(String, String, String)>,
    /// The performance figures the job must produce.
    expected_perf: Vec<AskedFigure>,
}

/// The performance figures a job of `scenarios` must report (when it runs
/// the probes): each scenario's, for each of its backends.
pub fn expected_figures(scenarios: &[Scenario]) -> Vec<AskedFigure> {
    scenarios
        .iter()
        .filter_map(|s| Some((s, s.perf.as_ref()?)))
        .flat_map(|(s, p)| {
            let figures = p.figures(&s.setup());
            s.backends.iter().flat_map(move |b| {
                figures.clone().into_iter().map(move |f| {
                    (
                        (s.name.clone(), b.to_string(), f.probe),
                        f.unit.to_string(),
                        f.better,
                    )
                })
            })
        })
        .collect()
}

/// The results a job of `scenarios` must report: (scenario, backend, check).
pub fn expected_results(scenarios: &[Scenario]) -> Vec<(String, String, String)> {
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
        xtables_lock: PathBuf,
        watch: launcher::Watch,
    },
}

/// A kernel ready to start: how, and what it took to get there.
struct Launched {
    launch: Launch,
    /// Holds the initramfs or the agent's job until the run ends.
    _work: tempfile::TempDir,
    /// The kernel's folder under --out, named by the host.
    kdir: PathBuf,
    console_log: PathBuf,
    initramfs_ms: u64,
    initramfs_bytes: u64,
}

/// What a guest's messages show while the run goes on: its progress bar
/// (the kernel's name once the guest gave it, the check under way, each
/// result).
fn show(event: &Event, named: bool, progress: &mut KernelProgress) {
    match event {
        Event::Hello { release } => {
            if !named {
                progress.rename(release);
            }
            progress.stage("running checks");
        }
        Event::CheckStarted { check } => progress.check_started(check),
        Event::Check(r) => progress.check_done(r),
        Event::Note | Event::Perf | Event::RunDone | Event::Done | Event::Fatal => {}
    }
}

impl OneKernel<'_> {
    /// Step 1: the kernel's output folder, a temporary folder, and the agent's
    /// job (on the host) or the initramfs (in a VM). Failing here is natvet's
    /// own trouble: the stage and why.
    fn launch(
        &self,
        label: &str,
        progress: &KernelProgress,
    ) -> std::result::Result<Launched, (InfraStage, String)> {
        // The kernel's folder: named by the host before the guest starts.
        let kdir = self.opts.out_dir.join(report::sanitize(label));
        if let Err(e) = std::fs::create_dir_all(&kdir) {
            return Err((
                InfraStage::Output,
                format!("cannot create {}: {e}", kdir.display()),
            ));
        }
        let work = match provision::work_dir() {
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
        let launch = if self.kernel.boot_kind == kernel::BootKind::Running {
            progress.stage("starting the agent");
            let job = work.path().join("job.json");
            if let Err(e) = serde_json::to_vec(&make_job(self.opts))
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
                // iptables-legacy's lock, in this run's own folder rather than
                // the host's /run/xtables.lock.
                xtables_lock: work.path().join("xtables.lock"),
                watch: launcher::Watch {
                    program: "the agent",
                    timeout: self.opts.timeout,
                    stall_timeout: self.opts.check_timeout,
                    boot_timeout: self.opts.check_timeout.min(self.opts.timeout),
                    console_log: console_log.clone(),
                },
            }
        } else {
            progress.stage("building initramfs");
            let initrd = work.path().join("initramfs.cpio");
            let t = Instant::now();
            match provision::build_initramfs(self.kernel, &make_job(self.opts), &initrd) {
                Ok(stats) => initramfs_bytes = stats.bytes,
                Err(e) => return Err((InfraStage::Initramfs, format!("{e:#}"))),
            };
            initramfs_ms = t.elapsed().as_millis() as u64;
            progress.stage("booting");
            Launch::Vm(VmConfig {
                kernel: match (self.opts.boot, &self.kernel.bzimage) {
                    (BootPreference::BzImage, Some(bz)) => bz.clone(),
                    _ => self.kernel.boot_image.clone(),
                },
                initrd,
                memory_mb: self.opts.memory_mb,
                cpus: self.opts.cpus,
                cmdline_extra: self.opts.cmdline_extra.clone(),
                timeout: self.opts.timeout,
                stall_timeout: self.opts.check_timeout,
                boot_timeout: self.opts.check_timeout.min(self.opts.timeout),
                console_log: console_log.clone(),
            })
        };
        Ok(Launched {
            launch,
            _work: work,
            kdir,
            console_log,
            initramfs_ms,
            initramfs_bytes,
        })
    }

    /// Step 2: start the kernel and take in its messages until the run ends.
    /// `Inbound` accepts only what the job allows; what it kept is what the
    /// guest reported.
    fn collect(
        &self,
        launched: &Launched,
        progress: &mut KernelProgress,
    ) -> (Reported, std::result::Result<Outcome, String>) {
        let mut inbound = Inbound::new(self.expected.clone()).with_perf(self.expected_perf.clone());
        // A kernel the host could name keeps that name.
        let named = self.id.is_some() || self.kernel.release.is_some();
        let mut on_event = |event: &Event| show(event, named, progress);
        let outcome = match &launched.launch {
            Launch::Vm(cfg) => {
                qemu::run(cfg, &mut inbound, &mut on_event).map_err(|e| e.to_string())
            }
            Launch::Host {
                job,
                xtables_lock,
                watch,
            } => launcher::run_agent(job, xtables_lock, watch, &mut inbound, &mut on_event)
                .map_err(|e| e.to_string()),
        };
        (inbound.finish(), outcome)
    }

    /// Step 3: the kernel's run as the guest reported it, and whether natvet
    /// could test it: how the run ended, whether the agent gave up, and
    /// whether every expected result came.
    fn judge(
        &self,
        launched: &Launched,
        collected: Reported,
        outcome: std::result::Result<Outcome, String>,
    ) -> KernelRun {
        // The host's name for the kernel stands; the guest's only fills in
        // what the host could not tell (and was checked to be a release).
        let mut notes = Vec::new();
        let release = match (&self.kernel.release, collected.release) {
            (Some(host), Some(guest)) if *host != guest => {
                notes.push(format!(
                    "the guest reports kernel release {guest}, where natvet booted {host}: the report names it {host}"
                ));
                Some(host.clone())
            }
            (Some(host), _) => Some(host.clone()),
            (None, guest) => guest,
        };
        notes.extend(collected.notes);
        let mut run = KernelRun {
            spec: self.kernel.spec.clone(),
            release,
            id: self.id.map(str::to_string),
            package: self.kernel.package.clone(),
            boot: Some(match (self.opts.boot, &self.kernel.bzimage) {
                (BootPreference::BzImage, Some(_)) => "bzimage".to_string(),
                _ => format!("{:?}", self.kernel.boot_kind).to_lowercase(),
            }),
            state: KernelState::Completed,
            results: collected.results,
            perf: collected.perf,
            notes,
            attempts: 1,
            timings: Timings {
                resolve_ms: self.resolve_ms,
                initramfs_ms: launched.initramfs_ms,
                initramfs_bytes: launched.initramfs_bytes,
                guest_uptime_ms: collected.uptime_ms,
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
            run.notes.push(format!("{}{a}", retry::CONSOLE_ALARM));
        }
        if o.alarms_left_out > 0 {
            run.notes.push(format!(
                "{}{} more lines like these (console.log has them)",
                retry::CONSOLE_ALARM,
                o.alarms_left_out
            ));
        }
        let mut missing: Vec<String> = self
            .expected
            .iter()
            .filter(|(s, b, c)| {
                !run.results
                    .iter()
                    .any(|r| &r.scenario == s && &r.backend == b && &r.check == c)
            })
            .map(|(s, b, c)| format!("{s} [{b}] {c}"))
            .collect();
        missing.extend(collected.perf_missing);
        if let Some((stage, reason)) =
            breakdown(&o.end, collected.fatal.as_deref(), &collected.running)
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

    /// Step 4: results back in the job's order (overlapping scenario runs
    /// report in any order), the total time, evidence files (in the
    /// kernel's own folder), and the progress line.
    fn finish(
        &self,
        mut run: KernelRun,
        launched: &Launched,
        total: Instant,
        progress: &KernelProgress,
    ) -> KernelRun {
        let rank = |r: &CheckResult| {
            self.expected
                .iter()
                .position(|(s, b, c)| *s == r.scenario && *b == r.backend && *c == r.check)
                .unwrap_or(usize::MAX)
        };
        run.results.sort_by_key(rank);
        run.timings.total_ms = total.elapsed().as_millis() as u64;
        if let Err(e) = evidence::write(&launched.kdir, &mut run) {
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
                "the guest sent no message for {} s{during}; raise --check-timeout if the kernel is just slow",
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
        (End::Protocol(why), None) => Some((
            InfraStage::Protocol,
            format!(
                "{why}{during}: the guest does not speak natvet's protocol as this natvet does (a stale initramfs, or a kernel that corrupts the agent); natvet stopped listening to it"
            ),
        )),
    }
}

/// The job of a run (a VM's initramfs adds the modules its kernel preloads).
fn make_job(opts: &VetOptions) -> Job {
    Job {
        version: PROTOCOL_VERSION,
        scenarios: opts.scenarios.clone(),
        preload_modules: vec![],
        evidence_always: opts.evidence_always,
        capture: opts.capture,
        waits: opts.waits,
        parallel: opts.parallel,
        perf: opts.perf,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breakdown_names_the_stage_and_the_checks_under_way() {
        let running = vec!["pmtu [nftables] forward/tcp".to_string()];
        assert_eq!(breakdown(&End::Completed, None, &[]), None);
        let (stage, why) = breakdown(&End::Completed, Some("no veth"), &running).unwrap();
        assert_eq!(stage, InfraStage::Agent);
        assert!(why.ends_with("while running pmtu [nftables] forward/tcp: no veth"));
        let stalled = End::Stalled(Duration::from_secs(120));
        let (stage, why) = breakdown(&stalled, None, &running).unwrap();
        assert_eq!(stage, InfraStage::CheckTimeout);
        assert!(
            why.contains("no message for 120 s while running pmtu"),
            "{why}"
        );
    }
}
