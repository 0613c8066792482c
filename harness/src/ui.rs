//! Progress on long work: a bar per kernel on a terminal, one line per
//! kernel as it finishes elsewhere (CI logs), a line per stage and check
//! with `--progress checks`, nothing at all when asked to be quiet.

use std::io::IsTerminal;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::protocol::{CheckResult, Status};

/// What progress to show.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Progress {
    /// A bar per kernel on a terminal; elsewhere one line per kernel as it finishes.
    #[default]
    Kernels,
    /// A line per stage and per check, terminal or not.
    Checks,
}

pub struct Ui {
    multi: Option<MultiProgress>,
    quiet: bool,
    progress: Progress,
}

/// Progress of one kernel.
pub struct KernelProgress {
    bar: Option<ProgressBar>,
    label: String,
    quiet: bool,
    /// A line per stage and per check (without a bar).
    every_check: bool,
}

impl Ui {
    pub fn new(quiet: bool) -> Ui {
        Ui::with_progress(quiet, Progress::Kernels)
    }

    pub fn with_progress(quiet: bool, progress: Progress) -> Ui {
        let tty = std::io::stderr().is_terminal() && std::env::var_os("CI").is_none();
        Ui {
            multi: (tty && !quiet && progress == Progress::Kernels)
                .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr())),
            quiet,
            progress,
        }
    }

    pub fn kernel(&self, label: &str, checks: usize) -> KernelProgress {
        let bar = self.multi.as_ref().map(|m| {
            let bar = m.add(ProgressBar::new(checks as u64));
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:<28} [{bar:20}] {pos}/{len} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            bar.set_prefix(label.to_string());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        KernelProgress {
            bar,
            label: label.to_string(),
            quiet: self.quiet,
            every_check: self.progress == Progress::Checks,
        }
    }

    /// A line that must not be mangled by the bars.
    pub fn println(&self, line: &str) {
        if self.quiet {
            return;
        }
        match &self.multi {
            Some(m) => {
                let _ = m.println(line);
            }
            None => eprintln!("{line}"),
        }
    }
}

impl KernelProgress {
    pub fn stage(&self, what: &str) {
        match &self.bar {
            Some(b) => b.set_message(what.to_string()),
            None if self.every_check && !self.quiet => eprintln!("[{}] {what}", self.label),
            None => {}
        }
    }

    pub fn rename(&mut self, label: &str) {
        self.label = label.to_string();
        if let Some(b) = &self.bar {
            b.set_prefix(label.to_string());
        }
    }

    pub fn check_started(&self, check: &str) {
        if let Some(b) = &self.bar {
            b.set_message(check.to_string());
        }
    }

    pub fn check_done(&self, r: &CheckResult) {
        match &self.bar {
            Some(b) => b.inc(1),
            None if self.every_check && !self.quiet => eprintln!(
                "[{}] {:<11} {} [{}] {} ({} ms)",
                self.label,
                r.status.label(),
                r.scenario,
                r.backend,
                r.check,
                r.duration_ms
            ),
            None => {}
        }
        if r.status == Status::Fail {
            if let Some(b) = &self.bar {
                b.println(format!(
                    "[{}] FAIL {} [{}] {}",
                    self.label, r.scenario, r.backend, r.check
                ));
            }
        }
    }

    pub fn finish(&self, summary: &str) {
        match &self.bar {
            Some(b) => b.finish_with_message(summary.to_string()),
            None if !self.quiet => eprintln!("[{}] {summary}", self.label),
            None => {}
        }
    }
}
