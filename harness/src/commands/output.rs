//! Where a finished run goes: the terminal's answer on stdout, the JSON report and the
//! renderings asked for with --junit, --markdown and --html; and reading a
//! JSON report back.

use anyhow::Context;

use super::error::{usage, Result};
use super::options::{CheckArgs, Outputs};
use crate::report::RunReport;

pub(super) fn read_report(path: &std::path::Path) -> Result<RunReport> {
    let bytes =
        std::fs::read(path).map_err(|e| usage(format!("cannot read {}: {e}", path.display())))?;
    serde_json::from_slice(&bytes).map_err(|e| {
        usage(format!(
            "{} is not a natvet JSON report ({e}); produce one with `natvet vet --json FILE`",
            path.display()
        ))
    })
}

/// The report as JSON, with its diagnosis (present only when enough checks failed).
pub(super) fn write_json(report: &RunReport, path: &std::path::Path) -> anyhow::Result<()> {
    let diagnosis = crate::report::diagnosis::diagnose(report);
    let text = if diagnosis == report.diagnosis {
        serde_json::to_string_pretty(report)?
    } else {
        serde_json::to_string_pretty(&RunReport {
            diagnosis,
            ..report.clone()
        })?
    };
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub(super) fn write_outputs(report: &RunReport, outputs: &Outputs) -> anyhow::Result<()> {
    use crate::report::render;
    if let Some(path) = &outputs.junit {
        std::fs::write(path, render::junit(report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &outputs.markdown {
        std::fs::write(path, render::markdown(report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(dir) = &outputs.html {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("index.html");
        std::fs::write(&path, crate::report::html::html(report, Some(dir)))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

pub(super) fn finish(report: &RunReport, run: &CheckArgs) -> anyhow::Result<()> {
    print!("{}", crate::report::terminal::render(report, run.table));
    if let Some(path) = &run.json {
        write_json(report, path)?;
    }
    write_outputs(report, &run.outputs)
}
