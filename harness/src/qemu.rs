//! Build one qemu process: TCG, the kernel booted directly (PVH vmlinux
//! where possible), the console on ttyS0, and the guest's typed messages on
//! ttyS1 through the launcher's socket pair (no path, so no length limit and
//! nothing to clean up). `launcher` starts and watches it.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::inbound::{Event, Inbound};
use crate::launcher::{self, Channel, LaunchError, Outcome, Watch};

pub const QEMU: &str = "qemu-system-x86_64";

/// How to start one VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub memory_mb: u32,
    /// Virtual CPUs (each a host thread under multi-threaded TCG).
    pub cpus: usize,
    /// Appended to natvet's own kernel command line.
    pub cmdline_extra: String,
    /// The whole VM, boot to power-off.
    pub timeout: Duration,
    /// The longest the guest may go without a message once it runs (one check's time).
    pub stall_timeout: Duration,
    /// How long the kernel may take to start the agent.
    pub boot_timeout: Duration,
    /// Where the console (ttyS0) is written.
    pub console_log: PathBuf,
}

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{QEMU} is not installed: run `apt-get install -y qemu-system-x86` (or `make deps`)")]
    Missing,
    #[error(transparent)]
    Launch(#[from] LaunchError),
}

/// The kernel command line natvet boots with.
pub fn cmdline(extra: &str) -> String {
    let mut s = String::from(
        "console=ttyS0 panic=-1 quiet loglevel=4 rdinit=/init random.trust_cpu=on mitigations=off",
    );
    if !extra.is_empty() {
        s.push(' ');
        s.push_str(extra);
    }
    s
}

/// qemu's arguments for `cfg`, with results going to the connected socket
/// that qemu inherits as file descriptor `results_fd`.
pub fn args(cfg: &VmConfig, results_fd: i32) -> Vec<String> {
    let mut a: Vec<String> = [
        "-accel",
        "tcg,thread=multi,tb-size=64",
        "-cpu",
        "max",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-serial",
        "stdio",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    a.push("-chardev".into());
    a.push(format!("socket,id=results,fd={results_fd}"));
    a.push("-serial".into());
    a.push("chardev:results".into());
    a.push("-smp".into());
    a.push(cfg.cpus.max(1).to_string());
    a.push("-m".into());
    a.push(cfg.memory_mb.to_string());
    a.push("-kernel".into());
    a.push(cfg.kernel.display().to_string());
    a.push("-initrd".into());
    a.push(cfg.initrd.display().to_string());
    a.push("-append".into());
    a.push(cmdline(&cfg.cmdline_extra));
    a
}

pub fn available() -> bool {
    Command::new(QEMU)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Boot the VM and take the guest's messages into `inbound` (telling
/// `on_event` of each) until it ends.
pub fn run(
    cfg: &VmConfig,
    inbound: &mut Inbound,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Outcome, QemuError> {
    let channel = Channel::new()?;
    let mut cmd = Command::new(QEMU);
    cmd.args(args(cfg, channel.child_fd()));
    let watch = Watch {
        program: "qemu",
        timeout: cfg.timeout,
        stall_timeout: cfg.stall_timeout,
        boot_timeout: cfg.boot_timeout,
        console_log: cfg.console_log.clone(),
    };
    launcher::supervise(cmd, channel, &watch, inbound, on_event).map_err(|e| match e {
        LaunchError::Spawn(_, e) if e.kind() == std::io::ErrorKind::NotFound => QemuError::Missing,
        e => QemuError::Launch(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_line_is_tcg_with_two_serial_ports() {
        let cfg = VmConfig {
            kernel: "/k/vmlinux".into(),
            initrd: "/k/initrd".into(),
            memory_mb: 384,
            cpus: 2,
            cmdline_extra: "foo=1".into(),
            timeout: Duration::from_secs(1),
            stall_timeout: Duration::from_secs(1),
            boot_timeout: Duration::from_secs(1),
            console_log: "/tmp/c".into(),
        };
        let a = args(&cfg, 7).join(" ");
        assert!(a.contains("-accel tcg,thread=multi"));
        assert!(a.contains("-smp 2 -m 384"));
        assert!(a.contains("-serial stdio"));
        assert!(a.contains("-chardev socket,id=results,fd=7 -serial chardev:results"));
        assert!(a.contains("-no-reboot"));
        assert!(a.ends_with(
            "panic=-1 quiet loglevel=4 rdinit=/init random.trust_cpu=on mitigations=off foo=1"
        ));
    }
}
