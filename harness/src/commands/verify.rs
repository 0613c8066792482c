//! `natvet verify`: the checks on this machine's running kernel, no VM.

use super::error::{usage, Result};
use super::options::{check_options, load_scenarios, CheckArgs};
use super::output::finish;
use crate::report::exit;
use crate::vet::VetOptions;

#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    #[command(flatten)]
    pub checks: CheckArgs,
    /// Print what would be created (namespaces, links, addresses, rulesets, checks) and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the scenarios' sessions going this long ("90s", "10m") and
    /// report every second of it, as `natvet soak --duration` does.
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
}

pub fn exec(args: VerifyArgs) -> Result<i32> {
    let mut scenarios = load_scenarios(&args.checks)?;
    let mut timeout = std::time::Duration::from_secs(args.checks.timeout);
    if let Some(d) = &args.duration {
        let seconds = super::soak::parse_duration(d)?;
        scenarios = super::soak::soaked(scenarios, seconds)?;
        timeout = timeout.max(std::time::Duration::from_secs(u64::from(seconds) + 900));
    }
    if args.dry_run {
        print!("{}", crate::verify::plan(&scenarios));
        return Ok(exit::PASS);
    }
    if let Some(why) = crate::verify::preflight() {
        return Err(usage(why));
    }
    let opts = VetOptions {
        parallel: usize::from(args.checks.parallel.unwrap_or(1)),
        timeout,
        ..check_options(&args.checks, scenarios)
    };
    let report = crate::verify::run(&opts, &args.checks.ui());
    finish(&report, &args.checks)?;
    Ok(report.exit_code())
}
