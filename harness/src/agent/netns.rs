//! Network namespaces held by file descriptor. Namespaces are per thread, so
//! work inside one runs on a thread of its own that has entered it; sockets
//! keep the namespace they were created in, wherever they are used later.

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::{RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context, Result};
use nix::sched::{setns, unshare, CloneFlags};

/// Scenario runs overlap, and a child process holds a copy of every open
/// descriptor of the agent from fork until exec has closed them: a socket
/// that one run has just closed can still hold its port for that while.
/// Spawns hold this lock shared until the child has exec'd; taking a
/// well-known port again ([`take_port`]) holds it exclusively, so no new
/// copies appear, and waits out the last child's close-on-exec.
static SPAWNING: RwLock<()> = RwLock::new(());

/// Held while a child is started (until it has exec'd).
pub fn spawning() -> RwLockReadGuard<'static, ()> {
    SPAWNING
        .read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Take a port that a socket, now closed, may just have held (a relay's
/// listen port, a forwarded port): `bind` runs with no child being started,
/// and again while the port is in use, for up to two seconds. Exec closes
/// the child's copies one by one after the parent has been told it
/// succeeded, and on one CPU the parent often runs first. A port still
/// taken after that is really taken.
pub fn take_port<T>(mut bind: impl FnMut() -> Result<T>) -> Result<T> {
    const WAIT: Duration = Duration::from_secs(2);
    let _no_new_copies = SPAWNING
        .write()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let start = Instant::now();
    loop {
        match bind() {
            Err(e) if in_use(&e) && start.elapsed() < WAIT => {
                std::thread::sleep(Duration::from_millis(2))
            }
            other => return other,
        }
    }
}

fn in_use(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::AddrInUse)
    }) || format!("{e:#}").contains("os error 98")
}

/// A network namespace, alive as long as this value (or a process in it) is.
pub struct Netns {
    pub name: String,
    fd: OwnedFd,
}

impl Netns {
    /// A fresh, empty namespace (only `lo`, down).
    pub fn create(name: &str) -> Result<Netns> {
        let fd = std::thread::scope(|s| {
            s.spawn(|| -> Result<OwnedFd> {
                unshare(CloneFlags::CLONE_NEWNET).context("unshare(CLONE_NEWNET)")?;
                let file = File::open("/proc/thread-self/ns/net")
                    .context("opening /proc/thread-self/ns/net")?;
                Ok(OwnedFd::from(file))
            })
            .join()
            .map_err(|_| anyhow!("namespace thread panicked"))?
        })
        .with_context(|| format!("creating network namespace {name}"))?;
        Ok(Netns {
            name: name.to_string(),
            fd,
        })
    }

    pub fn raw_fd(&self) -> i32 {
        self.fd.as_raw_fd()
    }

    /// Run `f` on a thread inside this namespace and return its result.
    pub fn run<T: Send, F: FnOnce() -> Result<T> + Send>(&self, f: F) -> Result<T> {
        std::thread::scope(|s| {
            s.spawn(|| -> Result<T> {
                setns(self.fd.as_fd(), CloneFlags::CLONE_NEWNET)
                    .with_context(|| format!("entering namespace {}", self.name))?;
                f()
            })
            .join()
            .map_err(|_| anyhow!("thread in namespace {} panicked", self.name))?
        })
    }

    /// Run an async netlink job on a current-thread runtime inside this namespace.
    pub fn block_on<T: Send, F, Fut>(&self, f: F) -> Result<T>
    where
        F: FnOnce() -> Fut + Send,
        Fut: std::future::Future<Output = Result<T>>,
    {
        self.run(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a tokio runtime")?;
            rt.block_on(f())
        })
    }

    /// A command that runs inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let fd = self.fd.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open until the child has exec'd.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Read a file under /proc/thread-self/net (e.g. "dev", "route") as this namespace sees it.
    pub fn proc_net(&self, file: &str) -> String {
        self.run(|| {
            std::fs::read_to_string(format!("/proc/thread-self/net/{file}"))
                .with_context(|| format!("reading /proc/net/{file}"))
        })
        .unwrap_or_else(|e| format!("({e:#})"))
    }

    /// Write a sysctl (path below /proc/sys/net) inside this namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = crate::scenario::topology::sysctl_path(key);
        self.run(|| std::fs::write(&path, value).with_context(|| format!("setting {key}={value}")))
    }
}
