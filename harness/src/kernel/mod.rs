//! Kernels to boot, from wherever they come ([`sources`]: Debian's
//! archive, a local image, a build tree), each turned into what qemu's
//! `-kernel` wants (the PVH-capable `vmlinux` when there is one, else the
//! bzImage) plus a depmod'ed module tree.
//!
//! The parts every source shares: the cache and its publish helper
//! ([`cache`], which also describes the layout on disk), kernels unpacked
//! from packages (`unpacked`), module folders of the user's (`modtree`),
//! `.deb` extraction ([`deb`]), the Debian archive's client ([`archive`]),
//! version order ([`version`]) and boot images ([`vmlinux`]). `natvet
//! kernels build` is [`build`].

pub mod apt_sources;
pub mod archive;
pub mod build;
pub mod cache;
pub mod deb;
mod error;
#[cfg(test)]
mod live_tests;
mod modtree;
pub mod openpgp;
pub mod release;
pub mod repository;
pub mod sources;
mod unpacked;
pub mod version;
pub mod vmlinux;

use std::path::PathBuf;

pub use cache::Cache;
pub use error::{ErrorClass, KernelError, SourceError};
pub use sources::{catalogues, lookup, resolve, KernelSpec};

/// How natvet runs a kernel: qemu booting the image given to `-kernel`, or
/// the host's own running kernel (`natvet verify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BootKind {
    /// An ELF vmlinux with a PVH entry note (fast: no decompression).
    Pvh,
    /// A bzImage (Linux boot protocol).
    BzImage,
    /// The kernel natvet runs on: no VM, the agent runs as a child process.
    Running,
}

/// A kernel ready to boot.
#[derive(Debug, Clone)]
pub struct Kernel {
    /// What the user asked for, e.g. `debian:6.12`.
    pub spec: String,
    /// `uname -r` of the kernel, if known.
    pub release: Option<String>,
    /// What to pass to `qemu -kernel`.
    pub boot_image: PathBuf,
    pub boot_kind: BootKind,
    /// The bzImage, if there is one.
    pub bzimage: Option<PathBuf>,
    /// `lib/modules/RELEASE` with modules.dep etc.; None for a monolithic kernel.
    pub modules_dir: Option<PathBuf>,
    /// The image package (for split 6.19+ packages, `linux-image-X`).
    pub package: Option<PackageInfo>,
}

impl Kernel {
    /// The kernel this machine runs, for `natvet verify`.
    pub fn running() -> Kernel {
        let release = nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .ok();
        Kernel {
            spec: "host".into(),
            release,
            boot_image: PathBuf::new(),
            boot_kind: BootKind::Running,
            bzimage: None,
            modules_dir: None,
            package: None,
        }
    }
}

/// A package a kernel came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PackageInfo {
    pub name: String,
    pub version: String,
    pub suite: String,
    pub sha256: String,
    pub filename: String,
    /// The repository it came from (`debian`, `ubuntu`, a --repository's
    /// name); empty for a package file given by path.
    #[serde(default)]
    pub repository: String,
    /// Who vouched for it.
    #[serde(default)]
    pub trust: Trust,
}

/// Who vouched for a package natvet unpacked.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Trust {
    /// Unpacked by a natvet that did not check signatures yet.
    #[default]
    Unknown,
    /// Its hash is in an index whose Release these keys signed (primary
    /// fingerprints), checked with gpgv.
    Signed { signers: Vec<String> },
    /// Its repository was read without signatures (`--allow-unsigned`).
    Unsigned,
    /// A package file given by path: nobody vouched for it; its hash is recorded.
    File,
}
