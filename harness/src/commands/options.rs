//! The option groups several commands share (VetArgs, RunArgs, CheckArgs,
//! Outputs), and what they become once validated: kernel specs, scenarios and
//! the `VetOptions` of a run. Everything is checked here, before anything
//! touches the network or boots.

use std::path::PathBuf;
use std::time::Duration;

use super::error::{usage, Result};
use crate::bounds::Limit;
use crate::kernel::KernelSpec;
use crate::nat::BackendKind;
use crate::protocol::job::PerfMode;
use crate::scenario::Scenario;
use crate::vet::{self, VetOptions};

#[derive(clap::Args, Debug)]
pub struct VetArgs {
    /// Kernel to vet: debian:RELEASE (6.1.0-57-amd64), debian:LINE (6.12; security suites included), debian:SUITE[:LINE] (sid, bookworm:6.1), REPO:... of an apt repository (ubuntu:6.8, a --repository's name), a kernel package file (./linux-image-X.deb; the packages of a split kernel one --kernel each, or a folder), a path to a bzImage/vmlinux, or build:PATH (a kernel build tree). Repeatable. Default: the `default` set in vm-images/matrix.toml.
    #[arg(long = "kernel", value_name = "SPEC")]
    pub kernels: Vec<String>,
    /// Kernel set from vm-images/matrix.toml (instead of --kernel).
    #[arg(long, value_name = "NAME", conflicts_with = "kernels")]
    pub set: Option<String>,
    /// Module tree for a local kernel (lib/modules/RELEASE, or a root holding it).
    #[arg(long, value_name = "DIR")]
    pub modules: Option<PathBuf>,
    #[command(flatten)]
    pub run: RunArgs,
}

/// What every command that runs checks in VMs takes.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub checks: CheckArgs,
    /// VMs at once (1-64). Default: one per core, as memory allows.
    #[arg(long, short = 'j', value_parser = |s: &str| JOBS.parse_arg(s).map(|n| n as usize))]
    pub jobs: Option<usize>,
    /// Guest memory in MiB (128-65536).
    #[arg(long, default_value_t = 384, value_parser = |s: &str| MEMORY.parse_arg(s).map(|n| n as u32))]
    pub memory: u32,
    /// Virtual CPUs per guest (1-64). Default: the host's cores shared among
    /// the VMs that run at once (at least one each).
    #[arg(long, value_name = "N", value_parser = |s: &str| CPUS.parse_arg(s).map(|n| n as usize))]
    pub cpus: Option<usize>,
    /// Extra kernel command line arguments.
    #[arg(long, value_name = "ARGS", default_value = "")]
    pub kernel_cmdline: String,
    /// Kernel image to boot: auto (vmlinux via PVH where possible) or bzimage.
    #[arg(long, value_enum, default_value = "auto")]
    pub boot: vet::BootPreference,
}

/// What every command that runs checks takes, in a VM or on the host.
#[derive(clap::Args, Debug)]
pub struct CheckArgs {
    /// Scenario to run: a shipped name or a path to a .toml file. Repeatable. Default: every shipped scenario but the slow ones (rekey).
    #[arg(long = "scenario", value_name = "NAME|PATH")]
    pub scenarios: Vec<String>,
    /// A relay bundle (a folder with relay.toml, as relays/example-*): its ruleset,
    /// sysctls and interfaces as a scenario, with checks derived from what
    /// the ruleset does (`natvet relay show` prints it). Repeatable; without
    /// --scenario, only the bundles run.
    #[arg(long = "relay", value_name = "BUNDLE")]
    pub relays: Vec<PathBuf>,
    /// Restrict NAT backends (comma-separated): nftables (or nft), iptables-nft, iptables-legacy.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub backend: Vec<BackendKind>,
    /// Scenario runs (one scenario with one backend) at once, each in
    /// namespaces of its own: one run's waits (idle timeouts, keepalives)
    /// overlap another's work. Default: 3 in a VM; 1 with `verify`, to stay
    /// light on a live server.
    #[arg(long, value_name = "N", value_parser = |s: &str| PARALLEL.parse_arg(s).map(|n| n as u16))]
    pub parallel: Option<u16>,
    /// Skip the scenarios' performance probes (`[perf]`: throughput, packet
    /// rate, latency), in `vet` figures and in `gate` a comparison.
    #[arg(long)]
    pub no_perf: bool,
    /// Write all results as JSON (schema natvet-run/1).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub outputs: Outputs,
    /// Folder for console logs and evidence.
    #[arg(long, value_name = "DIR", default_value = "natvet-out")]
    pub out: PathBuf,
    /// Seconds one kernel's run may take from start to end (10-86400).
    #[arg(long, default_value_t = 600, value_parser = |s: &str| TIMEOUT.parse_arg(s))]
    pub timeout: u64,
    /// Seconds one check may take before the run is stopped as hung
    /// (10-86400); also how long a guest may take to boot.
    #[arg(long, default_value_t = 120, value_parser = |s: &str| CHECK_TIMEOUT.parse_arg(s))]
    pub check_timeout: u64,
    /// Keep evidence for passing checks too.
    #[arg(long)]
    pub evidence_always: bool,
    /// Packet captures: kept for failing checks (default), always, or never taken.
    #[arg(long, value_enum, default_value = "failures")]
    pub capture: crate::protocol::CaptureMode,
    /// How long a check waits for a reply or handshake that should come:
    /// its full timeout until the guest has seen one, then 20 times the
    /// slowest seen (at least 2 s, 3 s for a handshake), so that a broken
    /// kernel's lost replies cost seconds, not minutes (adaptive); or every
    /// full timeout (full), for a kernel that is slow on purpose.
    #[arg(long, value_enum, default_value = "adaptive")]
    pub waits: crate::checks::patience::Waits,
    /// No progress output.
    #[arg(long, short = 'q')]
    pub quiet: bool,
    /// Progress without a terminal: one line per kernel as it finishes
    /// (kernels), or a line per stage and per check (checks). On a
    /// terminal, `kernels` draws a bar per kernel.
    #[arg(long, value_enum, default_value = "kernels", value_name = "WHAT")]
    pub progress: crate::ui::Progress,
    /// The table at the end: the verdict first and one row per scenario x
    /// backend, expanding only what did not pass (compact), or every check
    /// (full).
    #[arg(long, value_enum, default_value = "compact", value_name = "STYLE")]
    pub table: crate::report::terminal::TableStyle,
}

/// The limits of the command line's numbers, each with why (clap refuses
/// a value outside one: exit 2).
#[cfg(test)]
pub const LIMITS: &[Limit] = &[
    super::kernels::BUILD_JOBS,
    super::soak::RUNS,
    super::soak::DURATION,
    JOBS,
    MEMORY,
    CPUS,
    PARALLEL,
    TIMEOUT,
    CHECK_TIMEOUT,
    KERNEL_CMDLINE,
];

const JOBS: Limit = Limit::new(
    "--jobs",
    1,
    64,
    "each VM holds --memory (384 MiB by default) of the host and shares its cores; natvet also checks that the VMs fit in the memory available",
);
const MEMORY: Limit = Limit::new(
    "--memory",
    128,
    65_536,
    "below 128 MiB a Debian kernel with natvet's initramfs does not boot, and the checks' limits are sized for the 384 MiB default: 64 GiB is far beyond any guest they need",
)
.unit(" MiB");
const CPUS: Limit = Limit::new(
    "--cpus",
    1,
    64,
    "under TCG each vCPU is a host thread, and only the host's cores run them: beyond them vCPUs only take turns",
);
const PARALLEL: Limit = Limit::new(
    "--parallel",
    1,
    32,
    "each run holds its own namespaces, probe servers and threads in the guest at once, and the checks' memory limits assume a few runs, not dozens",
);
const TIMEOUT: Limit = Limit::new(
    "--timeout",
    10,
    86_400,
    "a guest boots in 2-6 s under TCG before any check runs, and a day is the longest run (a soak stretches its own timeout to fit)",
)
.unit(" s");
const CHECK_TIMEOUT: Limit = Limit::new(
    "--check-timeout",
    10,
    86_400,
    "it is also the time a guest has to boot and say hello (2-6 s under TCG), and a day is the longest any check runs",
)
.unit(" s");
const KERNEL_CMDLINE: Limit = Limit::new(
    "--kernel-cmdline",
    0,
    1900,
    "the x86 kernel command line holds 2048 bytes and natvet's own arguments (console, panic, rdinit...) take about 100 of them",
)
.on("the length of --kernel-cmdline")
.unit(" bytes");

impl CheckArgs {
    /// The progress output these options ask for.
    pub fn ui(&self) -> crate::ui::Ui {
        crate::ui::Ui::with_progress(self.quiet, self.progress)
    }
}

/// Where a finished run's renderings go.
#[derive(clap::Args, Debug)]
pub struct Outputs {
    /// Write JUnit XML (one testcase per kernel x scenario x backend x check).
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Write a Markdown summary (for a CI job page).
    #[arg(long, value_name = "FILE")]
    pub markdown: Option<PathBuf>,
    /// Write a self-contained HTML report (DIR/index.html).
    #[arg(long, value_name = "DIR")]
    pub html: Option<PathBuf>,
}

pub(super) fn parse_specs(specs: &[String], modules: Option<PathBuf>) -> Result<Vec<KernelSpec>> {
    if modules.is_some() && specs.len() != 1 {
        return Err(usage("--modules goes with exactly one --kernel PATH"));
    }
    let specs = specs
        .iter()
        .map(|s| KernelSpec::parse(s, modules.clone()).map_err(|e| usage(e.to_string())))
        .collect::<Result<Vec<_>>>()?;
    // The package files of one split kernel, given one --kernel each, are one kernel.
    crate::kernel::sources::join_package_files(specs).map_err(|e| usage(e.to_string()))
}

/// The kernels named with --kernel, or the set named with --set (default: `default`).
pub(super) fn kernel_specs(args: &VetArgs) -> Result<Vec<KernelSpec>> {
    let kernel_strings = if !args.kernels.is_empty() {
        args.kernels.clone()
    } else {
        crate::kernel_sets::kernel_set(args.set.as_deref().unwrap_or("default"))
            .map_err(|e| usage(format!("{e:#}")))?
    };
    parse_specs(&kernel_strings, args.modules.clone())
}

/// `path` with `part` (a kernel spec, as one file name) before its
/// extension: `gate.html` -> `gate-debian_6.1.html`.
pub(super) fn part_path(path: &std::path::Path, part: &str) -> PathBuf {
    let safe = crate::report::sanitize(part);
    let stem = path
        .file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default();
    let name = match path.extension() {
        Some(e) => format!("{stem}-{safe}.{}", e.to_string_lossy()),
        None => format!("{stem}-{safe}"),
    };
    path.with_file_name(name)
}

/// The scenarios asked for, with their backends narrowed to --backend.
pub(super) fn load_scenarios(checks: &CheckArgs) -> Result<Vec<Scenario>> {
    let names: Vec<String> = if checks.scenarios.is_empty() && !checks.relays.is_empty() {
        vec![]
    } else if checks.scenarios.is_empty() {
        crate::scenario::default_set()
            .into_iter()
            .map(str::to_string)
            .collect()
    } else {
        checks.scenarios.clone()
    };
    let mut scenarios = Vec::new();
    for n in &names {
        let mut s = Scenario::load(n).map_err(|e| usage(e.to_string()))?;
        if !checks.backend.is_empty() {
            s.backends.retain(|b| checks.backend.contains(b));
            if s.backends.is_empty() {
                return Err(usage(format!(
                    "scenario '{}' allows none of the backends given with --backend",
                    s.name
                )));
            }
        }
        scenarios.push(s);
    }
    for path in &checks.relays {
        let s = relay_scenario(path, None)?;
        if !checks.backend.is_empty() && !checks.backend.contains(&s.backends[0]) {
            return Err(usage(format!(
                "the relay bundle {} loads its ruleset with {}, which --backend leaves out",
                path.display(),
                s.backends[0].name()
            )));
        }
        if let Some(other) = scenarios.iter().find(|o| o.name == s.name) {
            return Err(usage(format!(
                "the relay bundle {} is scenario '{}', as another scenario already is: give each bundle its own name in relay.toml",
                path.display(),
                other.name
            )));
        }
        scenarios.push(s);
    }
    Ok(scenarios)
}

/// The scenario of the relay bundle at `path` (its checks from
/// `promise_of`'s ruleset when given); a bundle in error is bad input.
pub(super) fn relay_scenario(
    path: &std::path::Path,
    promise_of: Option<&std::path::Path>,
) -> Result<Scenario> {
    relay_derived(path, promise_of).map(|d| d.scenario)
}

/// The bundle at `path` derived into a scenario (and its TOML), as
/// `relay_scenario` says.
pub(super) fn relay_derived(
    path: &std::path::Path,
    promise_of: Option<&std::path::Path>,
) -> Result<crate::relay::Derived> {
    let load = |p: &std::path::Path| {
        crate::relay::Bundle::load(p)
            .map_err(|e| usage(format!("relay bundle {}: {e}", p.display())))
    };
    let bundle = load(path)?;
    let baseline = promise_of.map(load).transpose()?;
    crate::relay::derive(&bundle, baseline.as_ref())
        .map_err(|e| usage(format!("relay bundle {}: {e}", path.display())))
}

/// Options for a run of `scenarios` on one or more kernels.
pub(super) fn check_options(checks: &CheckArgs, scenarios: Vec<Scenario>) -> VetOptions {
    VetOptions {
        kernels: vec![],
        scenarios,
        jobs: 1,
        timeout: Duration::from_secs(checks.timeout),
        check_timeout: Duration::from_secs(checks.check_timeout),
        memory_mb: 0,
        cpus: 1,
        out_dir: checks.out.clone(),
        cmdline_extra: String::new(),
        evidence_always: checks.evidence_always,
        capture: checks.capture,
        waits: checks.waits,
        boot: vet::BootPreference::Auto,
        parallel: usize::from(checks.parallel.unwrap_or(3)),
        run_id: None,
        perf: if checks.no_perf {
            PerfMode::Skip
        } else {
            PerfMode::After
        },
    }
}

/// Scenarios and options common to vet and gate, validated before anything runs.
pub(super) fn prepare(run: &RunArgs, specs: Vec<KernelSpec>) -> Result<VetOptions> {
    let scenarios = load_scenarios(&run.checks)?;
    KERNEL_CMDLINE
        .check(run.kernel_cmdline.len())
        .map_err(|e| usage(e.to_string()))?;
    crate::provision::check_host(&scenarios)?;
    let jobs = run
        .jobs
        .unwrap_or_else(|| crate::host::default_jobs(run.memory));
    if let Some(avail) = crate::host::available_memory_mb() {
        let need = jobs as u64 * (u64::from(run.memory) + 200);
        if need > avail {
            return Err(usage(format!(
                "{jobs} VM(s) of {} MiB need about {need} MiB, but only {avail} MiB are available: lower --jobs or --memory",
                run.memory
            )));
        }
    }
    // Kernels beyond --jobs wait their turn: only that many VMs share the
    // cores (bisect names its kernels later, and may run --jobs of them).
    let vms = match specs.len() {
        0 => jobs,
        n => jobs.min(n),
    };
    Ok(VetOptions {
        kernels: specs,
        jobs,
        memory_mb: run.memory,
        cpus: run.cpus.unwrap_or_else(|| crate::host::default_cpus(vms)),
        cmdline_extra: run.kernel_cmdline.clone(),
        boot: run.boot,
        ..check_options(&run.checks, scenarios)
    })
}

/// Every --check pattern must name a check of the chosen scenarios.
pub(super) fn validate_checks(opts: &VetOptions, checks: &[String]) -> Result<()> {
    let names: Vec<String> = opts
        .scenarios
        .iter()
        .flat_map(|s| s.result_names())
        .collect();
    for c in checks {
        if !names.iter().any(|n| crate::bisect::check_matches(c, n)) {
            let mut families: Vec<String> = Vec::new();
            for n in &names {
                let f = match n.split_once('/') {
                    Some((f, _)) => format!("{f}/"),
                    None => n.clone(),
                };
                if !families.contains(&f) {
                    families.push(f);
                }
            }
            return Err(usage(format!(
                "--check {c} matches none of the checks of the chosen scenarios; give a check name (e.g. handshake/53) or a family: {}",
                families.join(", ")
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    /// The command line `natvet ARGS` would be refused with (clap's usage
    /// error, exit 2), or None.
    fn refused(args: &[&str]) -> Option<String> {
        let argv = std::iter::once("natvet").chain(args.iter().copied());
        match crate::commands::Cli::try_parse_from(argv) {
            Ok(_) => None,
            Err(e) => {
                assert_eq!(e.exit_code(), 2, "{e}");
                Some(e.to_string())
            }
        }
    }

    #[test]
    fn numbers_out_of_range_are_usage_errors_that_say_why() {
        let e = refused(&["vet", "--timeout", "0"]).unwrap();
        assert!(
            e.contains("value out of range: --timeout = 0 must be between 10 and 86400 s because"),
            "{e}"
        );
        // A timeout too large for the clock used to panic in the launcher.
        assert!(refused(&["vet", "--timeout", "18446744073709551615"]).is_some());
        for l in LIMITS {
            if l.key == "--kernel-cmdline" {
                continue;
            }
            let (cmd, extra): (&[&str], &[&str]) = match l.key {
                "--runs" => (&["soak"], &[]),
                "--duration" => (&["soak"], &[]),
                "--jobs" if l.max == 256 => (
                    &["kernels", "build"],
                    &["--source", "debian:linux-source-6.12", "--config", "x"],
                ),
                _ => (&["vet"], &[]),
            };
            let mut outside = vec![l.max + 1];
            if l.min > 0 {
                outside.push(l.min - 1);
            }
            for v in outside.iter().map(u64::to_string) {
                let args: Vec<&str> = cmd
                    .iter()
                    .chain(extra)
                    .copied()
                    .chain([l.key, v.as_str()])
                    .collect();
                // --duration is parsed when the soak starts, not by clap.
                if l.key == "--duration" {
                    let e = crate::commands::soak::parse_duration(&v).unwrap_err();
                    assert!(
                        e.to_string().contains("value out of range: --duration"),
                        "{e}"
                    );
                    continue;
                }
                let e = refused(&args).unwrap_or_else(|| panic!("{args:?} accepted"));
                assert!(
                    e.contains(&format!(
                        "value out of range: {} = {v} must be between",
                        l.key
                    )),
                    "{args:?}: {e}"
                );
            }
            let inside = l.min.max(1).to_string();
            let args: Vec<&str> = cmd
                .iter()
                .chain(extra)
                .copied()
                .chain([l.key, inside.as_str()])
                .collect();
            if l.key != "--duration" {
                assert_eq!(refused(&args), None, "{args:?}");
            }
        }
        assert!(KERNEL_CMDLINE.check("x".repeat(1901).len()).is_err());
    }
}
