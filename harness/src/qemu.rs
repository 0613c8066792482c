//! Build and drive one qemu process: TCG, the kernel booted directly (PVH
//! vmlinux where possible), the console on ttyS0 kept in a log, and the
//! guest's typed messages on ttyS1 through a socket pair (no path, so no
//! length limit and nothing to clean up).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::protocol::{GuestMessage, ProtocolError, MAX_LINE};

pub const QEMU: &str = "qemu-system-x86_64";
const CONSOLE_TAIL: usize = 40;

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
    /// The longest silence from the guest once it runs (one check's time).
    pub stall_timeout: Duration,
    /// How long the kernel may take to start the agent.
    pub boot_timeout: Duration,
    /// Where the console (ttyS0) is written.
    pub console_log: PathBuf,
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq)]
pub enum VmEnd {
    /// The guest said Done and powered off.
    Completed,
    /// The kernel panicked (seen on the console).
    Panic(String),
    /// The VM outlived its timeout and was killed.
    Timeout(Duration),
    /// The guest went silent (a check hung) for this long and was killed.
    Stalled(Duration),
    /// The agent did not say Hello within this long of qemu's start.
    NoAgent(Duration),
    /// qemu ended before the guest said Done.
    Died(String),
    /// Something outside natvet killed qemu with this signal.
    Killed(i32),
    /// The guest sent something that is not a natvet message.
    Protocol(String),
}

#[derive(Debug, Clone)]
pub struct VmOutcome {
    pub end: VmEnd,
    pub console_tail: Vec<String>,
    /// Console lines that look like kernel trouble (oops, WARN, lockup).
    pub alarms: Vec<String>,
    pub wall: Duration,
    /// Host time from qemu start to the guest's Hello.
    pub boot: Option<Duration>,
    pub peak_rss_kb: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum QemuError {
    #[error("{QEMU} is not installed: run `apt-get install -y qemu-system-x86` (or `make deps`)")]
    Missing,
    #[error("interrupted before the VM started")]
    Cancelled,
    #[error("cannot start {0}: {1}")]
    Spawn(&'static str, std::io::Error),
    #[error("cannot set up the results channel to the guest: {0}")]
    Channel(std::io::Error),
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

/// Every qemu natvet has running, so an interrupt can end them all.
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());
static CANCELLED: AtomicBool = AtomicBool::new(false);

/// Stop every running VM and refuse to start new ones (on SIGINT/SIGTERM).
/// The runs end through their normal paths, so temporary files are removed.
pub fn cancel_all() {
    CANCELLED.store(true, Ordering::SeqCst);
    if let Ok(pids) = RUNNING.lock() {
        for pid in pids.iter() {
            // SAFETY: plain kill(2) on a pid we started and have not reaped yet.
            unsafe {
                libc::kill(*pid as i32, libc::SIGKILL);
            }
        }
    }
}

pub fn cancelled() -> bool {
    CANCELLED.load(Ordering::SeqCst)
}

/// Kill qemu when dropped, whatever path we leave by.
struct Reaper(Child);

impl Reaper {
    fn new(child: Child) -> Reaper {
        if let Ok(mut pids) = RUNNING.lock() {
            pids.push(child.id());
        }
        Reaper(child)
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
        let pid = self.0.id();
        if let Ok(mut pids) = RUNNING.lock() {
            pids.retain(|p| *p != pid);
        }
    }
}

#[derive(Default)]
struct Console {
    tail: VecDeque<String>,
    panic: Option<String>,
    alarms: Vec<String>,
}

fn watch_console(stdout: impl Read, log: PathBuf, state: Arc<Mutex<Console>>) {
    let mut file = File::create(&log).ok();
    let reader = BufReader::new(stdout);
    for line in reader.split(b'\n') {
        let Ok(line) = line else { break };
        let text = String::from_utf8_lossy(&line)
            .trim_end_matches('\r')
            .to_string();
        if let Some(f) = file.as_mut() {
            let _ = writeln!(f, "{text}");
        }
        let Ok(mut st) = state.lock() else { break };
        if text.contains("Kernel panic - not syncing") && st.panic.is_none() {
            st.panic = Some(text.clone());
        } else if crate::kernel_log::is_unhealthy(&text) {
            st.alarms.push(text.clone());
        }
        st.tail.push_back(text);
        if st.tail.len() > CONSOLE_TAIL {
            st.tail.pop_front();
        }
    }
}

fn peak_rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Boot the VM and stream the guest's messages to `on_message` until it ends.
pub fn run(
    cfg: &VmConfig,
    on_message: &mut dyn FnMut(&GuestMessage),
) -> Result<VmOutcome, QemuError> {
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
    supervise(cmd, channel, &watch, on_message)
}

/// The results channel: a connected socket pair. The child inherits one end
/// (as a plain file descriptor), natvet reads the other. Unlike a listening
/// unix socket it has no path (TMPDIR may be too long for one) and nothing to
/// remove afterwards.
pub struct Channel {
    ours: UnixStream,
    theirs: UnixStream,
}

impl Channel {
    pub fn new() -> Result<Channel, QemuError> {
        let (ours, theirs) = UnixStream::pair().map_err(QemuError::Channel)?;
        Ok(Channel { ours, theirs })
    }

    /// The descriptor number the child finds its end under.
    pub fn child_fd(&self) -> i32 {
        self.theirs.as_raw_fd()
    }
}

/// What `supervise` watches for, besides the messages.
#[derive(Debug, Clone)]
pub struct Watch {
    /// The child's name in messages ("qemu", "the agent").
    pub program: &'static str,
    /// The whole run, start to end.
    pub timeout: Duration,
    /// The longest silence once the agent runs (one check's time).
    pub stall_timeout: Duration,
    /// How long until the agent's Hello.
    pub boot_timeout: Duration,
    /// Where the child's stdout (the console) is written.
    pub console_log: PathBuf,
}

/// Start `cmd` (qemu, or natvet's agent on the host for `natvet verify`),
/// which writes natvet messages to the channel's child end and its console to
/// stdout; stream the messages to `on_message` until the child says Done,
/// goes silent, outlives its time, or dies. The child dies with natvet.
pub fn supervise(
    mut cmd: Command,
    channel: Channel,
    watch: &Watch,
    on_message: &mut dyn FnMut(&GuestMessage),
) -> Result<VmOutcome, QemuError> {
    let Channel { mut ours, theirs } = channel;
    let theirs_fd = theirs.as_raw_fd();
    let start = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl and fcntl are async-signal-safe. The child dies with the
    // thread that started it, so a killed natvet never leaves one behind.
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // Only this child keeps its end across exec; others started at
            // the same time never see it.
            if libc::fcntl(theirs_fd, libc::F_SETFD, 0) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    if cancelled() {
        return Err(QemuError::Cancelled);
    }
    let mut child = Reaper::new(cmd.spawn().map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound if watch.program == "qemu" => QemuError::Missing,
        _ => QemuError::Spawn(watch.program, e),
    })?);
    let pid = child.0.id();
    // Only the child holds the other end now: its exit reads as end of stream.
    drop(theirs);

    let console = Arc::new(Mutex::new(Console::default()));
    let console_thread = child.0.stdout.take().map(|out| {
        let (log, state) = (watch.console_log.clone(), console.clone());
        std::thread::spawn(move || watch_console(out, log, state))
    });
    let stderr_thread = child.0.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        })
    });

    let deadline = start + watch.timeout;
    let mut peak = None;
    let mut boot = None;
    let mut done = false;
    let mut protocol_error: Option<String> = None;
    let mut timed_out = false;
    let mut stalled = false;
    let mut no_agent = false;

    {
        let s = &mut ours;
        let _ = s.set_read_timeout(Some(Duration::from_millis(250)));
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        let mut last_message = Instant::now();
        loop {
            peak = peak_rss_kb(pid).max(peak);
            if Instant::now() > deadline {
                timed_out = true;
                break;
            }
            if boot.is_none() && start.elapsed() > watch.boot_timeout {
                no_agent = true;
                break;
            }
            // Every check reports its start and its end: silence this long means one hung.
            if boot.is_some() && last_message.elapsed() > watch.stall_timeout {
                stalled = true;
                break;
            }
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    last_message = Instant::now();
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(_) => break,
            }
            while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = buf.drain(..=pos).collect();
                let text = String::from_utf8_lossy(&line);
                if text.trim().is_empty() {
                    continue;
                }
                match GuestMessage::from_line(&text) {
                    Ok(msg) => {
                        match &msg {
                            GuestMessage::Hello { version, .. } => {
                                boot.get_or_insert(start.elapsed());
                                if *version != crate::protocol::PROTOCOL_VERSION {
                                    protocol_error.get_or_insert(
                                        ProtocolError::Version {
                                            guest: *version,
                                            host: crate::protocol::PROTOCOL_VERSION,
                                        }
                                        .to_string(),
                                    );
                                }
                            }
                            GuestMessage::Done { .. } => done = true,
                            _ => {}
                        }
                        on_message(&msg);
                    }
                    Err(e) => {
                        protocol_error.get_or_insert(e.to_string());
                    }
                }
            }
            if buf.len() > MAX_LINE {
                protocol_error.get_or_insert(ProtocolError::TooLong(buf.len()).to_string());
                buf.clear();
            }
            if protocol_error.is_some() {
                break;
            }
        }
    }

    // The guest powers off after Done; give qemu a moment to exit by itself.
    let grace = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.0.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None)
                if !timed_out
                    && !stalled
                    && !no_agent
                    && protocol_error.is_none()
                    && Instant::now() < grace =>
            {
                peak = peak_rss_kb(pid).max(peak);
                std::thread::sleep(Duration::from_millis(10));
            }
            _ => {
                let _ = child.0.kill();
                break child.0.wait().ok();
            }
        }
    };
    drop(child);
    if let Some(t) = console_thread {
        let _ = t.join();
    }
    let qemu_stderr = stderr_thread
        .and_then(|t| t.join().ok())
        .unwrap_or_default();

    let console = console.lock().map(|c| {
        (
            c.tail.iter().cloned().collect::<Vec<_>>(),
            c.panic.clone(),
            c.alarms.clone(),
        )
    });
    let (tail, panic, alarms) = console.unwrap_or_default();
    let end = if let Some(p) = panic {
        VmEnd::Panic(p)
    } else if let Some(e) = protocol_error {
        VmEnd::Protocol(e)
    } else if timed_out {
        VmEnd::Timeout(watch.timeout)
    } else if stalled {
        VmEnd::Stalled(watch.stall_timeout)
    } else if no_agent {
        VmEnd::NoAgent(watch.boot_timeout)
    } else if done {
        VmEnd::Completed
    } else if let Some(sig) = status
        .and_then(|st| std::os::unix::process::ExitStatusExt::signal(&st))
        .filter(|_| !cancelled())
    {
        VmEnd::Killed(sig)
    } else {
        let why = match status {
            _ if cancelled() => "interrupted (SIGINT/SIGTERM): the VM was stopped".to_string(),
            Some(st) => format!("{} exited ({st}) before the agent finished", watch.program),
            None => format!("{} could not be waited for", watch.program),
        };
        let err = qemu_stderr.trim();
        VmEnd::Died(if err.is_empty() {
            why
        } else {
            format!("{why}: {err}")
        })
    };
    Ok(VmOutcome {
        end,
        console_tail: tail,
        alarms,
        wall: start.elapsed(),
        boot,
        peak_rss_kb: peak,
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
