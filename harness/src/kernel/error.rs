//! Why a kernel could not be had. Every message says what was wrong and
//! what to do; every kind of error says whose move it is ([`ErrorClass`]),
//! which decides natvet's exit code.

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

/// Errors resolving a kernel. Every message says what went wrong and what to do.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("malformed kernel spec '{spec}': {reason}; use debian:LINE (e.g. debian:6.12), debian:RELEASE (e.g. debian:6.1.0-50-amd64), build:PATH (a kernel build tree) or a path to a bzImage/vmlinux")]
    MalformedSpec { spec: String, reason: String },

    #[error("unknown kernel source '{scheme}:' in '{spec}'; use debian:LINE (e.g. debian:6.12), debian:RELEASE (e.g. debian:6.1.0-50-amd64), build:PATH (a kernel build tree) or a path to a bzImage/vmlinux (write ./{spec} for a file of that name)")]
    UnknownScheme { spec: String, scheme: String },

    #[error("no Debian kernel package matches '{query}'; known lines: {} — give one of those (e.g. debian:{}) or an exact release such as debian:6.1.0-50-amd64 (`natvet kernels list --all` shows the releases on offer)", .known.join(", "), .known.last().map(String::as_str).unwrap_or("6.12"))]
    NoSuchPackage { query: String, known: Vec<String> },

    #[error("{what} not found: {} — check the path", .path.display())]
    LocalFileMissing { what: &'static str, path: PathBuf },

    #[error("cannot boot {}: {reason}", .path.display())]
    NotBootable { path: PathBuf, reason: String },

    #[error("{} is not a finished kernel build tree: {reason}", .path.display())]
    BadBuildTree { path: PathBuf, reason: String },

    #[error("installing the modules of {} failed: {reason}", .tree.display())]
    ModulesInstall { tree: PathBuf, reason: String },

    #[error("{} is not a kernel module tree: {reason}; pass the lib/modules/RELEASE folder or a root folder containing lib/modules/RELEASE", .path.display())]
    BadModules { path: PathBuf, reason: String },

    #[error("no cache folder: none of NATVET_CACHE, XDG_CACHE_HOME, HOME is set; set NATVET_CACHE=/some/dir")]
    NoCacheDir,

    #[error("no Debian mirror found in /etc/apt/sources.list.d/debian.sources or /etc/apt/sources.list; set NATVET_DEBIAN_MIRROR=http://MIRROR/debian")]
    NoMirror,

    #[error("download of {what} failed: {reason}; check the network / mirror (NATVET_DEBIAN_MIRROR) and retry")]
    Download { what: String, reason: String },

    #[error("checksum mismatch for {file}: expected sha256 {expected}, got {actual}; the mirror may be mid-sync, retry later or set NATVET_DEBIAN_MIRROR to another mirror")]
    Checksum {
        file: String,
        expected: String,
        actual: String,
    },

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

impl KernelError {
    pub(crate) fn io(context: String, source: std::io::Error) -> KernelError {
        KernelError::Io { context, source }
    }

    /// Whose move it is. Every kind is classed here, none by default.
    pub fn class(&self) -> ErrorClass {
        match self {
            KernelError::MalformedSpec { .. }
            | KernelError::UnknownScheme { .. }
            | KernelError::NoSuchPackage { .. }
            | KernelError::LocalFileMissing { .. }
            | KernelError::NotBootable { .. }
            | KernelError::BadBuildTree { .. }
            | KernelError::BadModules { .. }
            | KernelError::NoCacheDir
            | KernelError::NoMirror => ErrorClass::BadInput,
            KernelError::ModulesInstall { .. }
            | KernelError::Download { .. }
            | KernelError::Checksum { .. }
            | KernelError::Extract { .. }
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
