//! Writer for the "newc" cpio format (magic `070701`), the format the Linux
//! kernel unpacks as an initramfs.
//!
//! Output is deterministic: mtime 0, uid/gid 0, inode numbers assigned in the
//! order entries are written (starting at 1). Paths are stored without a
//! leading `/`. Missing parent directories are created automatically (mode
//! 0755) and every directory is written once, so parents always precede their
//! children.

use std::collections::HashMap;
use std::io::{self, Write};

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

/// Header size of a newc entry (magic + 13 eight-digit hex fields).
pub const HEADER_LEN: usize = 110;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Dir,
    Other,
}

/// Streaming newc cpio writer.
pub struct CpioWriter<W: Write> {
    out: W,
    next_ino: u32,
    written: u64,
    entries: usize,
    seen: HashMap<String, Kind>,
}

/// Normalises an archive path: strips leading `/`, rejects empty, `.` and
/// `..` components.
fn normalise(path: &str) -> io::Result<String> {
    let mut parts = Vec::new();
    for comp in path.split('/') {
        match comp {
            "" => continue,
            "." | ".." => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("cpio path {path:?} contains '.' or '..'"),
                ))
            }
            c => parts.push(c),
        }
    }
    if parts.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("empty cpio path {path:?}"),
        ));
    }
    Ok(parts.join("/"))
}

impl<W: Write> CpioWriter<W> {
    pub fn new(out: W) -> Self {
        CpioWriter {
            out,
            next_ino: 1,
            written: 0,
            entries: 0,
            seen: HashMap::new(),
        }
    }

    /// Bytes written so far.
    pub fn bytes_written(&self) -> u64 {
        self.written
    }

    /// Entries written so far (directories included, trailer excluded).
    pub fn entries(&self) -> usize {
        self.entries
    }

    /// Whether `path` has already been written (as anything).
    pub fn contains(&self, path: &str) -> bool {
        normalise(path).is_ok_and(|p| self.seen.contains_key(&p))
    }

    fn put(&mut self, buf: &[u8]) -> io::Result<()> {
        self.out.write_all(buf)?;
        self.written += buf.len() as u64;
        Ok(())
    }

    fn pad4(&mut self) -> io::Result<()> {
        let rem = (self.written % 4) as usize;
        if rem != 0 {
            self.put(&[0u8; 4][..4 - rem])?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn raw_entry(
        &mut self,
        name: &str,
        ino: u32,
        mode: u32,
        nlink: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let size = u32::try_from(data.len()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{name}: file larger than 4 GiB"),
            )
        })?;
        let namesize = name.len() + 1;
        let header = format!(
            "070701{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}{:08x}",
            ino, mode, 0, 0, nlink, 0, size, 0, 0, rdev.0, rdev.1, namesize, 0
        );
        debug_assert_eq!(header.len(), HEADER_LEN);
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad4()?;
        self.put(data)?;
        self.pad4()
    }

    fn entry(
        &mut self,
        path: &str,
        kind: Kind,
        mode: u32,
        rdev: (u32, u32),
        data: &[u8],
    ) -> io::Result<()> {
        let ino = self.next_ino;
        self.next_ino += 1;
        let nlink = if kind == Kind::Dir { 2 } else { 1 };
        self.raw_entry(path, ino, mode, nlink, rdev, data)?;
        self.seen.insert(path.to_string(), kind);
        self.entries += 1;
        Ok(())
    }

    /// Creates every missing ancestor directory of `path` (already normalised).
    fn parents(&mut self, path: &str) -> io::Result<()> {
        let mut end = 0;
        while let Some(i) = path[end..].find('/') {
            let parent = &path[..end + i];
            match self.seen.get(parent) {
                Some(Kind::Dir) => {}
                Some(Kind::Other) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{path}: parent {parent} is not a directory"),
                    ))
                }
                None => {
                    let p = parent.to_string();
                    self.entry(&p, Kind::Dir, S_IFDIR | 0o755, (0, 0), &[])?;
                }
            }
            end += i + 1;
        }
        Ok(())
    }

    /// Checks `path` for duplicates and creates its parents; returns the
    /// normalised path.
    fn prepare(&mut self, path: &str) -> io::Result<String> {
        let p = normalise(path)?;
        if self.seen.contains_key(&p) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("cpio entry {p} added twice"),
            ));
        }
        self.parents(&p)?;
        Ok(p)
    }

    /// Adds a directory (and its missing parents). Adding an existing
    /// directory again is a no-op.
    pub fn add_dir(&mut self, path: &str, mode: u32) -> io::Result<()> {
        let p = normalise(path)?;
        match self.seen.get(&p) {
            Some(Kind::Dir) => return Ok(()),
            Some(Kind::Other) => {
                return Err(io::Error::new(
                    io::ErrorKind::AlreadyExists,
                    format!("{p} exists and is not a directory"),
                ))
            }
            None => {}
        }
        self.parents(&p)?;
        self.entry(&p, Kind::Dir, S_IFDIR | (mode & 0o7777), (0, 0), &[])
    }

    /// Adds a regular file (and its missing parents).
    pub fn add_file(&mut self, path: &str, mode: u32, data: &[u8]) -> io::Result<()> {
        let p = self.prepare(path)?;
        self.entry(&p, Kind::Other, S_IFREG | (mode & 0o7777), (0, 0), data)
    }

    /// Adds a symbolic link `path -> target` (and its missing parents).
    pub fn add_symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        let p = self.prepare(path)?;
        self.entry(&p, Kind::Other, S_IFLNK | 0o777, (0, 0), target.as_bytes())
    }

    /// Adds a character device node (and its missing parents).
    pub fn add_char_device(
        &mut self,
        path: &str,
        mode: u32,
        major: u32,
        minor: u32,
    ) -> io::Result<()> {
        let p = self.prepare(path)?;
        self.entry(
            &p,
            Kind::Other,
            S_IFCHR | (mode & 0o7777),
            (major, minor),
            &[],
        )
    }

    /// Writes the `TRAILER!!!` entry, pads the archive to a multiple of 512
    /// bytes, flushes and returns the inner writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.raw_entry("TRAILER!!!", 0, 0, 1, (0, 0), &[])?;
        let rem = (self.written % 512) as usize;
        if rem != 0 {
            let zeros = vec![0u8; 512 - rem];
            self.put(&zeros)?;
        }
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn have_cpio() -> bool {
        Command::new("cpio")
            .arg("--version")
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    fn sample() -> Vec<u8> {
        let mut w = CpioWriter::new(Vec::new());
        w.add_dir("/dev", 0o755).unwrap();
        w.add_char_device("dev/console", 0o600, 5, 1).unwrap();
        w.add_file("/usr/lib/x/hello.txt", 0o644, b"hello\n")
            .unwrap();
        w.add_file("init", 0o755, b"#!/bin/sh\n").unwrap();
        w.add_symlink("usr/lib/x/link", "hello.txt").unwrap();
        w.add_dir("usr/lib", 0o755).unwrap(); // dedup: no second entry
        w.finish().unwrap()
    }

    #[test]
    fn header_bytes() {
        let mut w = CpioWriter::new(Vec::new());
        w.add_file("a", 0o644, b"xy").unwrap();
        let out = w.finish().unwrap();
        let expect = concat!(
            "070701", "00000001", // ino
            "000081a4", // mode 0100644
            "00000000", // uid
            "00000000", // gid
            "00000001", // nlink
            "00000000", // mtime
            "00000002", // filesize
            "00000000", // devmajor
            "00000000", // devminor
            "00000000", // rdevmajor
            "00000000", // rdevminor
            "00000002", // namesize "a\0"
            "00000000", // check
        );
        assert_eq!(&out[..HEADER_LEN], expect.as_bytes());
        // name "a\0" -> 112 bytes, already aligned; then data padded to 4.
        assert_eq!(&out[110..112], b"a\0");
        assert_eq!(&out[112..116], b"xy\0\0");
        assert_eq!(&out[116..122], b"070701");
        assert_eq!(out.len() % 512, 0);
        let trailer = &out[116..116 + HEADER_LEN + 11];
        assert!(trailer.ends_with(b"TRAILER!!!\0"));
    }

    #[test]
    fn deterministic_and_parents_first() {
        let a = sample();
        assert_eq!(a, sample());
        let mut w = CpioWriter::new(Vec::new());
        w.add_file("x/y", 0o644, b"").unwrap();
        assert!(w.add_file("x/y", 0o644, b"").is_err());
        assert!(w.add_file("x/y/z", 0o644, b"").is_err());
        assert!(w.add_dir("x/y", 0o755).is_err());
        assert!(w.add_file("../etc", 0o644, b"").is_err());
        assert_eq!(w.entries(), 2);
    }

    #[test]
    fn roundtrip_host_cpio() {
        if !have_cpio() {
            eprintln!("note: host cpio missing, skipping");
            return;
        }
        let archive = sample();
        let listing = Command::new("cpio")
            .arg("-it")
            .arg("--quiet")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                use std::io::Write as _;
                c.stdin.take().unwrap().write_all(&archive)?;
                c.wait_with_output()
            })
            .unwrap();
        assert!(listing.status.success());
        let names: Vec<String> = String::from_utf8_lossy(&listing.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "usr",
                "usr/lib",
                "usr/lib/x",
                "usr/lib/x/hello.txt",
                "init",
                "usr/lib/x/link"
            ]
        );

        let dir = tempfile::tempdir().unwrap();
        let archive_path = dir.path().join("a.cpio");
        std::fs::write(&archive_path, &archive).unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let st = Command::new("sh")
            .arg("-c")
            .arg("cpio -idmv --quiet --no-absolute-filenames < ../a.cpio")
            .current_dir(&root)
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        assert_eq!(
            std::fs::read(root.join("usr/lib/x/hello.txt")).unwrap(),
            b"hello\n"
        );
        assert_eq!(
            std::fs::read_link(root.join("usr/lib/x/link")).unwrap(),
            std::path::Path::new("hello.txt")
        );
        use std::os::unix::fs::PermissionsExt;
        let m = std::fs::metadata(root.join("init")).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o755);
        // Device nodes need CAP_MKNOD; check when root.
        if nix::unistd::geteuid().is_root() {
            use std::os::unix::fs::FileTypeExt;
            let md = std::fs::symlink_metadata(root.join("dev/console")).unwrap();
            assert!(md.file_type().is_char_device());
            use std::os::unix::fs::MetadataExt;
            assert_eq!(md.rdev(), libc::makedev(5, 1));
        }
    }
}
