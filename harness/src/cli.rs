//! The command line: parse, validate everything before anything runs, then act.

use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::kernel::{Cache, KernelSpec};
use crate::nat::BackendKind;
use crate::report::{exit, RunReport};
use crate::scenario::{Scenario, SHIPPED};
use crate::ui::Ui;
use crate::vet::{self, VetOptions};

#[derive(Parser, Debug)]
#[command(
    name = "natvet",
    version,
    about = "Boots Linux kernels in QEMU and proves, with real packets, that WireGuard + NAT forwarding works"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Vet kernels: boot each, run the scenarios' checks, print a kernel x check table.
    ///
    /// Exit codes: 0 all checks passed, 1 a check failed, 2 bad input, 3 natvet could not test.
    /// With --bisect-exit-codes (for `git bisect run`): 0 every selected check passed,
    /// 1 a selected check failed, 125 cannot test (bad kernel spec, build tree without
    /// an image, boot failure, panic, timeout, harness error, unsupported check),
    /// 128 natvet's own options are wrong (git stops the bisection).
    Vet(VetCmd),
    /// Show the shipped scenarios, or validate one.
    #[command(subcommand)]
    Scenarios(ScenariosCmd),
    /// The check catalogue: every check kind, its results, timeout and what passes.
    #[command(subcommand)]
    Checks(ChecksCmd),
    /// Resolve (and fetch into the cache) kernels without booting them.
    #[command(subcommand)]
    Kernels(KernelsCmd),
    /// Compare a candidate kernel with the baseline production runs: classify
    /// every check as regressed, fixed, unchanged or unsupported.
    ///
    /// Exit codes: 0 nothing regressed, 1 a check regressed, 2 bad input, 3 could not compare.
    Gate(GateArgs),
    /// Merge and render JSON reports.
    #[command(subcommand)]
    Report(ReportCmd),
    /// Run the same kernels and scenarios N times and report any verdict that
    /// differs between runs (natvet must give the same answer every time).
    ///
    /// Exit codes: 0 every run agreed, 1 a verdict differed, 2 bad input, 3 a run could not test.
    Soak(SoakArgs),
    /// Run the checks on this machine's running kernel, without a VM (right
    /// after a deploy). Everything lives in namespaces natvet owns; the host's
    /// interfaces, routes, rulesets, sysctls and conntrack are not touched.
    /// Checks the kernel cannot run (WireGuard when it lacks it) are unsupported.
    ///
    /// Exit codes: 0 all checks passed, 1 a check failed, 2 bad input, 3 natvet could not test.
    Verify(VerifyArgs),
    /// Internal: the agent of `natvet verify`, started by natvet itself.
    #[command(hide = true)]
    Agent {
        #[arg(long)]
        job: PathBuf,
        #[arg(long)]
        results_fd: i32,
    },
    /// Find the first Debian kernel package of one line that fails: test both
    /// ends, then bisect the packages between them (packages natvet cannot
    /// test are skipped, like `git bisect skip`). --bad may be your own kernel
    /// (build:PATH or an image) of the same line.
    ///
    /// Exit codes: 0 the first bad kernel was identified; 2 bad input (unknown
    /// spec, endpoints of different lines, good not older than bad, the good
    /// kernel fails or the bad one passes); 3 natvet could not test (an
    /// endpoint, or so many kernels that the first bad is ambiguous);
    /// 130 / 143 interrupted.
    Bisect(BisectArgs),
}

#[derive(clap::Args, Debug)]
pub struct VetCmd {
    #[command(flatten)]
    pub vet: VetArgs,
    /// Exit as `git bisect run` expects: 0 good, 1 bad, 125 cannot test (skip), 128 stop.
    #[arg(long)]
    pub bisect_exit_codes: bool,
    /// With --bisect-exit-codes: only these checks decide (a name such as
    /// handshake/53, or a family such as handshake/). Repeatable. Default: all.
    #[arg(long = "check", value_name = "NAME", requires = "bisect_exit_codes")]
    pub checks: Vec<String>,
}

#[derive(clap::Args, Debug)]
pub struct BisectArgs {
    /// The older kernel, which passes: a Debian package (debian:RELEASE, e.g. debian:6.12.43+deb12-amd64).
    #[arg(long, value_name = "SPEC")]
    pub good: String,
    /// The newer kernel, which fails: a Debian package of the same line, or
    /// your own kernel of that line (build:PATH or a bzImage/vmlinux).
    #[arg(long, value_name = "SPEC")]
    pub bad: String,
    /// Only these checks decide good or bad (a name such as handshake/53, or a
    /// family such as handshake/). Repeatable. Default: every check.
    #[arg(long = "check", value_name = "NAME")]
    pub checks: Vec<String>,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub checks: CheckArgs,
    /// Print what would be created (namespaces, links, addresses, rulesets, checks) and exit.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    #[command(flatten)]
    pub vet: VetArgs,
    /// How many times to run.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
}

#[derive(clap::Args, Debug)]
pub struct VetArgs {
    /// Kernel to vet: debian:RELEASE (6.1.0-50-amd64), debian:LINE (6.12), debian:SUITE[:LINE] (sid, trixie:6.12), a path to a bzImage/vmlinux, or build:PATH (a kernel build tree). Repeatable. Default: the `default` set in vm-images/matrix.toml.
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

#[derive(clap::Args, Debug)]
pub struct GateArgs {
    /// The kernel production runs today (any --kernel form).
    #[arg(long, value_name = "SPEC")]
    pub baseline: String,
    /// The kernel about to be rolled out.
    #[arg(long, value_name = "SPEC")]
    pub candidate: String,
    #[command(flatten)]
    pub run: RunArgs,
}

/// What every command that runs checks in VMs takes.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    #[command(flatten)]
    pub checks: CheckArgs,
    /// VMs at once. Default: one per core, as memory allows.
    #[arg(long, short = 'j')]
    pub jobs: Option<usize>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 384)]
    pub memory: u32,
    /// Virtual CPUs per guest. Default: the host's cores shared among the
    /// VMs that run at once (at least one each).
    #[arg(long, value_name = "N")]
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
    /// Restrict NAT backends (comma-separated): nftables (or nft), iptables-nft, iptables-legacy.
    #[arg(long, value_delimiter = ',', value_name = "LIST")]
    pub backend: Vec<BackendKind>,
    /// Scenario runs (one scenario with one backend) at once, each in
    /// namespaces of its own: one run's waits (idle timeouts, keepalives)
    /// overlap another's work. Default: 3 in a VM; 1 with `verify`, to stay
    /// light on a live server.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=32))]
    pub parallel: Option<u16>,
    /// Write all results as JSON (schema natvet-run/1).
    #[arg(long, value_name = "FILE")]
    pub json: Option<PathBuf>,
    #[command(flatten)]
    pub outputs: Outputs,
    /// Folder for console logs and evidence.
    #[arg(long, value_name = "DIR", default_value = "natvet-out")]
    pub out: PathBuf,
    /// Seconds one kernel's run may take from start to end.
    #[arg(long, default_value_t = 600)]
    pub timeout: u64,
    /// Seconds one check may take before the run is stopped as hung.
    #[arg(long, default_value_t = 120)]
    pub check_timeout: u64,
    /// Keep evidence for passing checks too.
    #[arg(long)]
    pub evidence_always: bool,
    /// Packet captures: kept for failing checks (default), always, or never taken.
    #[arg(long, value_enum, default_value = "failures")]
    pub capture: crate::protocol::CaptureMode,
    /// No progress output.
    #[arg(long, short = 'q')]
    pub quiet: bool,
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

#[derive(Subcommand, Debug)]
pub enum ChecksCmd {
    /// List every check kind a scenario can use.
    List,
}

#[derive(Subcommand, Debug)]
pub enum ReportCmd {
    /// Join the JSON reports of matrix shards into one.
    Merge {
        #[arg(required = true)]
        inputs: Vec<PathBuf>,
        #[arg(short = 'o', long, value_name = "FILE")]
        output: PathBuf,
    },
    /// Render a JSON report as a table, JUnit, Markdown or HTML.
    Render {
        input: PathBuf,
        #[command(flatten)]
        outputs: Outputs,
    },
}

#[derive(Subcommand, Debug)]
pub enum ScenariosCmd {
    /// List the shipped scenarios.
    List,
    /// Print a shipped scenario's TOML.
    Show { name: String },
    /// Validate a scenario file without running it.
    Check { path: String },
}

#[derive(Subcommand, Debug)]
pub enum KernelsCmd {
    /// Show what each kernel set's entries resolve to today, and what is cached.
    List {
        /// Also list every generic amd64 kernel release in Debian's archive.
        #[arg(long)]
        all: bool,
    },
    /// Fetch kernels into the cache (specs, or the name of a set in vm-images/matrix.toml).
    Fetch {
        #[arg(required = true)]
        specs: Vec<String>,
        #[arg(long, value_name = "DIR")]
        modules: Option<PathBuf>,
    },
    /// Build a kernel from Debian's source package with a config fragment (and
    /// patches); the last line printed is the build:PATH spec to vet it with.
    ///
    /// Exit codes: 0 built (or already built), 2 bad input (unknown source
    /// package, missing fragment/patch, a patch that does not apply, fragment
    /// settings the kernel did not take), 3 download or build failure.
    Build {
        /// Source package: debian:linux-source-X.Y (e.g. debian:linux-source-6.12).
        #[arg(long, value_name = "debian:linux-source-X.Y")]
        source: String,
        /// Kconfig fragment merged on top of tinyconfig (e.g. vm-images/minimal-nat.config).
        #[arg(long, value_name = "FRAGMENT")]
        config: PathBuf,
        /// Patch applied with `patch -p1` before building. Repeatable, applied in order.
        #[arg(long = "patch", value_name = "FILE")]
        patches: Vec<PathBuf>,
        /// Parallel compile jobs (make -jN). Default: the number of cores.
        #[arg(long, short = 'j')]
        jobs: Option<usize>,
    },
}

/// A user error: exit 2 with this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// On the first SIGINT/SIGTERM stop every VM and let the run wind down (its
/// temporary files are removed, a partial report is printed); on the second, exit at once.
fn handle_signals() -> Arc<AtomicI32> {
    let received = Arc::new(AtomicI32::new(0));
    let seen = received.clone();
    if let Ok(mut signals) = Signals::new([SIGINT, SIGTERM]) {
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if seen.swap(sig, Ordering::SeqCst) != 0 {
                    std::process::exit(128 + sig);
                }
                eprintln!("natvet: interrupted, stopping the VMs (again to quit at once)");
                crate::qemu::cancel_all();
            }
        });
    }
    received
}

/// Run the command line; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        // Under `git bisect run` a malformed command line must stop the
        // bisection, not mark every commit bad (clap's exit 2).
        Err(e) if e.use_stderr() && std::env::args().any(|a| a == "--bisect-exit-codes") => {
            let _ = e.print();
            return crate::bisect::git_exit::ABORT;
        }
        Err(e) => e.exit(),
    };
    let interrupted = handle_signals();
    let code = run(cli);
    match interrupted.load(Ordering::SeqCst) {
        0 => code,
        sig => 128 + sig,
    }
}

fn run(cli: Cli) -> i32 {
    match dispatch(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("natvet: {e:#}");
            if e.downcast_ref::<UsageError>().is_some() {
                exit::USAGE
            } else {
                exit::INFRA
            }
        }
    }
}

fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

fn dispatch(cli: Cli) -> Result<i32> {
    match cli.command {
        Command::Vet(args) => vet_cmd(args),
        Command::Gate(args) => gate_cmd(args),
        Command::Soak(args) => soak_cmd(args),
        Command::Verify(args) => verify_cmd(args),
        Command::Checks(ChecksCmd::List) => {
            print!("{}", crate::catalogue::render());
            Ok(exit::PASS)
        }
        Command::Agent { job, results_fd } => Ok(crate::agent::main_host(&job, results_fd)),
        Command::Bisect(args) => bisect_cmd(args),
        Command::Report(ReportCmd::Merge { inputs, output }) => {
            let reports = inputs
                .iter()
                .map(|p| read_report(p))
                .collect::<Result<Vec<_>>>()?;
            let merged = RunReport::merge(reports).map_err(usage)?;
            write_json(&merged, &output)?;
            eprintln!("{}: {} kernel(s)", output.display(), merged.kernels.len());
            Ok(exit::PASS)
        }
        Command::Report(ReportCmd::Render { input, outputs }) => {
            let report = read_report(&input)?;
            print!("{}", report.render_table());
            write_outputs(&report, &outputs)?;
            Ok(report.exit_code())
        }
        Command::Scenarios(ScenariosCmd::List) => {
            for (name, _) in SHIPPED {
                let s = Scenario::load(name).map_err(|e| usage(e.to_string()))?;
                let slow = if s.slow {
                    " (slow: runs only when named)"
                } else {
                    ""
                };
                println!("{name:<20} {}{slow}", s.description);
            }
            Ok(exit::PASS)
        }
        Command::Scenarios(ScenariosCmd::Show { name }) => {
            match SHIPPED.iter().find(|(n, _)| *n == name) {
                Some((_, text)) => {
                    print!("{text}");
                    let s = Scenario::load(&name).map_err(|e| usage(e.to_string()))?;
                    let own = s.topology != natvet_default_topology();
                    println!(
                        "\n# The topology it runs in ({}), as built:",
                        if own {
                            "its own [topology]"
                        } else {
                            "the default: see the README's scenario reference"
                        }
                    );
                    for line in s.topology.describe(&s.relay.families).lines() {
                        println!("#{line}");
                    }
                    Ok(exit::PASS)
                }
                None => Err(usage(
                    Scenario::load(&name)
                        .err()
                        .map(|e| e.to_string())
                        .unwrap_or_default(),
                )),
            }
        }
        Command::Scenarios(ScenariosCmd::Check { path }) => {
            let s = Scenario::load(&path).map_err(|e| usage(e.to_string()))?;
            let backends: Vec<String> = s.backends.iter().map(|b| b.to_string()).collect();
            let families: Vec<String> = s.relay.families.iter().map(|f| f.to_string()).collect();
            println!(
                "{path}: scenario '{}' is valid: {} results per backend ({}), over {}, in {} namespaces ({})",
                s.name,
                s.result_names().len(),
                backends.join(", "),
                families.join(" and "),
                s.topology.namespaces.len(),
                s.topology.namespace_names().join(", ")
            );
            Ok(exit::PASS)
        }
        Command::Kernels(KernelsCmd::List { all }) => kernels_list(all),
        Command::Kernels(KernelsCmd::Build {
            source,
            config,
            patches,
            jobs,
        }) => kernels_build(source, config, patches, jobs),
        Command::Kernels(KernelsCmd::Fetch { specs, modules }) => {
            let cache = Cache::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
            let ui = Ui::new(false);
            // A set's name stands for its kernels.
            let sets = vet::kernel_set_names()?;
            let mut expanded = Vec::new();
            for s in specs {
                if sets.contains(&s) {
                    expanded.extend(vet::kernel_set(&s)?);
                } else {
                    expanded.push(s);
                }
            }
            let specs = parse_specs(&expanded, modules)?;
            for (spec, r) in
                vet::resolve_all(&specs, &cache, &ui).map_err(|e| usage(e.to_string()))?
            {
                match r {
                    Ok((k, ms)) => println!(
                        "{spec}: release {} boot {:?} image {} modules {} ({ms} ms)",
                        k.release.as_deref().unwrap_or("?"),
                        k.boot_kind,
                        k.boot_image.display(),
                        k.modules_dir
                            .as_ref()
                            .map(|d| d.display().to_string())
                            .unwrap_or_else(|| "none".into())
                    ),
                    Err(e) => {
                        eprintln!("{spec}: {e}");
                        return Ok(exit::INFRA);
                    }
                }
            }
            Ok(exit::PASS)
        }
    }
}

fn kernels_build(
    source: String,
    fragment: PathBuf,
    patches: Vec<PathBuf>,
    jobs: Option<usize>,
) -> Result<i32> {
    use crate::kernel::build::{self, BuildRequest};
    let req = BuildRequest {
        source,
        fragment,
        patches,
        jobs: jobs.unwrap_or_else(vet::host_cores),
    };
    let cache = Cache::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let progress = |line: &str| eprintln!("natvet: {line}");
    let t0 = std::time::Instant::now();
    match build::build(&req, &cache, &progress) {
        Ok(dir) => {
            eprintln!(
                "natvet: done in {:.0} s; vet it with: natvet vet --kernel build:{}",
                t0.elapsed().as_secs_f64(),
                dir.display()
            );
            println!("build:{}", dir.display());
            Ok(exit::PASS)
        }
        Err(e) if e.is_user_error() => Err(usage(e.to_string())),
        Err(e) => Err(anyhow::anyhow!("{e}")),
    }
}

fn kernels_list(all: bool) -> Result<i32> {
    let cache = Cache::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let quiet = |_: &str| {};
    for set in vet::kernel_set_names()? {
        println!("set {set}:");
        for entry in vet::kernel_set(&set)? {
            let spec = KernelSpec::parse(&entry, None).map_err(|e| usage(e.to_string()))?;
            let (release, cached) =
                crate::kernel::lookup(&spec, &cache, &quiet).map_err(|e| anyhow::anyhow!("{e}"))?;
            println!(
                "  {entry:<24} -> {:<28} {}",
                release.as_deref().unwrap_or("(not in the archive)"),
                if cached { "cached" } else { "not cached" }
            );
        }
    }
    if all {
        for c in crate::kernel::catalogues(&cache, &quiet).map_err(|e| anyhow::anyhow!("{e}"))? {
            print!("{c}");
        }
    }
    println!("cache: {}", cache.root().display());
    Ok(exit::PASS)
}

fn parse_specs(specs: &[String], modules: Option<PathBuf>) -> Result<Vec<KernelSpec>> {
    if modules.is_some() && specs.len() != 1 {
        return Err(usage("--modules goes with exactly one --kernel PATH"));
    }
    specs
        .iter()
        .map(|s| KernelSpec::parse(s, modules.clone()).map_err(|e| usage(e.to_string())))
        .collect()
}

/// The scenarios asked for, with their backends narrowed to --backend.
fn load_scenarios(checks: &CheckArgs) -> Result<Vec<Scenario>> {
    let names: Vec<String> = if checks.scenarios.is_empty() {
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
    Ok(scenarios)
}

/// Options for a run of `scenarios` on one or more kernels.
fn check_options(checks: &CheckArgs, scenarios: Vec<Scenario>) -> VetOptions {
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
        boot: vet::BootPreference::Auto,
        parallel: usize::from(checks.parallel.unwrap_or(3)),
    }
}

/// Scenarios and options common to vet and gate, validated before anything runs.
fn prepare(run: &RunArgs, specs: Vec<KernelSpec>) -> Result<VetOptions> {
    let scenarios = load_scenarios(&run.checks)?;
    if run.jobs == Some(0) {
        return Err(usage("--jobs must be at least 1"));
    }
    if run.cpus == Some(0) {
        return Err(usage("--cpus must be at least 1"));
    }
    if run.memory < 128 {
        return Err(usage(
            "--memory below 128 MiB cannot boot a Debian kernel with natvet's initramfs",
        ));
    }
    vet::check_host(&scenarios)?;
    let jobs = run.jobs.unwrap_or_else(|| vet::default_jobs(run.memory));
    if let Some(avail) = vet::available_memory_mb() {
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
        cpus: run.cpus.unwrap_or_else(|| vet::default_cpus(vms)),
        cmdline_extra: run.kernel_cmdline.clone(),
        boot: run.boot,
        ..check_options(&run.checks, scenarios)
    })
}

/// Refuse to start fetching kernels into a nearly full disk.
fn check_disk(cache: &Cache) -> Result<()> {
    const NEED_MB: u64 = 2048;
    let _ = std::fs::create_dir_all(cache.root());
    if let Ok(st) = nix::sys::statvfs::statvfs(cache.root()) {
        let free_mb = st.blocks_available() * st.fragment_size() / (1 << 20);
        if free_mb < NEED_MB {
            anyhow::bail!(
                "only {free_mb} MiB free under {} (the kernel cache); natvet needs about {NEED_MB} MiB to fetch and unpack kernels: free some space or point NATVET_CACHE elsewhere",
                cache.root().display()
            );
        }
    }
    Ok(())
}

fn execute(opts: &VetOptions, quiet: bool) -> Result<RunReport> {
    let cache = Cache::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    check_disk(&cache)?;
    let ui = Ui::new(quiet);
    let resolved =
        vet::resolve_all(&opts.kernels, &cache, &ui).map_err(|e| usage(e.to_string()))?;
    Ok(vet::run(opts, resolved, &ui))
}

/// The kernels named with --kernel, or the set named with --set (default: `default`).
fn kernel_specs(args: &VetArgs) -> Result<Vec<KernelSpec>> {
    let kernel_strings = if !args.kernels.is_empty() {
        args.kernels.clone()
    } else {
        vet::kernel_set(args.set.as_deref().unwrap_or("default"))
            .map_err(|e| usage(format!("{e:#}")))?
    };
    parse_specs(&kernel_strings, args.modules.clone())
}

fn vet_cmd(cmd: VetCmd) -> Result<i32> {
    if cmd.bisect_exit_codes {
        return Ok(vet_for_git_bisect(&cmd.vet, &cmd.checks));
    }
    let args = cmd.vet;
    // Validate everything the user gave before anything touches the network or boots.
    let specs = kernel_specs(&args)?;
    let opts = prepare(&args.run, specs)?;
    let report = execute(&opts, args.run.checks.quiet)?;
    finish(&report, &args.run.checks)?;
    Ok(report.exit_code())
}

fn verify_cmd(args: VerifyArgs) -> Result<i32> {
    let scenarios = load_scenarios(&args.checks)?;
    if args.dry_run {
        print!("{}", crate::verify::plan(&scenarios));
        return Ok(exit::PASS);
    }
    if let Some(why) = crate::verify::preflight() {
        return Err(usage(why));
    }
    let opts = VetOptions {
        parallel: usize::from(args.checks.parallel.unwrap_or(1)),
        ..check_options(&args.checks, scenarios)
    };
    let report = crate::verify::run(&opts, &Ui::new(args.checks.quiet));
    finish(&report, &args.checks)?;
    Ok(report.exit_code())
}

fn soak_cmd(args: SoakArgs) -> Result<i32> {
    if args.runs < 2 {
        return Err(usage("--runs must be at least 2 to compare anything"));
    }
    let specs = kernel_specs(&args.vet)?;
    let opts = prepare(&args.vet.run, specs)?;
    let cache = Cache::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let ui = Ui::new(true);
    let resolved =
        vet::resolve_all(&opts.kernels, &cache, &ui).map_err(|e| usage(e.to_string()))?;
    // (kernel, scenario, backend, check) -> status per run
    let mut verdicts: std::collections::BTreeMap<(String, String, String, String), Vec<String>> =
        Default::default();
    let mut infra = 0;
    let mut reports = Vec::new();
    let start = std::time::Instant::now();
    for run in 1..=args.runs {
        if crate::qemu::cancelled() {
            break;
        }
        let report = vet::run(&opts, resolved.clone(), &ui);
        reports.push(report.clone());
        for k in &report.kernels {
            if let crate::report::KernelState::InfraError { stage, reason, .. } = &k.state {
                infra += 1;
                eprintln!(
                    "run {run}: {} could not be tested ({stage}): {reason}",
                    k.label()
                );
            }
            for r in &k.results {
                verdicts
                    .entry((
                        k.label(),
                        r.scenario.clone(),
                        r.backend.clone(),
                        r.check.clone(),
                    ))
                    .or_default()
                    .push(r.status.label().to_string());
            }
        }
        let counts = report.counts();
        eprintln!(
            "run {run}/{}: {} results, {} failed, {:.1} s",
            args.runs,
            counts.values().sum::<usize>(),
            counts
                .get(&crate::protocol::Status::Fail)
                .copied()
                .unwrap_or(0),
            report.elapsed_ms as f64 / 1000.0
        );
    }
    let differing: Vec<_> = verdicts
        .iter()
        .filter(|(_, v)| v.iter().any(|s| s != &v[0]) || v.len() != args.runs)
        .collect();
    for ((k, s, b, c), v) in &differing {
        println!("DIFFERS {k}: {s} [{b}] {c}: {}", v.join(", "));
    }
    println!(
        "{} runs in {:.0} s: {} verdicts compared, {} differed, {infra} kernel run(s) not tested",
        args.runs,
        start.elapsed().as_secs_f64(),
        verdicts.len(),
        differing.len()
    );
    // Every run's results, as one report (each kernel holds all its runs' results).
    if let Ok(all) = RunReport::merge(reports) {
        if let Some(path) = &args.vet.run.checks.json {
            write_json(&all, path)?;
        }
        write_outputs(&all, &args.vet.run.checks.outputs)?;
    }
    Ok(if !differing.is_empty() {
        exit::FAIL
    } else if infra > 0 {
        exit::INFRA
    } else {
        exit::PASS
    })
}

fn gate_cmd(args: GateArgs) -> Result<i32> {
    let specs = parse_specs(&[args.baseline.clone(), args.candidate.clone()], None)?;
    let opts = prepare(&args.run, specs)?;
    let mut report = execute(&opts, args.run.checks.quiet)?;
    let (Some(baseline), Some(candidate)) = (report.kernels.first(), report.kernels.get(1)) else {
        anyhow::bail!("the gate needs both kernels' results");
    };
    let gate = crate::gate::compare(baseline, candidate);
    let code = gate.exit_code(baseline, candidate);
    print!("{}", gate.render());
    for k in &report.kernels {
        if let crate::report::KernelState::InfraError { stage, reason, .. } = &k.state {
            println!("{}: could not be tested ({stage}): {reason}", k.label());
        }
    }
    report.gate = Some(gate);
    write_outputs(&report, &args.run.checks.outputs)?;
    if let Some(path) = &args.run.checks.json {
        write_json(&report, path)?;
    }
    Ok(code)
}

fn read_report(path: &std::path::Path) -> Result<RunReport> {
    let bytes =
        std::fs::read(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        usage(format!(
            "{} is not a natvet JSON report ({e}); produce one with `natvet vet --json FILE`",
            path.display()
        ))
    })
}

fn write_json(report: &RunReport, path: &std::path::Path) -> Result<()> {
    let text = serde_json::to_string_pretty(report)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn write_outputs(report: &RunReport, outputs: &Outputs) -> Result<()> {
    use crate::report::render;
    if let Some(path) = &outputs.junit {
        std::fs::write(path, render::junit(report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &outputs.markdown {
        std::fs::write(path, render::markdown(report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &outputs.html {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("index.html");
        std::fs::write(&path, render::html(report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

fn finish(report: &RunReport, run: &CheckArgs) -> Result<()> {
    print!("{}", report.render_table());
    if let Some(path) = &run.json {
        write_json(report, path)?;
    }
    write_outputs(report, &run.outputs)
}

/// Every --check pattern must name a check of the chosen scenarios.
fn validate_checks(opts: &VetOptions, checks: &[String]) -> Result<()> {
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

/// `natvet vet --bisect-exit-codes`: the same run, answered in `git bisect run`'s codes.
fn vet_for_git_bisect(args: &VetArgs, checks: &[String]) -> i32 {
    use crate::bisect::git_exit;
    let give_up = |e: anyhow::Error, code: i32, why: &str| {
        eprintln!("natvet: {e:#}");
        eprintln!("natvet: exit {code} for git bisect: {why}");
        code
    };
    let specs = match kernel_specs(args) {
        Ok(s) => s,
        Err(e) => return give_up(e, git_exit::SKIP, "no kernel to test (skip)"),
    };
    let opts = match prepare(&args.run, specs).and_then(|o| validate_checks(&o, checks).map(|_| o))
    {
        Ok(o) => o,
        Err(e) => {
            return give_up(
                e,
                git_exit::ABORT,
                "natvet's options or host are wrong, which no commit changes (stop)",
            )
        }
    };
    let report = match execute(&opts, args.run.checks.quiet) {
        Ok(r) => r,
        Err(e) => return give_up(e, git_exit::SKIP, "this kernel cannot be tested (skip)"),
    };
    if let Err(e) = finish(&report, &args.run.checks) {
        eprintln!("natvet: {e:#}");
    }
    let code = crate::bisect::git_bisect_code(&report.kernels, checks);
    let what = match code {
        git_exit::GOOD => "good",
        git_exit::BAD => "bad",
        _ => "cannot test (skip)",
    };
    eprintln!("natvet: exit {code} for git bisect: {what}");
    code
}

/// Run one or two kernels as `vet` would.
fn test_kernels(opts: &VetOptions, specs: &[String], quiet: bool) -> Result<RunReport> {
    let mut o = opts.clone();
    o.kernels = parse_specs(specs, None)?;
    execute(&o, quiet)
}

fn bisect_cmd(args: BisectArgs) -> Result<i32> {
    use crate::bisect::{self as b, Answer, BadEnd, Role, Search, Step, Verdict};
    let started = chrono::Utc::now();
    let t0 = std::time::Instant::now();
    let good_spec = KernelSpec::parse(&args.good, None).map_err(|e| usage(e.to_string()))?;
    let bad_spec = KernelSpec::parse(&args.bad, None).map_err(|e| usage(e.to_string()))?;
    let ends = b::endpoints(&good_spec, &bad_spec).map_err(|e| usage(e.to_string()))?;
    let opts = prepare(&args.run, vec![])?;
    validate_checks(&opts, &args.checks)?;
    let cache = Cache::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let ui = Ui::new(args.run.checks.quiet);
    let progress = |m: &str| ui.println(m);
    let lineup = ends.lineup(&cache, &progress).map_err(|e| {
        if e.is_user_error() {
            usage(e.to_string())
        } else {
            anyhow::anyhow!("{e}")
        }
    })?;
    let bad = match lineup.bad {
        Some(c) => BadEnd::Package(c),
        None => {
            let k = crate::kernel::resolve(&bad_spec, &cache, &progress).map_err(|e| {
                if e.is_user_error() {
                    usage(e.to_string())
                } else {
                    anyhow::anyhow!("{e}")
                }
            })?;
            let release = k.release.ok_or_else(|| {
                usage(format!(
                    "cannot read the kernel release of {}: natvet needs it to know the line to bisect",
                    args.bad
                ))
            })?;
            BadEnd::Own {
                spec: args.bad.clone(),
                release,
            }
        }
    };
    let plan = b::plan(&lineup.releases, lineup.good, bad).map_err(|e| usage(e.to_string()))?;
    let n = plan.candidates.len();
    let mut report = plan.report(&args.checks, started.to_rfc3339());
    print!("{}", plan.header());
    let mut reports: Vec<RunReport> = Vec::new();
    let step = |run: &crate::report::KernelRun,
                role: Role,
                no: usize,
                spec: &str,
                version: Option<String>| {
        let (verdict, reason) = b::classify(run, &args.checks);
        Step {
            step: no,
            role,
            spec: spec.to_string(),
            release: run.release.clone().unwrap_or_default(),
            package_version: version,
            verdict,
            reason,
            failing: b::failing(run, &args.checks),
            seconds: (run.timings.resolve_ms + run.timings.total_ms) as f64 / 1000.0,
        }
    };
    let finish_bisect =
        |report: &mut b::BisectReport, reports: &[RunReport], code: i32| -> Result<i32> {
            report.elapsed_ms = t0.elapsed().as_millis() as u64;
            print!("{}", b::render_summary(report));
            if let Some(path) = &args.run.checks.json {
                let text = serde_json::to_string_pretty(report)?;
                std::fs::write(path, text)
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            if let Ok(all) = RunReport::merge(reports.to_vec()) {
                write_outputs(&all, &args.run.checks.outputs)?;
            }
            Ok(code)
        };

    // Both ends first (in parallel when --jobs allows): the range must be a regression range.
    ui.println(&format!(
        "testing the endpoints {} and {}",
        report.good, report.bad
    ));
    let ends = test_kernels(
        &opts,
        &[report.good.clone(), report.bad.clone()],
        args.run.checks.quiet,
    )?;
    let (Some(good_run), Some(bad_run)) = (ends.kernels.first(), ends.kernels.get(1)) else {
        anyhow::bail!("natvet lost the endpoints' results");
    };
    let good_step = step(
        good_run,
        Role::GoodEndpoint,
        0,
        &report.good,
        Some(plan.good.package.version.clone()),
    );
    let bad_version = match &plan.bad {
        BadEnd::Package(c) => Some(c.package.version.clone()),
        BadEnd::Own { .. } => None,
    };
    let bad_step = step(bad_run, Role::BadEndpoint, 0, &report.bad, bad_version);
    for s in [&good_step, &bad_step] {
        println!(
            "endpoint {} ... {} ({:.1} s): {}",
            s.spec,
            s.verdict.label(),
            s.seconds,
            s.reason
        );
    }
    let ends_ok = b::check_endpoints(
        &(good_step.verdict, good_step.reason.clone()),
        &(bad_step.verdict, bad_step.reason.clone()),
    );
    report.steps.extend([good_step, bad_step]);
    reports.push(ends);
    if crate::qemu::cancelled() {
        report.answer = Some(Answer::Interrupted);
        return finish_bisect(&mut report, &reports, exit::INFRA);
    }
    if let Err(e) = ends_ok {
        eprintln!("natvet: {e}");
        report.answer = Some(Answer::NoRange {
            reason: e.to_string(),
        });
        let code = if e.is_user_error() {
            exit::USAGE
        } else {
            exit::INFRA
        };
        return finish_bisect(&mut report, &reports, code);
    }

    let mut search = Search::new(n);
    while let Some(i) = search.next() {
        let no = search.steps() + 1;
        let total = search.steps() + search.remaining_estimate();
        let c = &plan.candidates[i];
        ui.println(&format!(
            "step {no}/{total}: testing {} ({}, {})",
            c.release, c.package.version, c.package.suite
        ));
        let spec = c.spec();
        let not_run = |reason: String| Step {
            step: no,
            role: Role::Candidate,
            spec: spec.clone(),
            release: c.release.clone(),
            package_version: Some(c.package.version.clone()),
            verdict: Verdict::Skip,
            reason,
            failing: vec![],
            seconds: 0.0,
        };
        let s = match test_kernels(&opts, std::slice::from_ref(&spec), args.run.checks.quiet) {
            Ok(r) => {
                let s = match r.kernels.first() {
                    Some(k) => step(
                        k,
                        Role::Candidate,
                        no,
                        &spec,
                        Some(c.package.version.clone()),
                    ),
                    None => not_run("the run reported no kernel".into()),
                };
                reports.push(r);
                s
            }
            Err(e) => not_run(format!("natvet could not get this kernel: {e:#}")),
        };
        if crate::qemu::cancelled() {
            println!("step {no}/{total}: {} ... interrupted", c.release);
            report.steps.push(s);
            report.bisection_steps = search.steps();
            report.answer = Some(Answer::Interrupted);
            return finish_bisect(&mut report, &reports, exit::INFRA);
        }
        println!(
            "step {no}/{total}: {} ... {} ({:.1} s)",
            c.release,
            s.verdict.label(),
            s.seconds
        );
        if s.verdict == Verdict::Skip {
            println!("  skipped: {}", s.reason);
        }
        search.record(i, s.verdict);
        report.steps.push(s);
    }
    report.bisection_steps = search.steps();
    report.skipped = search.skipped();
    let answer = plan.answer(&search.outcome());
    let code = match answer {
        Answer::Found { .. } => exit::PASS,
        _ => exit::INFRA,
    };
    report.answer = Some(answer);
    finish_bisect(&mut report, &reports, code)
}

fn natvet_default_topology() -> crate::scenario::TopologySpec {
    crate::scenario::TopologySpec::default()
}
