//! `natvet bisect`: the first failing Debian kernel package of one line.
//! The search itself is `crate::bisect`; this runs each kernel as `vet` does.

use anyhow::Context;

use super::error::{usage, Result};
use super::options::{parse_specs, prepare, validate_checks, CheckArgs, RunArgs};
use super::output::write_outputs;
use super::vet::execute;
use crate::kernel::{Cache, KernelSpec};
use crate::report::{exit, RunReport};
use crate::vet::VetOptions;

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

/// Run one or two kernels as `vet` would.
fn test_kernels(opts: &VetOptions, specs: &[String], checks: &CheckArgs) -> Result<RunReport> {
    let mut o = opts.clone();
    o.kernels = parse_specs(specs, None)?;
    execute(&o, checks)
}

pub fn exec(args: BisectArgs) -> Result<i32> {
    use crate::bisect::{self as b, Answer, BadEnd, Role, Search, Step, Verdict};
    let started = chrono::Utc::now();
    let t0 = std::time::Instant::now();
    let good_spec = KernelSpec::parse(&args.good, None).map_err(|e| usage(e.to_string()))?;
    let bad_spec = KernelSpec::parse(&args.bad, None).map_err(|e| usage(e.to_string()))?;
    let ends = b::endpoints(&good_spec, &bad_spec).map_err(|e| usage(e.to_string()))?;
    let opts = prepare(&args.run, vec![])?;
    validate_checks(&opts, &args.checks)?;
    let cache = Cache::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let ui = args.run.checks.ui();
    let progress = |m: &str| ui.println(m);
    let lineup = ends.lineup(&cache, &progress).map_err(|e| {
        if e.is_user_error() {
            usage(e.to_string())
        } else {
            anyhow::anyhow!("{e}").into()
        }
    })?;
    let bad = match lineup.bad {
        Some(c) => BadEnd::Package(c),
        None => {
            let k = crate::kernel::resolve(&bad_spec, &cache, &progress).map_err(|e| {
                if e.is_user_error() {
                    usage(e.to_string())
                } else {
                    anyhow::anyhow!("{e}").into()
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
                let text = serde_json::to_string_pretty(report).map_err(anyhow::Error::from)?;
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
        &args.run.checks,
    )?;
    let (Some(good_run), Some(bad_run)) = (ends.kernels.first(), ends.kernels.get(1)) else {
        return Err(anyhow::anyhow!("natvet lost the endpoints' results").into());
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
    if crate::launcher::cancelled() {
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
        let s = match test_kernels(&opts, std::slice::from_ref(&spec), &args.run.checks) {
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
        if crate::launcher::cancelled() {
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
