//! `natvet report`: merge the JSON reports of matrix shards, or render one.

use std::path::PathBuf;

use clap::Subcommand;

use super::error::{usage, Result};
use super::options::Outputs;
use super::output::{read_report, write_json, write_outputs};
use crate::report::terminal::TableStyle;
use crate::report::{exit, RunReport};

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
        /// The table on stdout: the verdict first and one row per scenario
        /// x backend (compact), or every check (full).
        #[arg(long, value_enum, default_value = "compact", value_name = "STYLE")]
        table: TableStyle,
    },
}

pub fn exec(cmd: ReportCmd) -> Result<i32> {
    match cmd {
        ReportCmd::Merge { inputs, output } => merge(inputs, output),
        ReportCmd::Render {
            input,
            outputs,
            table,
        } => render(input, outputs, table),
    }
}

fn merge(inputs: Vec<PathBuf>, output: PathBuf) -> Result<i32> {
    let reports = inputs
        .iter()
        .map(|p| read_report(p))
        .collect::<Result<Vec<_>>>()?;
    let merged = RunReport::merge(reports).map_err(usage)?;
    write_json(&merged, &output)?;
    eprintln!("{}: {} kernel(s)", output.display(), merged.kernels.len());
    Ok(exit::PASS)
}

fn render(input: PathBuf, outputs: Outputs, table: TableStyle) -> Result<i32> {
    let report = read_report(&input)?;
    print!("{}", crate::report::terminal::render(&report, table));
    write_outputs(&report, &outputs)?;
    Ok(report.exit_code())
}
