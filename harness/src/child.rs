//! The helper processes natvet starts on the host for builds and kernel
//! unpacks (`make`, `tar`, `patch`, `cp`, `depmod`, `gpgv`) die with natvet,
//! as qemu and the agent do (`launcher.rs`), and take what they started
//! with them:
//!
//! - each gets `PR_SET_PDEATHSIG` (SIGTERM: `make` passes it on to its
//!   jobs), so natvet killed by SIGKILL still ends it;
//! - each runs in a process group of its own, which natvet kills whole
//!   (compilers, sub-makes, `tar`'s `xz`) when the child is done with, when
//!   its `Group` is dropped, and on an interrupt (`kill_all`, called by the
//!   signal handler before natvet exits), so nothing goes on writing into a
//!   folder whose lock natvet has let go.
//!
//! A group is killed before its leader is reaped, so its id cannot have
//! passed to another process.

use std::io;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// The process groups of every helper running.
static GROUPS: Mutex<Vec<i32>> = Mutex::new(Vec::new());
static STOPPED: AtomicBool = AtomicBool::new(false);

/// Kill every helper's whole process group and start no more (on
/// SIGINT/SIGTERM). The build or unpack that waited for one fails, and its
/// folder is never marked complete.
pub fn kill_all() {
    STOPPED.store(true, Ordering::SeqCst);
    if let Ok(groups) = GROUPS.lock() {
        for g in groups.iter() {
            // SAFETY: kill(2) on the group of a child we started and have not
            // reaped (its leader holds the group id until then).
            unsafe {
                libc::kill(-g, libc::SIGKILL);
            }
        }
    }
}

/// A running helper: its process group dies with this value.
pub struct Group {
    child: Child,
    pgid: i32,
    reaped: Option<ExitStatus>,
}

/// Start `cmd` as a helper that dies with natvet (see the module's doc).
/// Its stdin is /dev/null unless the caller set one: a helper in a group of
/// its own must not read the terminal.
pub fn spawn(cmd: &mut Command) -> io::Result<Group> {
    if STOPPED.load(Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "natvet was interrupted: no new helper process is started",
        ));
    }
    // SAFETY: getpid before the fork; prctl and getppid are async-signal-safe.
    let parent = unsafe { libc::getpid() };
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(io::Error::last_os_error());
            }
            // natvet died between the fork and the prctl: nobody would
            // send the signal any more.
            if libc::getppid() != parent {
                return Err(io::Error::other("natvet exited while starting it"));
            }
            Ok(())
        });
    }
    cmd.process_group(0);
    // Registered under the lock, so `kill_all` cannot miss a group that
    // exists: a helper started while it runs is refused above or killed.
    let mut groups = GROUPS.lock().unwrap_or_else(|e| e.into_inner());
    let child = cmd.spawn()?;
    let pgid = child.id() as i32;
    groups.push(pgid);
    let stopped = STOPPED.load(Ordering::SeqCst);
    drop(groups);
    let group = Group {
        child,
        pgid,
        reaped: None,
    };
    if stopped {
        group.kill();
    }
    Ok(group)
}

/// Run `cmd` as a helper to its end, its output captured (as
/// `Command::output`).
pub fn output(cmd: &mut Command) -> io::Result<Output> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut g = spawn(cmd)?;
    let out = g.take_output();
    let status = g.wait()?;
    let (stdout, stderr) = out?;
    Ok(Output {
        status,
        stdout,
        stderr,
    })
}

/// Run `cmd` as a helper to its end (as `Command::status`).
pub fn status(cmd: &mut Command) -> io::Result<ExitStatus> {
    cmd.stdin(Stdio::null());
    spawn(cmd)?.wait()
}

impl Group {
    /// The helper's pid (its group's id).
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    fn kill(&self) {
        // SAFETY: the leader is not reaped yet, so the group id is still ours.
        unsafe {
            libc::kill(-self.pgid, libc::SIGKILL);
        }
    }

    /// Whether the leader has exited, without reaping it: then what it left
    /// in its group is killed and it is reaped.
    pub fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(st) = self.reaped {
            return Ok(Some(st));
        }
        // SAFETY: waitid on our own child with WNOWAIT leaves it a zombie,
        // so its pid and group id stay ours until `finish` reaps it.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                self.child.id(),
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(None);
            }
            return Err(e);
        }
        // SAFETY: si_pid is set by waitid (0 when the child has not exited).
        if unsafe { info.si_pid() } == 0 {
            return Ok(None);
        }
        self.finish().map(Some)
    }

    /// Wait for the leader to exit; what it left in its group is killed.
    pub fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(st) = self.try_wait()? {
                return Ok(st);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn finish(&mut self) -> io::Result<ExitStatus> {
        self.kill();
        let st = self.child.wait()?;
        self.reaped = Some(st);
        self.unregister();
        Ok(st)
    }

    fn unregister(&self) {
        if let Ok(mut groups) = GROUPS.lock() {
            groups.retain(|g| *g != self.pgid);
        }
    }

    /// Read the helper's piped stdout and stderr to their end (on threads,
    /// so that neither pipe fills while the other is read).
    fn take_output(&mut self) -> io::Result<(Vec<u8>, Vec<u8>)> {
        use std::io::Read;
        let read = |pipe: Option<Box<dyn Read + Send>>| {
            std::thread::spawn(move || {
                let mut buf = Vec::new();
                if let Some(mut p) = pipe {
                    p.read_to_end(&mut buf)?;
                }
                Ok::<_, io::Error>(buf)
            })
        };
        let out = read(self.child.stdout.take().map(|p| Box::new(p) as _));
        let err = read(self.child.stderr.take().map(|p| Box::new(p) as _));
        let join = |t: std::thread::JoinHandle<io::Result<Vec<u8>>>| {
            t.join()
                .map_err(|_| io::Error::other("a pipe reader panicked"))?
        };
        Ok((join(out)?, join(err)?))
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.reaped.is_none() {
            self.kill();
            let _ = self.child.wait();
            self.unregister();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Whether process `pid` is gone or a zombie (dead, not reaped).
    fn dead(pid: i32) -> bool {
        match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            Err(_) => true,
            Ok(stat) => stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .is_some_and(|state| state == "Z" || state == "X"),
        }
    }

    fn wait_dead(pid: i32) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if dead(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// A shell that leaves a grandchild `sleep` behind and says its pid.
    fn with_grandchild(script_end: &str) -> (Group, i32) {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(format!("sleep 60 & echo $!; {script_end}"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        let mut g = spawn(&mut cmd).unwrap();
        let mut line = String::new();
        use std::io::BufRead;
        std::io::BufReader::new(g.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        (g, line.trim().parse().unwrap())
    }

    #[test]
    fn what_a_helper_started_dies_with_it() {
        // The helper exits and leaves a grandchild: it is killed with the group.
        let (mut g, grandchild) = with_grandchild("exit 3");
        assert_eq!(g.wait().unwrap().code(), Some(3));
        assert!(wait_dead(grandchild), "the grandchild outlived its helper");
        // A helper dropped while running takes its whole group with it.
        let (g, grandchild) = with_grandchild("sleep 60");
        let pid = g.id() as i32;
        drop(g);
        assert!(wait_dead(pid) && wait_dead(grandchild));
        // Output is captured as Command::output does.
        let out =
            output(Command::new("sh").args(["-c", "echo out; echo err >&2; exit 2"])).unwrap();
        assert_eq!(
            (out.status.code(), &out.stdout[..], &out.stderr[..]),
            (Some(2), &b"out\n"[..], &b"err\n"[..])
        );
    }

    #[test]
    fn a_helper_dies_when_natvet_does() {
        // PR_SET_PDEATHSIG fires when the thread that started the child
        // ends: a thread stands in for natvet, and its helper is not reaped.
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let g = spawn(Command::new("sleep").arg("60")).unwrap();
            tx.send(g.id() as i32).unwrap();
            // Forget it: no Drop, no kill, as when natvet is SIGKILLed.
            std::mem::forget(g);
        })
        .join()
        .unwrap();
        let pid = rx.recv().unwrap();
        assert!(
            wait_dead(pid),
            "the helper outlived the thread that started it"
        );
        // SAFETY: reap our own zombie child.
        let mut status = 0;
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        assert_eq!(r, pid);
        assert!(libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGTERM);
        if let Ok(mut groups) = GROUPS.lock() {
            groups.retain(|g| *g != pid);
        }
    }

    /// `kill_all` in a process of its own (it stops every helper of the
    /// process for good): the test binary runs the ignored test below.
    #[test]
    fn an_interrupt_kills_every_helper_and_starts_no_more() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "child::tests::kill_all_here",
                "--ignored",
                "--nocapture",
            ])
            .env("NATVET_TEST_KILL_ALL", "1")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && said.contains("1 passed"),
            "{said}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    #[ignore = "run by an_interrupt_kills_every_helper_and_starts_no_more"]
    fn kill_all_here() {
        if std::env::var_os("NATVET_TEST_KILL_ALL").is_none() {
            return;
        }
        let (mut g, grandchild) = with_grandchild("sleep 60");
        let started = Instant::now();
        kill_all();
        let st = g.wait().unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(!st.success() && wait_dead(grandchild));
        let e = spawn(&mut Command::new("true"))
            .err()
            .expect("refused after an interrupt");
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
    }
}
