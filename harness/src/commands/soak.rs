//! `natvet soak`: the same kernels and scenarios N times; any verdict that
//! differs between runs is reported. With `--duration`, instead, one long
//! run: the scenarios' sessions kept going for that long, every second of
//! it recorded (a series per session, plotted in the HTML report), and the
//! first moment anything stopped reported.

use std::time::Duration;

use super::error::{usage, Result};
use super::options::{kernel_specs, prepare, VetArgs};
use super::output::{finish, write_json, write_outputs};
use crate::checks::kernel_health::KernelHealth;
use crate::checks::CheckSpec;
use crate::kernel::Cache;
use crate::report::{exit, RunReport};
use crate::scenario::Scenario;
use crate::ui::Ui;
use crate::vet;

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    #[command(flatten)]
    pub vet: VetArgs,
    /// How many times to run (2-1000).
    #[arg(long, default_value_t = 20, value_parser = |s: &str| RUNS.parse_arg(s).map(|n| n as usize))]
    pub runs: usize,
    /// Instead of --runs: keep the scenarios' sessions going this long
    /// ("90s", "10m", "2h") in one run, and report each second of it.
    #[arg(long, value_name = "DURATION", conflicts_with = "runs")]
    pub duration: Option<String>,
}

/// How many runs a soak compares.
pub(super) const RUNS: crate::bounds::Limit = crate::bounds::Limit::new(
    "--runs",
    2,
    1000,
    "fewer than two runs compare nothing, and every run boots every kernel again and keeps its results for the comparison",
);

/// How long a soak keeps its sessions going.
pub(super) const DURATION: crate::bounds::Limit = crate::bounds::Limit::new(
    "--duration",
    1,
    86_400,
    "a day is the longest soak, and every session-second is kept in the guest (each session check limits ports x duration)",
)
.unit(" s");

/// "90s", "10m", "2h", "1h30m" or plain seconds.
pub(super) fn parse_duration(text: &str) -> Result<u32> {
    let bad = || {
        usage(format!(
            "--duration {text}: write seconds, or a number with s, m or h (e.g. 90s, 10m, 2h)"
        ))
    };
    let mut total: u64 = 0;
    let mut digits = String::new();
    for c in text.trim().chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() {
        total = total.saturating_add(digits.parse::<u64>().map_err(|_| bad())?);
    }
    DURATION
        .check_derived(total, format!("{text} ({total} s)"))
        .map_err(|e| usage(e.to_string()))?;
    Ok(total as u32)
}

/// The scenarios of a soak: of each scenario, its session checks lasting
/// `seconds` (and kernel-health), one scenario per family so that every
/// family's sessions run at once.
pub(super) fn soaked(scenarios: Vec<Scenario>, seconds: u32) -> Result<Vec<Scenario>> {
    let mut out = Vec::new();
    for s in scenarios {
        let sessions: Vec<CheckSpec> = s
            .checks
            .iter()
            .filter_map(|c| match c {
                CheckSpec::Session(x) => {
                    let mut x = x.clone();
                    x.duration = seconds.max(x.active);
                    Some(CheckSpec::Session(x))
                }
                _ => None,
            })
            .collect();
        if sessions.is_empty() {
            continue;
        }
        for (i, f) in s.relay.families.iter().enumerate() {
            let mut d = s.clone();
            d.checks = sessions.clone();
            d.checks.push(CheckSpec::KernelHealth(KernelHealth {}));
            d.relay.families = vec![*f];
            if i > 0 {
                d.name = format!("{}-{f}", s.name);
            }
            // The sessions now last --duration: the scenario's limits again.
            d.revalidate(&format!("'{}' kept going for {seconds} s", s.name))
                .map_err(|e| {
                    usage(format!(
                        "{e}; --duration sets every session's duration: give a shorter one, or a scenario with fewer session ports"
                    ))
                })?;
            out.push(d);
        }
    }
    if out.is_empty() {
        return Err(usage(
            "none of the scenarios has a session check, and a soak keeps sessions going: name one that has (the shipped extended-ports does)",
        ));
    }
    Ok(out)
}

/// One long run of `soaked` scenarios: all their runs at once, the overall
/// timeout stretched to fit.
fn soak_for(mut args: SoakArgs, duration: &str) -> Result<i32> {
    let seconds = parse_duration(duration)?;
    let specs = kernel_specs(&args.vet)?;
    let mut opts = prepare(&args.vet.run, specs)?;
    opts.scenarios = soaked(std::mem::take(&mut opts.scenarios), seconds)?;
    let runs: usize = opts.scenarios.iter().map(|s| s.backends.len()).sum();
    opts.parallel = runs.clamp(1, 32);
    opts.timeout = opts
        .timeout
        .max(Duration::from_secs(u64::from(seconds) + 900));
    let cache = Cache::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let ui = args.vet.run.checks.ui();
    let resolved =
        vet::resolve_all(&opts.kernels, &cache, &ui).map_err(|e| usage(e.to_string()))?;
    eprintln!(
        "soak: {runs} scenario run(s) at once for {seconds} s on {} kernel(s)",
        resolved.len()
    );
    let report = vet::run(&opts, resolved, &ui);
    args.vet
        .run
        .checks
        .json
        .get_or_insert_with(|| opts.out_dir.join("soak.json"));
    finish(&report, &args.vet.run.checks)?;
    Ok(report.exit_code())
}

pub fn exec(args: SoakArgs) -> Result<i32> {
    if let Some(d) = args.duration.clone() {
        return soak_for(args, &d);
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
        if crate::launcher::cancelled() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_people_write_them() {
        assert_eq!(parse_duration("90").ok(), Some(90));
        assert_eq!(parse_duration("90s").ok(), Some(90));
        assert_eq!(parse_duration("10m").ok(), Some(600));
        assert_eq!(parse_duration("1h30m").ok(), Some(5400));
        for bad in ["", "0", "ten", "5d", "25h", "m"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_soak_keeps_the_sessions_one_scenario_per_family() {
        let s = Scenario::load("extended-ports").unwrap();
        let soak = soaked(vec![s], 600).unwrap();
        let names: Vec<&str> = soak.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["extended-ports", "extended-ports-ipv6"]);
        for s in &soak {
            assert_eq!(s.relay.families.len(), 1);
            assert!(s.checks.iter().all(|c| matches!(
                c,
                CheckSpec::Session(x) if x.duration == 600
            ) || matches!(c, CheckSpec::KernelHealth(_))));
        }
        assert!(soaked(vec![Scenario::load("pmtu").unwrap()], 60).is_err());
        // A day of extended-ports' seven sessions would keep about 700 MiB
        // of probe records in the guest: refused before anything boots.
        let e = soaked(vec![Scenario::load("extended-ports").unwrap()], 86_400)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("ports x duration = 7 x 86400 = 604800 must be between 3 and 50000")
                && e.contains("--duration sets"),
            "{e}"
        );
        assert!(soaked(vec![Scenario::load("extended-ports").unwrap()], 7_000).is_ok());
    }
}
