//! `natvet gate`: a baseline kernel and a candidate side by side, every
//! check classified (`report::gate`), then their performance compared over
//! boots that alternate between them (`report::perf`); exit 1 only when
//! something regressed.

use std::time::Instant;

use super::error::{usage, Result};
use super::options::{parse_specs, prepare, relay_scenario, RunArgs};
use super::output::{write_json, write_outputs};
use crate::kernel::Cache;
use crate::protocol::job::PerfMode;
use crate::report::exit;
use crate::report::{KernelRun, KernelState};
use crate::scenario::Scenario;
use crate::vet::{self, Resolution, VetOptions};

#[derive(clap::Args, Debug)]
pub struct GateArgs {
    /// The kernel production runs today (any --kernel form).
    #[arg(
        long,
        value_name = "SPEC",
        required_unless_present = "relay_baseline",
        requires = "candidate"
    )]
    pub baseline: Option<String>,
    /// The kernel about to be rolled out.
    #[arg(long, value_name = "SPEC", requires = "baseline")]
    pub candidate: Option<String>,
    /// Gate a ruleset change: the relay bundle production runs today. Each
    /// kernel (--kernel, default: the default set) runs it as the baseline
    /// and --relay-candidate as the candidate, both held to what this
    /// bundle's ruleset promises.
    #[arg(long, value_name = "BUNDLE", requires = "relay_candidate", conflicts_with_all = ["baseline", "candidate", "candidate_scenarios"])]
    pub relay_baseline: Option<std::path::PathBuf>,
    /// The relay bundle about to be deployed (with --relay-baseline).
    #[arg(long, value_name = "BUNDLE", requires = "relay_baseline")]
    pub relay_candidate: Option<std::path::PathBuf>,
    /// With --relay-baseline: the kernels to gate the change on (any
    /// --kernel form; repeatable). Default: the default kernel set.
    #[arg(long = "kernel", value_name = "SPEC", requires = "relay_baseline")]
    pub kernels: Vec<String>,
    /// A scenario the candidate runs in place of the --scenario of the same
    /// name (a name or a .toml file): a ruleset or configuration change
    /// gated on its own, or with a new kernel. Repeatable.
    #[arg(long = "candidate-scenario", value_name = "NAME|PATH")]
    pub candidate_scenarios: Vec<String>,
    /// Boots of each kernel for the performance comparison, alternated
    /// baseline, candidate, baseline, ... (2-20).
    #[arg(long, default_value_t = 3, value_parser = |s: &str| PERF_RUNS.parse_arg(s).map(|n| n as usize))]
    pub perf_runs: usize,
    /// How much worse a performance figure must be, with 95% confidence,
    /// to be a regression (1.05-100; 1.5: half again as slow).
    #[arg(long, default_value_t = 1.5, value_parser = parse_threshold)]
    pub perf_threshold: f64,
    #[command(flatten)]
    pub run: RunArgs,
}

const PERF_RUNS: crate::bounds::Limit = crate::bounds::Limit::new(
    "--perf-runs",
    2,
    20,
    "a confidence interval needs two figures on each side, and each boot takes about 20 s under TCG: 20 of each are some 15 minutes",
);

fn parse_threshold(s: &str) -> std::result::Result<f64, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("'{s}' is not a number: give a ratio such as 1.5"))?;
    if !(1.05..=100.0).contains(&v) {
        return Err(format!(
            "--perf-threshold {v} must be between 1.05 and 100: below 1.05 the noise of TCG alone is a regression, and 100 is a kernel that no longer forwards"
        ));
    }
    Ok(v)
}

pub fn exec(args: GateArgs) -> Result<i32> {
    let (Some(base), Some(cand)) = (&args.relay_baseline, &args.relay_candidate) else {
        let pair = [
            args.baseline.clone().unwrap_or_default(),
            args.candidate.clone().unwrap_or_default(),
        ];
        let json = args.run.checks.json.as_deref();
        return gate(&args, &pair, None, &args.run.checks.outputs, json);
    };
    // A ruleset change: both bundles on each kernel, the candidate in the
    // baseline's place and held to the baseline's promise.
    let before = relay_scenario(base, None)?;
    let mut after = relay_scenario(cand, Some(base))?;
    after.name = before.name.clone();
    let kernels = if args.kernels.is_empty() {
        crate::kernel_sets::kernel_set("default").map_err(|e| usage(format!("{e:#}")))?
    } else {
        args.kernels.clone()
    };
    parse_specs(&kernels, None)?;
    let mut codes = Vec::new();
    for k in &kernels {
        // Each kernel's gate writes reports of its own when there are several.
        let part = |p: &std::path::Path| match kernels.len() {
            1 => p.to_path_buf(),
            _ => super::options::part_path(p, k),
        };
        let c = &args.run.checks;
        let outputs = super::options::Outputs {
            junit: c.outputs.junit.as_deref().map(part),
            markdown: c.outputs.markdown.as_deref().map(part),
            html: c.outputs.html.as_deref().map(part),
        };
        let json = c.json.as_deref().map(part);
        println!(
            "gate: the ruleset change from {} to {} on {k}",
            base.display(),
            cand.display()
        );
        codes.push(gate(
            &args,
            &[k.clone(), k.clone()],
            Some((before.clone(), after.clone())),
            &outputs,
            json.as_deref(),
        )?);
    }
    Ok([exit::USAGE, exit::FAIL, exit::INFRA]
        .into_iter()
        .find(|c| codes.contains(c))
        .unwrap_or(exit::PASS))
}

/// One gate of a baseline and a candidate kernel; with `relay`, the
/// baseline runs its first scenario and the candidate its second.
fn gate(
    args: &GateArgs,
    pair: &[String; 2],
    relay: Option<(Scenario, Scenario)>,
    outputs: &super::options::Outputs,
    json: Option<&std::path::Path>,
) -> Result<i32> {
    let specs = parse_specs(pair, None)?;
    let mut opts = prepare(&args.run, specs)?;
    // A ruleset gate's candidate is its bundle; --candidate-scenario is
    // for the kernel gate.
    let replacements: &[String] = match relay {
        Some(_) => &[],
        None => &args.candidate_scenarios,
    };
    if let Some((before, _)) = &relay {
        // Only the bundles, unless --scenario or --relay name more.
        let c = &args.run.checks;
        if c.scenarios.is_empty() && c.relays.is_empty() {
            opts.scenarios.clear();
        }
        opts.scenarios.retain(|s| s.name != before.name);
        opts.scenarios.push(before.clone());
    }
    let mut candidate_scenarios = side_scenarios(&opts.scenarios, replacements)?;
    if let Some((_, after)) = relay {
        if let Some(slot) = candidate_scenarios
            .iter_mut()
            .find(|s| s.name == after.name)
        {
            *slot = after;
        }
    }
    crate::provision::check_host(&candidate_scenarios)?;
    let with_perf = opts.perf != PerfMode::Skip
        && opts
            .scenarios
            .iter()
            .chain(&candidate_scenarios)
            .any(|s| s.perf.is_some());
    // The correctness boots run the checks only: the probes need the
    // machine to themselves.
    opts.perf = PerfMode::Skip;
    let cache = Cache::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let ui = args.run.checks.ui();
    let resolved =
        vet::resolve_all(&opts.kernels, &cache, &ui).map_err(|e| usage(e.to_string()))?;
    let [base_res, cand_res]: [Resolution; 2] = resolved
        .try_into()
        .map_err(|_| anyhow::anyhow!("the gate resolves exactly two kernels"))?;
    let names = side_names(&base_res, &cand_res);

    let side = |scenarios: &[Scenario], name: &Option<String>| VetOptions {
        jobs: 1,
        scenarios: scenarios.to_vec(),
        run_id: name.clone(),
        ..opts.clone()
    };
    let base_opts = side(&opts.scenarios, &names.0);
    let cand_opts = side(&candidate_scenarios, &names.1);
    let (base_report, cand_report) = std::thread::scope(|s| {
        let b = s.spawn(|| vet::run(&base_opts, vec![base_res.clone()], &ui));
        let c = vet::run(&cand_opts, vec![cand_res.clone()], &ui);
        (b.join(), c)
    });
    let mut report = base_report.map_err(|_| anyhow::anyhow!("the baseline's run panicked"))?;
    report.elapsed_ms = report.elapsed_ms.max(cand_report.elapsed_ms);
    report.kernels.extend(cand_report.kernels);
    let (Some(baseline), Some(candidate)) = (report.kernels.first(), report.kernels.get(1)) else {
        return Err(anyhow::anyhow!("the gate needs both kernels' results").into());
    };
    let mut gate = crate::report::gate::compare(baseline, candidate);

    let testable = |k: &KernelRun| k.state == KernelState::Completed;
    if with_perf && testable(baseline) && testable(candidate) {
        let perf_opts = |scenarios: &[Scenario]| VetOptions {
            jobs: 1,
            cpus: args
                .run
                .cpus
                .unwrap_or_else(|| crate::host::default_cpus(1)),
            perf: PerfMode::Only,
            scenarios: scenarios
                .iter()
                .filter(|s| s.perf.is_some())
                .cloned()
                .collect(),
            out_dir: opts.out_dir.join("perf"),
            ..opts.clone()
        };
        let (pb, pc) = (perf_opts(&opts.scenarios), perf_opts(&candidate_scenarios));
        let start = Instant::now();
        let (mut bb, mut cb) = (Vec::new(), Vec::new());
        let (bl, cl) = (baseline.label(), candidate.label());
        for i in 1..=args.perf_runs {
            for (o, res, label, boots) in [
                (&pb, &base_res, &bl, &mut bb),
                (&pc, &cand_res, &cl, &mut cb),
            ] {
                if crate::launcher::cancelled() {
                    break;
                }
                let o = VetOptions {
                    run_id: Some(format!("{label} perf {i}")),
                    ..o.clone()
                };
                boots.extend(vet::run(&o, vec![res.clone()], &ui).kernels);
            }
        }
        let mut perf = crate::report::perf::compare(&bb, &cb, args.perf_threshold);
        perf.elapsed_ms = start.elapsed().as_millis() as u64;
        gate.perf = Some(perf);
    } else if with_perf {
        ui.println("gate: performance not compared: a kernel could not be tested");
    }
    let code = gate.exit_code(baseline, candidate);
    print!("{}", gate.render());
    for k in &report.kernels {
        if let KernelState::InfraError { stage, reason, .. } = &k.state {
            println!("{}: could not be tested ({stage}): {reason}", k.label());
        }
    }
    report.gate = Some(gate);
    write_outputs(&report, outputs)?;
    if let Some(path) = json {
        write_json(&report, path)?;
    }
    Ok(code)
}

/// The candidate's scenarios: the baseline's, each replaced by the
/// --candidate-scenario of its name.
fn side_scenarios(baseline: &[Scenario], replacements: &[String]) -> Result<Vec<Scenario>> {
    let mut out = baseline.to_vec();
    for r in replacements {
        let s = Scenario::load(r).map_err(|e| usage(e.to_string()))?;
        let Some(slot) = out.iter_mut().find(|b| b.name == s.name) else {
            return Err(usage(format!(
                "--candidate-scenario {r} is scenario '{}', which the baseline does not run ({}): it replaces the scenario of the same name, so name it with --scenario too",
                s.name,
                baseline
                    .iter()
                    .map(|b| b.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        *slot = s;
    }
    Ok(out)
}

/// Each side's name in the report when both are the same release:
/// "RELEASE [baseline]" and "RELEASE [candidate]".
fn side_names(b: &Resolution, c: &Resolution) -> (Option<String>, Option<String>) {
    let release = |r: &Resolution| r.1.as_ref().ok().and_then(|(k, _)| k.release.clone());
    match (release(b), release(c)) {
        (Some(x), Some(y)) if x == y => (
            Some(format!("{x} [baseline]")),
            Some(format!("{y} [candidate]")),
        ),
        _ => (None, None),
    }
}
