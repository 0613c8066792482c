//! What a check concludes: pass or fail with what it expected and saw, or
//! unsupported with the reason.

use crate::protocol::{Series, Status};

/// What a check concluded, before timing and evidence are attached.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: Status,
    pub expected: String,
    pub observed: String,
    /// What it measured over time, if it measures over time (sessions).
    pub series: Option<Series>,
}

impl Verdict {
    /// The kernel lacks what the check needs: neither a pass nor a NAT failure.
    pub fn unsupported(expected: impl Into<String>, why: impl Into<String>) -> Verdict {
        Verdict {
            status: Status::Unsupported,
            expected: expected.into(),
            observed: why.into(),
            series: None,
        }
    }

    pub fn judge(ok: bool, expected: impl Into<String>, observed: impl Into<String>) -> Verdict {
        Verdict {
            status: if ok { Status::Pass } else { Status::Fail },
            expected: expected.into(),
            observed: observed.into(),
            series: None,
        }
    }

    /// The same verdict, with what was measured over time.
    pub fn with_series(mut self, series: Series) -> Verdict {
        self.series = Some(series);
        self
    }

    /// natvet could not run the check: never a verdict about the kernel.
    pub fn error(e: &anyhow::Error) -> Verdict {
        Verdict {
            status: Status::Error,
            expected: "the check runs".into(),
            observed: format!("natvet could not run it: {e:#}"),
            series: None,
        }
    }
}
