//! `natvet gate`: a baseline kernel and a candidate side by side, every
//! check classified (`report::gate`), exit 1 only when something regressed.

use super::error::Result;
use super::options::{parse_specs, prepare, RunArgs};
use super::output::{write_json, write_outputs};
use super::vet::execute;

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

pub fn exec(args: GateArgs) -> Result<i32> {
    let specs = parse_specs(&[args.baseline.clone(), args.candidate.clone()], None)?;
    let opts = prepare(&args.run, specs)?;
    let mut report = execute(&opts, &args.run.checks)?;
    let (Some(baseline), Some(candidate)) = (report.kernels.first(), report.kernels.get(1)) else {
        return Err(anyhow::anyhow!("the gate needs both kernels' results").into());
    };
    let gate = crate::report::gate::compare(baseline, candidate);
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
