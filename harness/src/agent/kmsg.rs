//! The kernel log, read from /dev/kmsg: new lines only, without blocking.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::os::unix::fs::OpenOptionsExt;

pub struct Kmsg(Option<File>);

impl Kmsg {
    /// Opens the log positioned at its end; without /dev/kmsg it yields nothing.
    pub fn open() -> Kmsg {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")
            .ok()
            .map(|mut f| {
                let _ = f.seek(SeekFrom::End(0));
                f
            });
        Kmsg(file)
    }

    /// Lines logged since the last call, as "[seconds] message".
    pub fn drain(&mut self) -> Vec<String> {
        let mut lines = Vec::new();
        let Some(file) = self.0.as_mut() else {
            return lines;
        };
        let mut buf = vec![0u8; 8192];
        loop {
            match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => lines.push(format_record(&String::from_utf8_lossy(&buf[..n]))),
                // EPIPE: records were overwritten before we read them; go on.
                Err(e) if e.kind() == ErrorKind::BrokenPipe => continue,
                Err(_) => break,
            }
        }
        lines
    }
}

/// "6,339,5140900,-;message\n continuation" -> "[5.140900] message"
fn format_record(record: &str) -> String {
    let (head, message) = record.split_once(';').unwrap_or(("", record));
    let message = message.lines().next().unwrap_or("").to_string();
    match head.split(',').nth(2).and_then(|us| us.parse::<u64>().ok()) {
        Some(us) => format!("[{}.{:06}] {message}", us / 1_000_000, us % 1_000_000),
        None => message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_records() {
        assert_eq!(
            format_record("4,339,5140900,-;WARNING: CPU: 0 PID: 1 at net/x.c:1\n SUBSYSTEM=net\n"),
            "[5.140900] WARNING: CPU: 0 PID: 1 at net/x.c:1"
        );
        assert_eq!(format_record("garbage"), "garbage");
    }
}
