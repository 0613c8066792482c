//! `natvet vet`: run kernels, print the kernel x check table, write the
//! reports; with --bisect-exit-codes, answer in `git bisect run`'s codes.
//! `execute` runs kernels exactly as `vet` does, for `gate` and `bisect` too.

use super::error::{usage, CliError, Result};
use super::options::{kernel_specs, prepare, validate_checks, CheckArgs, VetArgs};
use super::output::finish;
use crate::kernel::Cache;
use crate::report::RunReport;
use crate::vet::{self, VetOptions};

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

pub fn exec(cmd: VetCmd) -> Result<i32> {
    if cmd.bisect_exit_codes {
        return Ok(vet_for_git_bisect(&cmd.vet, &cmd.checks));
    }
    let args = cmd.vet;
    // Validate everything the user gave before anything touches the network or boots.
    let specs = kernel_specs(&args)?;
    let opts = prepare(&args.run, specs)?;
    let report = execute(&opts, &args.run.checks)?;
    finish(&report, &args.run.checks)?;
    Ok(report.exit_code())
}

/// `natvet vet --bisect-exit-codes`: the same run, answered in `git bisect run`'s codes.
fn vet_for_git_bisect(args: &VetArgs, checks: &[String]) -> i32 {
    use crate::bisect::git_exit;
    let give_up = |e: CliError, code: i32, why: &str| {
        eprintln!("natvet: {e}");
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
    let report = match execute(&opts, &args.run.checks) {
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

/// Refuse to start fetching kernels into a nearly full disk.
fn check_disk(cache: &Cache) -> anyhow::Result<()> {
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

pub(super) fn execute(opts: &VetOptions, checks: &CheckArgs) -> Result<RunReport> {
    let cache = Cache::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    check_disk(&cache)?;
    let ui = checks.ui();
    let resolved =
        vet::resolve_all(&opts.kernels, &cache, &ui).map_err(|e| usage(e.to_string()))?;
    Ok(vet::run(opts, resolved, &ui))
}
