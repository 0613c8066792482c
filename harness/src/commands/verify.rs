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
    /// Print what would be created (namespaces, links, addresses, rulesets,
    /// checks) and what the run would do to the host (modules), and exit.
    #[arg(long)]
    pub dry_run: bool,
    /// Keep the scenarios' sessions going this long ("90s", "10m") and
    /// report every second of it, as `natvet soak --duration` does.
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// Let the run make the kernel load the modules it needs (nf_tables,
    /// nf_nat, xt_*, wireguard, ...), which stay loaded after it ends.
    /// Without it, verify refuses (exit 2) when a module it needs is not
    /// loaded or built in, and names the modules.
    #[arg(long)]
    pub allow_module_load: bool,
}

pub fn exec(args: VerifyArgs) -> Result<i32> {
    let mut scenarios = load_scenarios(&args.checks)?;
    if let Some(s) = scenarios.iter().find(|s| s.relay.ruleset.is_some()) {
        return Err(usage(format!(
            "natvet verify does not load a relay's own ruleset (scenario '{}'): on a live host that ruleset is what already runs, and verify never touches it; vet the bundle in a VM with `natvet vet --relay`",
            s.name
        )));
    }
    let mut timeout = std::time::Duration::from_secs(args.checks.timeout);
    if let Some(d) = &args.duration {
        let seconds = super::soak::parse_duration(d)?;
        scenarios = super::soak::soaked(scenarios, seconds)?;
        timeout = timeout.max(std::time::Duration::from_secs(u64::from(seconds) + 900));
    }
    let impact = crate::verify::impact(&scenarios, args.checks.capture, std::path::Path::new("/"));
    if args.dry_run {
        print!(
            "{}",
            crate::verify::plan(&scenarios, &impact, args.allow_module_load)
        );
        return Ok(exit::PASS);
    }
    if let Some(why) = crate::verify::preflight() {
        return Err(usage(why));
    }
    // Before anything is created: what a namespace cannot hold.
    if let Some(why) = impact.refusal(args.allow_module_load) {
        return Err(usage(why));
    }
    let ui = args.checks.ui();
    let name = crate::verify::run_name();
    let notes = vec![
        impact.modules_summary(args.allow_module_load),
        format!(
            "output: {} (a folder of this run's own)",
            args.checks.out.join(&name).display()
        ),
    ];
    for n in &notes {
        ui.println(&format!("natvet verify: {n}"));
    }
    let opts = VetOptions {
        parallel: usize::from(args.checks.parallel.unwrap_or(1)),
        timeout,
        run_id: Some(name),
        // A live server's CPU is its users': no load tests there.
        perf: crate::protocol::job::PerfMode::Skip,
        ..check_options(&args.checks, scenarios)
    };
    let report = crate::verify::run(&opts, &notes, &ui);
    finish(&report, &args.checks)?;
    Ok(report.exit_code())
}
