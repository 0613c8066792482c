//! The command line: parse, validate everything before anything runs, then act.
//!
//! One file per subcommand, each with its own arguments and an `exec` that
//! answers with an exit code; the option groups several commands share are in
//! `options`, writing a finished run's reports in `output`.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;

use clap::{Parser, Subcommand};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

mod agent;
mod bisect;
mod checks;
mod error;
mod explain;
mod gate;
mod kernels;
mod options;
mod output;
mod relay;
mod report;
mod scenarios;
mod soak;
mod verify;
mod vet;

pub use error::CliError;
use error::Result;

#[derive(Parser, Debug)]
#[command(
    name = "natvet",
    version,
    about = "Boots Linux kernels in QEMU and proves, with real packets, that WireGuard + NAT forwarding works"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub repositories: RepositoryArgs,
}

/// Apt repositories besides Debian's archive and vm-images/matrix.toml's,
/// for every command that takes kernel specs.
#[derive(clap::Args, Debug)]
pub struct RepositoryArgs {
    /// An apt repository to take kernels from, as `NAME=URI suites=S1,S2
    /// [components=main] [keyring=PATH] [naming=debian|ubuntu] [flavour=F]`,
    /// or a TOML file of [[repository]] entries; its kernels are then
    /// NAME:LINE, NAME:RELEASE, NAME:SUITE. Repeatable.
    #[arg(long = "repository", value_name = "REPO", global = true)]
    pub repositories: Vec<String>,
    /// Read the --repository repositories without checking their
    /// signatures (a local test repository); the results say so.
    #[arg(long, global = true)]
    pub allow_unsigned: bool,
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
    Vet(vet::VetCmd),
    /// Show the shipped scenarios, or validate one.
    #[command(subcommand)]
    Scenarios(scenarios::ScenariosCmd),
    /// The check catalogue: every check kind, its results, timeout and what passes.
    #[command(subcommand)]
    Checks(checks::ChecksCmd),
    /// What a check proves, the behaviour it belongs to, how it runs, how
    /// it can fail and where to look first, and the last evidence kept for
    /// it (under --out): `natvet explain handshake/53`.
    Explain(explain::ExplainArgs),
    /// Resolve (and fetch into the cache) kernels without booting them.
    #[command(subcommand)]
    Kernels(kernels::KernelsCmd),
    /// Compare a candidate kernel with the baseline production runs: classify
    /// every check as regressed, fixed, unchanged or unsupported.
    ///
    /// Exit codes: 0 nothing regressed, 1 a check regressed, 2 bad input, 3 could not compare.
    Gate(gate::GateArgs),
    /// Merge and render JSON reports.
    #[command(subcommand)]
    Report(report::ReportCmd),
    /// A production relay as a bundle (its ruleset, sysctls and interfaces),
    /// for `natvet vet --relay` and `natvet gate --relay...`.
    #[command(subcommand)]
    Relay(relay::RelayCmd),
    /// Run the same kernels and scenarios N times and report any verdict that
    /// differs between runs (natvet must give the same answer every time); or,
    /// with --duration, keep the scenarios' sessions going that long and
    /// report every second of it (plotted in --html).
    ///
    /// Exit codes: 0 every run agreed (or every session held), 1 a verdict
    /// differed (or a session stopped), 2 bad input, 3 a run could not test.
    Soak(soak::SoakArgs),
    /// Run the checks on this machine's running kernel, without a VM (right
    /// after a deploy). Everything lives in namespaces natvet owns; the host's
    /// interfaces, routes, rulesets, sysctls and conntrack are not touched.
    /// Refused up front: kernel modules the run would load (unless
    /// --allow-module-load) and kernel-wide sysctls set in a namespace.
    /// Checks the kernel cannot run (WireGuard when it lacks it) are unsupported.
    ///
    /// Exit codes: 0 all checks passed, 1 a check failed, 2 bad input (or
    /// refused, saying why), 3 natvet could not test.
    Verify(verify::VerifyArgs),
    /// Internal: the agent of `natvet verify`, started by natvet itself.
    #[command(hide = true)]
    Agent(agent::AgentArgs),
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
    Bisect(bisect::BisectArgs),
}

/// On the first SIGINT/SIGTERM stop every VM and let the run wind down (its
/// temporary files are removed, a partial report is printed); on the second, exit at once.
fn handle_signals() -> Arc<AtomicI32> {
    let received = Arc::new(AtomicI32::new(0));
    let seen = received.clone();
    if let Ok(mut signals) = Signals::new([SIGINT, SIGTERM]) {
        std::thread::spawn(move || {
            for sig in signals.forever() {
                if seen.swap(sig, Ordering::SeqCst) != 0 {
                    // Whatever a build or unpack left running goes too: no
                    // make goes on writing into a folder once its lock is free.
                    crate::child::kill_all();
                    std::process::exit(128 + sig);
                }
                eprintln!("natvet: interrupted, stopping the VMs (again to quit at once)");
                crate::kernel::archive::cancel_downloads();
                crate::launcher::cancel_all();
                crate::child::kill_all();
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
            eprintln!("natvet: {e}");
            e.exit_code()
        }
    }
}

fn dispatch(cli: Cli) -> Result<i32> {
    let r = &cli.repositories;
    crate::kernel::repository::configure(&r.repositories, r.allow_unsigned)
        .map_err(|e| error::usage(e.to_string()))?;
    match cli.command {
        Command::Vet(args) => vet::exec(args),
        Command::Gate(args) => gate::exec(args),
        Command::Soak(args) => soak::exec(args),
        Command::Verify(args) => verify::exec(args),
        Command::Checks(cmd) => checks::exec(cmd),
        Command::Explain(args) => explain::exec(args),
        Command::Agent(args) => Ok(agent::exec(args)),
        Command::Bisect(args) => bisect::exec(args),
        Command::Report(cmd) => report::exec(cmd),
        Command::Relay(cmd) => relay::exec(cmd),
        Command::Scenarios(cmd) => scenarios::exec(cmd),
        Command::Kernels(cmd) => kernels::exec(cmd),
    }
}
