//! What a guest is given: its initramfs (natvet itself as /init, the job, the
//! kernel's modules, and the host tools the scenarios need with their
//! libraries) in a temporary folder of its own, and the check, before
//! anything boots, that the host has all of it.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::initramfs::{self, InitramfsSpec, InitramfsStats, ModulesSpec};
use crate::kernel::Kernel;
use crate::launcher;
use crate::modules::{ModuleIndex, Resolved};
use crate::nat::BackendKind;
use crate::protocol::job::{Job, JOB_PATH};
use crate::qemu;
use crate::scenario::Scenario;

/// Modules the agent loads before anything else; whatever else the kernel
/// asks for is loaded on demand by natvet's own modprobe.
pub const PRELOAD_MODULES: &[&str] = &[
    "veth",
    "wireguard",
    "nf_conntrack",
    "nf_nat",
    "nf_tables",
    "nft_chain_nat",
    "nft_masq",
    "nft_redir",
    "nft_counter",
    "nf_conntrack_netlink",
];

/// Whole module folders shipped so that on-demand loading finds what a backend needs.
pub const MODULE_DIRS: &[&str] = &[
    "kernel/net/netfilter",
    "kernel/net/ipv4/netfilter",
    "kernel/net/ipv6/netfilter",
    "kernel/drivers/net/wireguard",
];

/// The conntrack tool, for checks and evidence.
const CONNTRACK: &str = "/usr/sbin/conntrack";
const XTABLES_DIR: &str = "/usr/lib/x86_64-linux-gnu/xtables";

/// The host binaries the guest needs for these scenarios.
fn guest_tools(scenarios: &[Scenario]) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let mut bins: Vec<PathBuf> = vec![CONNTRACK.into()];
    let mut dirs = Vec::new();
    for kind in scenarios.iter().flat_map(|s| s.backends.iter()) {
        for t in kind.backend().tools() {
            let t = PathBuf::from(t);
            if !bins.contains(&t) {
                bins.push(t);
            }
        }
        if *kind != BackendKind::Nftables && !dirs.contains(&PathBuf::from(XTABLES_DIR)) {
            dirs.push(XTABLES_DIR.into());
        }
    }
    // A flowtable and a namespace's own nft script need nft whatever the backend.
    let nft = PathBuf::from("/usr/sbin/nft");
    let wants_nft = scenarios
        .iter()
        .any(|s| s.relay.flowtable || s.topology.namespaces.iter().any(|n| n.nft.is_some()));
    if wants_nft && !bins.contains(&nft) {
        bins.push(nft);
    }
    (bins, dirs)
}

/// Check that the host has every tool the guest needs, before any VM boots.
pub fn check_host(scenarios: &[Scenario]) -> Result<()> {
    if !qemu::available() {
        bail!(
            "{} is not installed: run `apt-get install -y qemu-system-x86` (or `make deps`)",
            qemu::QEMU
        );
    }
    let (bins, dirs) = guest_tools(scenarios);
    let missing: Vec<String> = bins
        .iter()
        .chain(dirs.iter())
        .filter(|p| !p.exists())
        .map(|p| p.display().to_string())
        .collect();
    if !missing.is_empty() {
        bail!(
            "the guest needs these host tools, which are missing: {}; run `apt-get install -y nftables iptables conntrack` (or `make deps`)",
            missing.join(", ")
        );
    }
    let exe = launcher::own_binary();
    let bytes = std::fs::read(&exe).with_context(|| format!("reading {}", exe.display()))?;
    if !crate::elfdeps::is_static_elf(&bytes) {
        bail!(
            "{} is not a statically linked ELF, but it must run as the guest's PID 1 without a libc: build it with the repository's .cargo/config.toml (static, target x86_64-unknown-linux-gnu)",
            exe.display()
        );
    }
    Ok(())
}

/// Build `kernel`'s initramfs at `out`: natvet as /init, `job` (with the
/// modules this kernel has to preload added), the modules, and the host tools
/// the job's scenarios need.
pub fn build_initramfs(kernel: &Kernel, job: &Job, out: &Path) -> Result<InitramfsStats> {
    let exe = launcher::own_binary();
    // Preload what this kernel has as modules; names it builds in or lacks are left
    // to the kernel (a lacking feature then shows up as "unsupported").
    let preload: Vec<String> = match &kernel.modules_dir {
        Some(dir) => {
            let index = ModuleIndex::load(dir)
                .with_context(|| format!("reading the module index in {}", dir.display()))?;
            PRELOAD_MODULES
                .iter()
                .filter(|m| matches!(index.resolve(m), Resolved::Module(_)))
                .map(|m| m.to_string())
                .collect()
        }
        None => vec![],
    };
    let job = Job {
        preload_modules: preload.clone(),
        ..job.clone()
    };
    let (host_binaries, host_dirs) = guest_tools(&job.scenarios);
    let modules = match (&kernel.modules_dir, &kernel.release) {
        (Some(dir), Some(release)) => Some(ModulesSpec {
            dir: dir.clone(),
            release: release.clone(),
            wanted: preload,
            include_dirs: MODULE_DIRS.iter().map(|s| s.to_string()).collect(),
        }),
        (Some(dir), None) => bail!(
            "modules in {} but the kernel's release is unknown: natvet cannot tell where the guest will look for them",
            dir.display()
        ),
        _ => None,
    };
    let spec = InitramfsSpec {
        agent: &exe,
        files: vec![(JOB_PATH.to_string(), serde_json::to_vec(&job)?)],
        modules,
        host_binaries,
        host_dirs,
    };
    Ok(initramfs::build(&spec, out)?)
}

/// Temporary folders are named for the natvet process that owns them, so a
/// later run can tell which ones a killed run left behind.
fn work_prefix() -> String {
    format!("natvet-{}-", std::process::id())
}

/// A temporary folder for one guest's files (its initramfs or its job),
/// removed when dropped.
pub fn work_dir() -> std::io::Result<tempfile::TempDir> {
    tempfile::Builder::new().prefix(&work_prefix()).tempdir()
}

/// Remove temporary folders of natvet processes that no longer exist (a run
/// killed with SIGKILL cannot clean up after itself).
pub fn remove_stale_work_dirs() -> usize {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let mut removed = 0;
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("natvet-")
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = Path::new(&format!("/proc/{pid}")).exists();
        if !alive && e.path().is_dir() && std::fs::remove_dir_all(e.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}
