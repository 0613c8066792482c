//! What can go wrong talking to a repository, worded for the user, with
//! each kind's [`ErrorClass`].

use crate::kernel::error::{ErrorClass, SourceError};
use crate::kernel::openpgp::SignatureError;
use crate::kernel::release::ReleaseProblem;

/// What went wrong talking to a repository.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    #[error("no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list; set NATVET_DEBIAN_MIRROR=http://MIRROR/debian")]
    NoMirror,

    #[error("download of {what} failed: {reason}; check the network / mirror (NATVET_DEBIAN_MIRROR, or the repository's URI) and retry")]
    Download { what: String, reason: String },

    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {actual}; the file is not the one the signed index names (a mirror mid-sync, or tampering): retry later or use another mirror")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },

    #[error("{repository} {suite} ({uri}): {source}")]
    Signature {
        repository: String,
        suite: String,
        uri: String,
        #[source]
        source: SignatureError,
    },

    #[error("{repository} {suite} ({uri}): {problem}; natvet will not pick kernels from it{hint}")]
    Release {
        repository: String,
        suite: String,
        uri: String,
        problem: ReleaseProblem,
        hint: String,
    },

    #[error("{repository} {suite}: {what} {reason}; natvet refuses the index (nothing was cached): retry later, or use another mirror")]
    BadIndex {
        repository: String,
        suite: String,
        what: String,
        reason: String,
    },

    #[error("interrupted while downloading {what}; the partial file was removed")]
    Interrupted { what: String },
}

impl SourceError for ArchiveError {
    fn class(&self) -> ErrorClass {
        match self {
            ArchiveError::NoMirror => ErrorClass::BadInput,
            ArchiveError::Signature { source, .. } => source.class(),
            ArchiveError::Download { .. }
            | ArchiveError::Checksum { .. }
            | ArchiveError::Release { .. }
            | ArchiveError::BadIndex { .. }
            | ArchiveError::Interrupted { .. } => ErrorClass::Infrastructure,
        }
    }
}
