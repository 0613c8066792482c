//! Why a kernel could not be had. Every message says what was wrong and
//! what to do; every kind of error says whose move it is ([`ErrorClass`]),
//! which decides natvet's exit code.
//!
//! The errors here belong to no source: spec syntax, paths, module trees,
//! the cache, depmod. A source's own errors (a Debian package that does not
//! exist, a build tree without an image) live in its file, worded for it,
//! and reach callers as [`KernelError::Source`].

use std::path::PathBuf;

/// Whose move it is after an error, and so the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// The user can fix it by changing what they asked for (exit 2): an
    /// unknown release, a missing file, a malformed spec.
    BadInput,
    /// natvet's surroundings failed (exit 3): the network, a checksum, an
    /// extraction, a tool, the disk.
    Infrastructure,
}

/// An error of one kernel source, in that source's words.
pub trait SourceError: std::error::Error + Send + Sync + 'static {
    /// Whose move it is.
    fn class(&self) -> ErrorClass;
}

/// Errors resolving a kernel. Every message says what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// `forms`: how the sources' specs are written (from the sources).
    #[error("malformed kernel spec '{spec}': {reason}; use {forms}")]
    MalformedSpec {
        spec: String,
        reason: String,
        forms: String,
    },

    #[error("unknown kernel source '{scheme}:' in '{spec}'; use {forms} (write ./{spec} for a file of that name)")]
    UnknownScheme {
        spec: String,
        scheme: String,
        forms: String,
    },

    /// An error of one source (see [`SourceError`]).
    #[error("{0}")]
    Source(Box<dyn SourceError>),

    #[error("{what} not found: {} — check the path", .path.display())]
    LocalFileMissing { what: &'static str, path: PathBuf },

    #[error("{} is not a kernel module tree: {reason}; pass the lib/modules/RELEASE folder or a root folder containing lib/modules/RELEASE", .path.display())]
    BadModules { path: PathBuf, reason: String },

    #[error("no cache folder: none of NATVET_CACHE, XDG_CACHE_HOME, HOME is set; set NATVET_CACHE=/some/dir")]
    NoCacheDir,

    #[error("extracting {what} failed: {reason}; delete {} and retry, or report a bug if it persists", .cache_hint.display())]
    Extract {
        what: String,
        reason: String,
        cache_hint: PathBuf,
    },

    #[error(
        "depmod is not installed (needed to index kernel modules); run `apt-get install kmod`"
    )]
    NoDepmod,

    #[error("depmod failed for {}: {reason}", .root.display())]
    Depmod { root: PathBuf, reason: String },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

impl<E: SourceError> From<E> for KernelError {
    fn from(e: E) -> KernelError {
        KernelError::Source(Box::new(e))
    }
}

impl KernelError {
    pub(crate) fn io(context: String, source: std::io::Error) -> KernelError {
        KernelError::Io { context, source }
    }

    /// Whose move it is. Every kind is classed here, none by default.
    pub fn class(&self) -> ErrorClass {
        match self {
            KernelError::MalformedSpec { .. }
            | KernelError::UnknownScheme { .. }
            | KernelError::LocalFileMissing { .. }
            | KernelError::BadModules { .. }
            | KernelError::NoCacheDir => ErrorClass::BadInput,
            KernelError::Source(e) => e.class(),
            KernelError::Extract { .. }
            | KernelError::NoDepmod
            | KernelError::Depmod { .. }
            | KernelError::Io { .. } => ErrorClass::Infrastructure,
        }
    }

    /// True when the user can fix it by changing what they asked for
    /// (exit 2); false for failures of natvet's surroundings (exit 3).
    pub fn is_user_error(&self) -> bool {
        self.class() == ErrorClass::BadInput
    }
}
