//! Fixtures of the archive's tests, also used by the sources' tests: a
//! Packages file with kernels of several kinds, and a repository served
//! over HTTP on loopback.

use std::io::{BufReader, Write};
use std::sync::atomic::Ordering;

use crate::kernel::repository::Naming;

/// A Packages file with kernels of several kinds (and one other package).
pub(crate) const SAMPLE: &str = "\
Package: linux-image-6.1.0-50-amd64
Source: linux-signed-amd64 (6.1.170+1)
Version: 6.1.170-1
Depends: kmod, linux-base (>= 4.3~), initramfs-tools (>= 0.120+deb8u2) | linux-initramfs-tool
Description: Linux 6.1 for 64-bit PCs (signed)
 The Linux kernel 6.1 and modules for use on PCs with AMD64, Intel 64 or
 VIA Nano processors.
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-50-amd64_6.1.170-1_amd64.deb
Size: 69000000
SHA256: AAAA

Package: zsh
Version: 5.9-4
Filename: pool/main/z/zsh/zsh_5.9-4_amd64.deb
SHA256: ffff

Package: linux-image-6.1.0-49-amd64
Version: 6.1.158-1
Filename: pool/main/l/linux-signed-amd64/linux-image-6.1.0-49-amd64_6.1.158-1_amd64.deb
SHA256: bbbb

Package: linux-image-6.1.0-50-cloud-amd64
Version: 6.1.171-1
Filename: pool/x.deb
SHA256: cccc

Package: linux-image-6.1.0-50-amd64-dbg
Version: 6.1.172-1
Filename: pool/y.deb
SHA256: dddd

Package: linux-image-6.12.9-amd64
Version: 6.12.9-1
Filename: pool/z.deb
SHA256: eeee
";

pub(crate) fn prefixes() -> Vec<String> {
    Naming::debian().prefixes()
}

// ------------------------------------------------------------ a repository over HTTP

/// A tiny HTTP server on loopback serving `files` (path -> body; 404
/// for anything else), counting the requests.
pub(crate) struct Server {
    pub base: String,
    pub hits: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

pub(crate) fn serve(files: Vec<(String, Vec<u8>)>) -> Server {
    use std::io::BufRead;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let h = hits.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            h.fetch_add(1, Ordering::SeqCst);
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let reply = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let mut r = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    )
                    .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    .to_vec(),
            };
            let _ = conn.write_all(&reply);
        }
    });
    Server { base, hits }
}
