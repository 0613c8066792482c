//! `natvet soak`: the same kernels and scenarios N times; any verdict that
//! differs between runs is reported.

use super::error::{usage, Result};
use super::options::{kernel_specs, prepare, VetArgs};
use super::output::{write_json, write_outputs};
use crate::kernel::Cache;
use crate::report::{exit, RunReport};
use crate::ui::Ui;
use crate::vet;

#[derive(clap::Args, Debug)]
pub struct SoakArgs {
    #[command(flatten)]
    pub vet: VetArgs,
    /// How many times to run.
    #[arg(long, default_value_t = 20)]
    pub runs: usize,
}

pub fn exec(args: SoakArgs) -> Result<i32> {
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
