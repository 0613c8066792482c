//! Start a child that speaks natvet's protocol and watch it to the end: qemu
//! booting a guest (`qemu::run`), or natvet's own agent on the host
//! (`run_agent`, for `natvet verify`). Both get one end of a socket pair for
//! their messages, write their console to stdout, die with natvet
//! (`PR_SET_PDEATHSIG`), and are held to the same boot, stall and overall
//! timeouts. An interrupt stops every child at once (`cancel_all`).

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::inbound::{
    clean, cut, Event, Inbound, Lines, MAX_ALARMS, MAX_CONSOLE_LINE, MAX_CONSOLE_LOG,
};
use crate::protocol::{ProtocolError, MAX_LINE};

const CONSOLE_TAIL: usize = 40;
/// The most of the child's stderr kept (qemu's own complaints are short).
const MAX_STDERR: usize = 64 * 1024;
/// How long the child may take to end after the guest said Done.
const AFTER_DONE: Duration = Duration::from_secs(5);

/// How a launched child (qemu, or the agent on the host) ended.
#[derive(Debug, Clone, PartialEq)]
pub enum End {
    /// The guest (or the agent) said Done and ended.
    Completed,
    /// The kernel panicked (seen on the console).
    Panic(String),
    /// The child outlived its timeout and was killed.
    Timeout(Duration),
    /// The guest sent no message (a check hung) for this long and was killed.
    Stalled(Duration),
    /// The agent did not say Hello within this long of the child's start.
    NoAgent(Duration),
    /// The child ended before the agent said Done.
    Died(String),
    /// Something outside natvet killed the child with this signal.
    Killed(i32),
    /// The guest sent something that is not a natvet message.
    Protocol(String),
}

#[derive(Debug, Clone)]
/// What a child's run came to, besides its messages.
pub struct Outcome {
    pub end: End,
    pub console_tail: Vec<String>,
    /// Console lines that look like kernel trouble (oops, WARN, lockup),
    /// the first `inbound::MAX_ALARMS` of them.
    pub alarms: Vec<String>,
    /// Such lines past those, counted only.
    pub alarms_left_out: usize,
    pub wall: Duration,
    /// Host time from the child's start to the agent's Hello.
    pub boot: Option<Duration>,
    pub peak_rss_kb: Option<u64>,
}

/// Why a child could not be started.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("interrupted before the VM started")]
    Cancelled,
    #[error("cannot start {0}: {1}")]
    Spawn(&'static str, std::io::Error),
    #[error("cannot set up the results channel to the guest: {0}")]
    Channel(std::io::Error),
}

/// Every child natvet has running, so an interrupt can end them all.
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
    /// Warnings past `MAX_ALARMS`, counted only.
    alarms_left_out: usize,
}

/// Read the child's console: written to `log` as it comes (up to
/// `MAX_CONSOLE_LOG`), every line looked at for a panic or kernel trouble,
/// the last lines kept. What is kept is cleaned of control sequences and
/// bounded: lines are cut at `MAX_CONSOLE_LINE`, warnings at `MAX_ALARMS`.
fn watch_console(mut stdout: impl Read, log: PathBuf, state: Arc<Mutex<Console>>) {
    let mut file = File::create(&log).ok().map(std::io::BufWriter::new);
    let mut logged: u64 = 0;
    let mut lines = Lines::console(MAX_CONSOLE_LINE);
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = match stdout.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        lines.push(&chunk[..n]);
        while let Some(piece) = lines.next_line() {
            let raw = String::from_utf8_lossy(&piece.bytes);
            let raw = raw.trim_end_matches('\r');
            if let Some(f) = file.as_mut() {
                let mark = if piece.cut { " [line cut]" } else { "" };
                let size = (raw.len() + mark.len() + 1) as u64;
                if logged + size <= MAX_CONSOLE_LOG {
                    let _ = writeln!(f, "{raw}{mark}");
                    logged += size;
                } else {
                    let _ = writeln!(
                        f,
                        "natvet: console.log ends here, at its limit of {} MiB; the console went on",
                        MAX_CONSOLE_LOG >> 20
                    );
                    let _ = f.flush();
                    file = None;
                }
            }
            let text = clean(raw, false).into_owned();
            let Ok(mut st) = state.lock() else { return };
            if text.contains("Kernel panic - not syncing") && st.panic.is_none() {
                st.panic = Some(text.clone());
            } else if crate::kernel_log::is_unhealthy(&text)
                && crate::kernel_log::emulator_artifact(&text).is_none()
            {
                if st.alarms.len() < MAX_ALARMS {
                    st.alarms.push(text.clone());
                } else {
                    st.alarms_left_out += 1;
                }
            }
            st.tail.push_back(text);
            if st.tail.len() > CONSOLE_TAIL {
                st.tail.pop_front();
            }
        }
    }
    if let Some(f) = file.as_mut() {
        let _ = f.flush();
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

/// The results channel: a connected socket pair. The child inherits one end
/// (as a plain file descriptor), natvet reads the other. Unlike a listening
/// unix socket it has no path (TMPDIR may be too long for one) and nothing to
/// remove afterwards.
pub struct Channel {
    ours: UnixStream,
    theirs: UnixStream,
}

impl Channel {
    pub fn new() -> Result<Channel, LaunchError> {
        let (ours, theirs) = UnixStream::pair().map_err(LaunchError::Channel)?;
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
    /// The longest the agent may go without a message (one check's time):
    /// bytes that are no message do not count.
    pub stall_timeout: Duration,
    /// How long until the agent's Hello.
    pub boot_timeout: Duration,
    /// Where the child's stdout (the console) is written.
    pub console_log: PathBuf,
}

/// Start `cmd` (qemu, or natvet's agent on the host for `natvet verify`),
/// which writes natvet messages to the channel's child end and its console to
/// stdout; take each message into `inbound`, which accepts only what the job
/// allows, and tell `on_event` of each, until the child says Done, sends no
/// message for too long, outlives its time, breaks the protocol, or dies.
/// The child dies with natvet.
pub fn supervise(
    mut cmd: Command,
    channel: Channel,
    watch: &Watch,
    inbound: &mut Inbound,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Outcome, LaunchError> {
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
        return Err(LaunchError::Cancelled);
    }
    let mut child = Reaper::new(
        cmd.spawn()
            .map_err(|e| LaunchError::Spawn(watch.program, e))?,
    );
    let pid = child.0.id();
    // Only the child holds the other end now: its exit reads as end of stream.
    drop(theirs);

    let console = Arc::new(Mutex::new(Console::default()));
    let console_thread = child.0.stdout.take().map(|out| {
        let (log, state) = (watch.console_log.clone(), console.clone());
        std::thread::spawn(move || watch_console(out, log, state))
    });
    let stderr_thread = child.0.stderr.take().map(|err| {
        std::thread::spawn(move || {
            let mut kept = Vec::new();
            let mut err = err;
            let _ = (&mut err).take(MAX_STDERR as u64).read_to_end(&mut kept);
            // The rest is read and dropped, so the child never blocks on it.
            let _ = std::io::copy(&mut err, &mut std::io::sink());
            String::from_utf8_lossy(&kept).into_owned()
        })
    });

    let deadline = start + watch.timeout;
    let mut peak = None;
    let mut boot = None;
    let mut done: Option<Instant> = None;
    let mut gave_up = false;
    let mut lingered = false;
    let mut protocol_error: Option<String> = None;
    let mut timed_out = false;
    let mut stalled = false;
    let mut no_agent = false;

    {
        let s = &mut ours;
        let _ = s.set_read_timeout(Some(Duration::from_millis(250)));
        let mut lines = Lines::messages(MAX_LINE);
        let mut chunk = vec![0u8; 64 * 1024];
        // Progress is a message the guest was allowed to send, nothing less.
        let mut last_progress = Instant::now();
        loop {
            peak = peak_rss_kb(pid).max(peak);
            if let Some(at) = done {
                // Done came: the child ends by itself, or is ended.
                if at.elapsed() > AFTER_DONE {
                    lingered = true;
                    break;
                }
            } else if Instant::now() > deadline {
                timed_out = true;
                break;
            } else if boot.is_none() && start.elapsed() > watch.boot_timeout {
                no_agent = true;
                break;
            } else if boot.is_some() && last_progress.elapsed() > watch.stall_timeout {
                // Every check reports its start and its end: no message this long means one hung.
                stalled = true;
                break;
            }
            match s.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => lines.push(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock
                            | std::io::ErrorKind::TimedOut
                            | std::io::ErrorKind::Interrupted
                    ) =>
                {
                    continue
                }
                Err(_) => break,
            }
            while let Some(piece) = lines.next_line() {
                if piece.cut {
                    protocol_error = Some(ProtocolError::TooLong(MAX_LINE + 1).to_string());
                    break;
                }
                match inbound.accept(&piece.bytes) {
                    Ok(None) => {}
                    Ok(Some(event)) => {
                        last_progress = Instant::now();
                        match event {
                            Event::Hello { .. } => {
                                boot.get_or_insert(start.elapsed());
                            }
                            Event::Done => done = Some(Instant::now()),
                            Event::Fatal => gave_up = true,
                            _ => {}
                        }
                        on_event(&event);
                    }
                    Err(v) => {
                        protocol_error = Some(v.to_string());
                        break;
                    }
                }
                if gave_up {
                    break;
                }
            }
            if protocol_error.is_some() || gave_up {
                break;
            }
        }
    }

    // The guest powers off after Done (or Fatal); give qemu a moment to exit by itself.
    let grace = Instant::now() + Duration::from_secs(5);
    let status = loop {
        match child.0.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None)
                if !timed_out
                    && !stalled
                    && !no_agent
                    && !lingered
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
            c.alarms_left_out,
        )
    });
    let (tail, panic, alarms, alarms_left_out) = console.unwrap_or_default();
    let end = if let Some(p) = panic {
        End::Panic(p)
    } else if let Some(e) = protocol_error {
        End::Protocol(e)
    } else if timed_out {
        End::Timeout(watch.timeout)
    } else if stalled {
        End::Stalled(watch.stall_timeout)
    } else if no_agent {
        End::NoAgent(watch.boot_timeout)
    } else if done.is_some() {
        End::Completed
    } else if let Some(sig) = status
        .and_then(|st| std::os::unix::process::ExitStatusExt::signal(&st))
        .filter(|_| !cancelled())
    {
        End::Killed(sig)
    } else {
        let why = match status {
            _ if cancelled() => "interrupted (SIGINT/SIGTERM): the VM was stopped".to_string(),
            Some(st) => format!("{} exited ({st}) before the agent finished", watch.program),
            None => format!("{} could not be waited for", watch.program),
        };
        let err = clean(qemu_stderr.trim(), true);
        End::Died(if err.is_empty() {
            why
        } else {
            format!("{why}: {}", cut(&err, MAX_STDERR))
        })
    };
    Ok(Outcome {
        end,
        console_tail: tail,
        alarms,
        alarms_left_out,
        wall: start.elapsed(),
        boot,
        peak_rss_kb: peak,
    })
}

/// The variable the iptables tools read for the path of their lock file.
pub const XTABLES_LOCKFILE: &str = "XTABLES_LOCKFILE";

/// Start `natvet agent` with `job` and take in its messages, exactly as from
/// a VM; iptables-legacy in it locks `xtables_lock`.
pub fn run_agent(
    job: &Path,
    xtables_lock: &Path,
    watch: &Watch,
    inbound: &mut Inbound,
    on_event: &mut dyn FnMut(&Event),
) -> Result<Outcome, LaunchError> {
    let channel = Channel::new()?;
    let mut cmd = Command::new(own_binary());
    // The iptables tools (iptables-legacy) lock this file instead of the
    // host's /run/xtables.lock; the agent's children inherit it.
    cmd.env(XTABLES_LOCKFILE, xtables_lock);
    cmd.arg("agent")
        .arg("--job")
        .arg(job)
        .arg("--results-fd")
        .arg(channel.child_fd().to_string());
    supervise(cmd, channel, watch, inbound, on_event)
}

/// The running natvet binary, which becomes the guest's /init. /proc/self/exe
/// stays readable even when the file was replaced (a rebuild during a long
/// soak), where the path current_exe() names would not.
pub fn own_binary() -> PathBuf {
    let proc_exe = PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        proc_exe
    } else {
        std::env::current_exe().unwrap_or(proc_exe)
    }
}
