//! What a check concludes: pass or fail with what it expected and saw, or
//! unsupported with the reason.

use crate::protocol::Status;

/// What a check concluded, before timing and evidence are attached.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub status: Status,
    pub expected: String,
    pub observed: String,
}

impl Verdict {
    /// The kernel lacks what the check needs: neither a pass nor a NAT failure.
    pub fn unsupported(expected: impl Into<String>, why: impl Into<String>) -> Verdict {
        Verdict {
            status: Status::Unsupported,
            expected: expected.into(),
            observed: why.into(),
        }
    }

    pub fn judge(ok: bool, expected: impl Into<String>, observed: impl Into<String>) -> Verdict {
        Verdict {
            status: if ok { Status::Pass } else { Status::Fail },
            expected: expected.into(),
            observed: observed.into(),
        }
    }
}
