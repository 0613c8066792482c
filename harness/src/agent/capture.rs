//! Packet capture during a check, on chosen interfaces of chosen namespaces,
//! written as pcap (LINKTYPE_LINUX_SLL) so tcpdump and Wireshark open it.
//! Captures live in memory and are kept only when the check's evidence is.

use std::mem::{size_of, zeroed};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use etherparse::LaxIpSlice;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};
use pcap_file::{DataLink, Endianness, TsResolution};

use super::netns::Netns;

/// Bytes kept of each packet: headers, not payloads.
pub const SNAPLEN: usize = 512;
/// Packets kept per interface and check.
pub const MAX_PACKETS: usize = 20_000;
/// Bytes kept per interface and check: six interfaces' captures travel in one
/// message, which must stay under the protocol's line limit once in base64.
pub const MAX_BYTES: usize = 320 * 1024;

struct Packet {
    ts: Duration,
    len: u32,
    sll: [u8; 16],
    data: Vec<u8>,
}

/// One interface being captured.
struct Tap {
    ns: String,
    iface: String,
    thread: JoinHandle<(Vec<Packet>, usize)>,
}

/// Captures running for the length of one check.
pub struct Capture {
    stop: Arc<AtomicBool>,
    taps: Vec<Tap>,
}

/// A finished capture of one interface.
pub struct Pcap {
    pub namespace: String,
    pub interface: String,
    pub packets: usize,
    /// Packets seen once the capture was full, between the first half kept and the last, and not kept.
    pub not_kept: usize,
    pub bytes: Vec<u8>,
}

fn open_tap(ns: &Netns, iface: &str) -> Result<OwnedFd> {
    let iface = iface.to_string();
    ns.run(move || {
        let name = std::ffi::CString::new(iface.clone())?;
        // SAFETY: plain syscalls on values we own; the fd is wrapped at once.
        unsafe {
            let index = libc::if_nametoindex(name.as_ptr());
            if index == 0 {
                bail!("no interface {iface}");
            }
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                i32::from(proto),
            );
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).context("opening a packet socket");
            }
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sll: libc::sockaddr_ll = zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = index as i32;
            if libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                size_of::<libc::sockaddr_ll>() as u32,
            ) != 0
            {
                return Err(std::io::Error::last_os_error()).context("binding the packet socket");
            }
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 50_000,
            };
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                &tv as *const libc::timeval as *const libc::c_void,
                size_of::<libc::timeval>() as u32,
            );
            Ok(fd)
        }
    })
}

/// What a capture keeps within its limits: the first half of the budget and
/// the last half, so that both how a check began and how it ended (where a
/// failure usually shows) are in the pcap; the packets in between are
/// counted, not kept.
struct Kept {
    head: Vec<Packet>,
    head_bytes: usize,
    tail: std::collections::VecDeque<Packet>,
    tail_bytes: usize,
    not_kept: usize,
}

impl Kept {
    const HALF_BYTES: usize = MAX_BYTES / 2;
    const HALF_PACKETS: usize = MAX_PACKETS / 2;

    fn new() -> Self {
        Kept {
            head: Vec::new(),
            head_bytes: 0,
            tail: std::collections::VecDeque::new(),
            tail_bytes: 0,
            not_kept: 0,
        }
    }

    /// Bytes a packet takes in the pcap (record header and data).
    fn cost(p: &Packet) -> usize {
        p.data.len() + 16 + 16
    }

    fn push(&mut self, p: Packet) {
        let cost = Self::cost(&p);
        if self.tail.is_empty()
            && self.head.len() < Self::HALF_PACKETS
            && self.head_bytes + cost <= Self::HALF_BYTES
        {
            self.head_bytes += cost;
            self.head.push(p);
            return;
        }
        self.tail_bytes += cost;
        self.tail.push_back(p);
        while self.tail.len() > Self::HALF_PACKETS || self.tail_bytes > Self::HALF_BYTES {
            let Some(old) = self.tail.pop_front() else {
                break;
            };
            self.tail_bytes -= Self::cost(&old);
            self.not_kept += 1;
        }
    }

    fn finish(mut self) -> (Vec<Packet>, usize) {
        self.head.extend(self.tail);
        (self.head, self.not_kept)
    }
}

/// When the kernel received the packet last read from `fd` (SIOCGSTAMPNS).
fn kernel_timestamp(fd: &OwnedFd) -> Option<Duration> {
    const SIOCGSTAMPNS: libc::c_ulong = 0x8907;
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: the ioctl writes one timespec, which we own.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSTAMPNS, &mut ts as *mut libc::timespec) };
    if r != 0 || ts.tv_sec <= 0 {
        return None;
    }
    Some(Duration::new(
        ts.tv_sec as u64,
        ts.tv_nsec.clamp(0, 999_999_999) as u32,
    ))
}

/// The packets kept, and how many more were seen and not kept.
fn read_packets(fd: OwnedFd, stop: Arc<AtomicBool>) -> (Vec<Packet>, usize) {
    let mut kept = Kept::new();
    let mut buf = vec![0u8; 65536];
    // Read until asked to stop, then drain what is queued.
    loop {
        let stopping = stop.load(Ordering::SeqCst);
        // SAFETY: recvfrom into buffers we own, with their true sizes.
        let (n, sll) = unsafe {
            let mut sll: libc::sockaddr_ll = zeroed();
            let mut len = size_of::<libc::sockaddr_ll>() as u32;
            let n = libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr() as *mut libc::c_void,
                buf.len(),
                libc::MSG_TRUNC | if stopping { libc::MSG_DONTWAIT } else { 0 },
                &mut sll as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                &mut len,
            );
            (n, sll)
        };
        if n < 0 {
            if stopping {
                break;
            }
            continue;
        }
        let len = n as usize;
        // The kernel's receive time of the packet, not the time this thread
        // got to read it (later, by seconds, on a starved guest).
        let ts = kernel_timestamp(&fd).unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
        });
        let mut header = [0u8; 16];
        header[0..2].copy_from_slice(&u16::from(sll.sll_pkttype).to_be_bytes());
        header[2..4].copy_from_slice(&sll.sll_hatype.to_be_bytes());
        header[4..6].copy_from_slice(&u16::from(sll.sll_halen.min(8)).to_be_bytes());
        header[6..14].copy_from_slice(&sll.sll_addr);
        // sll_protocol is already in network byte order.
        header[14..16].copy_from_slice(&sll.sll_protocol.to_ne_bytes());
        kept.push(Packet {
            ts,
            len: len as u32,
            sll: header,
            data: buf[..len.min(SNAPLEN).min(buf.len())].to_vec(),
        });
    }
    kept.finish()
}

/// The packets as a pcap file (little-endian, microseconds, LINKTYPE_LINUX_SLL).
fn pcap_bytes(packets: &[Packet]) -> Vec<u8> {
    let header = PcapHeader {
        snaplen: (SNAPLEN + 16) as u32,
        datalink: DataLink::LINUX_SLL,
        ts_resolution: TsResolution::MicroSecond,
        endianness: Endianness::Little,
        ..PcapHeader::default()
    };
    // Writing into memory cannot fail, and every packet is within the
    // snap length (at most SNAPLEN bytes after its 16-byte header).
    let Ok(mut writer) = PcapWriter::with_header(Vec::new(), header) else {
        return Vec::new();
    };
    let mut record = Vec::with_capacity(SNAPLEN + 16);
    for p in packets {
        record.clear();
        record.extend_from_slice(&p.sll);
        record.extend_from_slice(&p.data);
        let _ = writer.write_packet(&PcapPacket::new(p.ts, p.len + 16, &record));
    }
    writer.into_writer()
}

/// Counts, on one interface, the packets whose source lies in a network that
/// must never appear there (the tunnel's, behind the masquerade): packets
/// that left the relay untranslated. Counting, not keeping, so it can watch
/// a whole transfer.
pub struct LeakWatch {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<LeakCount>,
}

#[derive(Debug, Default, Clone)]
pub struct LeakCount {
    /// IP packets seen.
    pub packets: usize,
    /// Of those, from the watched network.
    pub leaked: usize,
    /// The first leaked packet, described.
    pub first: Option<String>,
}

impl LeakWatch {
    pub fn start(ns: &Netns, iface: &str, net: crate::types::IpNet) -> Result<LeakWatch> {
        let fd = open_tap(ns, iface)?;
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut count = LeakCount::default();
            let mut buf = vec![0u8; 65536];
            loop {
                let stopping = s.load(Ordering::SeqCst);
                // SAFETY: recv into a buffer we own, with its true size.
                let n = unsafe {
                    libc::recv(
                        fd.as_raw_fd(),
                        buf.as_mut_ptr() as *mut libc::c_void,
                        buf.len(),
                        if stopping { libc::MSG_DONTWAIT } else { 0 },
                    )
                };
                if n < 0 {
                    if stopping {
                        break;
                    }
                    continue;
                }
                let pkt = &buf[..n as usize];
                let Some((src, dst, proto)) = ip_header(pkt) else {
                    continue;
                };
                count.packets += 1;
                if in_net(src, net) {
                    count.leaked += 1;
                    count
                        .first
                        .get_or_insert_with(|| format!("protocol {proto} from {src} to {dst}"));
                }
            }
            count
        });
        Ok(LeakWatch { stop, thread })
    }

    pub fn finish(self) -> LeakCount {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap_or_default()
    }
}

/// Source, destination and protocol of an IPv4 or IPv6 packet (the
/// protocol after any extension headers).
fn ip_header(pkt: &[u8]) -> Option<(IpAddr, IpAddr, u8)> {
    let (ip, _) = LaxIpSlice::from_slice(pkt).ok()?;
    Some((
        ip.source_addr(),
        ip.destination_addr(),
        ip.payload_ip_number().0,
    ))
}

/// Is `addr` inside `net`?
pub fn in_net(addr: IpAddr, net: crate::types::IpNet) -> bool {
    let bits = |a: IpAddr| -> u128 {
        match a {
            IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
            IpAddr::V6(v) => u128::from(v),
        }
    };
    if addr.is_ipv4() != net.addr.is_ipv4() {
        return false;
    }
    // Both families are aligned to the top bit, so a prefix counts from there.
    let mask = match u32::from(net.prefix) {
        0 => 0,
        p if p >= 128 => u128::MAX,
        p => !(u128::MAX >> p),
    };
    bits(addr) & mask == bits(net.addr) & mask
}

impl Capture {
    /// Start capturing on each (namespace, interface); interfaces that cannot
    /// be opened are skipped (their absence is itself visible in the evidence).
    pub fn start(targets: &[(&Netns, &str)]) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let mut taps = Vec::new();
        for (ns, iface) in targets {
            let Ok(fd) = open_tap(ns, iface) else {
                continue;
            };
            let s = stop.clone();
            taps.push(Tap {
                ns: ns.name.clone(),
                iface: iface.to_string(),
                thread: std::thread::spawn(move || read_packets(fd, s)),
            });
        }
        Capture { stop, taps }
    }

    /// Stop and return the captures (`keep` false: discard them cheaply).
    pub fn finish(self, keep: bool) -> Vec<Pcap> {
        self.stop.store(true, Ordering::SeqCst);
        let mut out = Vec::new();
        for tap in self.taps {
            let Ok((packets, not_kept)) = tap.thread.join() else {
                continue;
            };
            if keep {
                out.push(Pcap {
                    namespace: tap.ns,
                    interface: tap.iface,
                    packets: packets.len(),
                    not_kept,
                    bytes: pcap_bytes(&packets),
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_capture_keeps_its_beginning_and_its_end() {
        let packet = |i: u64| Packet {
            ts: Duration::from_millis(i),
            len: SNAPLEN as u32,
            sll: [0; 16],
            data: vec![0; SNAPLEN],
        };
        let mut kept = Kept::new();
        let seen = 10_000;
        for i in 0..seen {
            kept.push(packet(i));
        }
        let (packets, not_kept) = kept.finish();
        assert_eq!(packets.len() + not_kept, seen as usize);
        let bytes: usize = packets.iter().map(Kept::cost).sum();
        assert!(bytes <= MAX_BYTES, "{bytes} bytes kept");
        assert_eq!(packets[0].ts, Duration::from_millis(0));
        assert_eq!(
            packets.last().map(|p| p.ts),
            Some(Duration::from_millis(seen - 1))
        );
        // In order: the head, then the tail, with the middle left out.
        assert!(packets.windows(2).all(|w| w[0].ts < w[1].ts));
        let mut few = Kept::new();
        for i in 0..10 {
            few.push(packet(i));
        }
        assert_eq!(few.finish().0.len(), 10);
    }

    #[test]
    fn networks_contain_their_addresses_only() {
        let net = |s: &str, p| crate::types::IpNet {
            addr: s.parse().unwrap(),
            prefix: p,
        };
        assert!(in_net("10.99.0.2".parse().unwrap(), net("10.99.0.0", 24)));
        assert!(!in_net("10.99.1.2".parse().unwrap(), net("10.99.0.0", 24)));
        assert!(!in_net(
            "198.51.100.1".parse().unwrap(),
            net("10.99.0.0", 24)
        ));
        assert!(in_net("fd99::2".parse().unwrap(), net("fd99::", 64)));
        assert!(!in_net("2001:db8:2::1".parse().unwrap(), net("fd99::", 64)));
        assert!(!in_net("10.99.0.2".parse().unwrap(), net("fd99::", 64)));
    }

    #[test]
    fn reads_ip_headers() {
        let mut v4 = vec![0x45, 0, 0, 20, 0, 0, 0, 0, 64, 17, 0, 0];
        v4.extend_from_slice(&[10, 99, 0, 2, 198, 51, 100, 2]);
        assert_eq!(
            ip_header(&v4),
            Some((
                "10.99.0.2".parse().unwrap(),
                "198.51.100.2".parse().unwrap(),
                17
            ))
        );
        assert_eq!(ip_header(&v4[..10]), None);
    }

    #[test]
    fn pcap_layout() {
        let p = Packet {
            ts: Duration::new(10, 5_000),
            len: 100,
            sll: [0; 16],
            data: vec![0x45; 40],
        };
        let b = pcap_bytes(&[p]);
        assert_eq!(&b[0..4], &0xa1b2_c3d4u32.to_le_bytes());
        // version 2.4, snap length, LINKTYPE_LINUX_SLL (113)
        assert_eq!(&b[4..8], &[2, 0, 4, 0]);
        assert_eq!(u32::from_le_bytes([b[16], b[17], b[18], b[19]]), 528);
        assert_eq!(u32::from_le_bytes([b[20], b[21], b[22], b[23]]), 113);
        // record header: ts_sec, ts_usec, caplen, len
        assert_eq!(u32::from_le_bytes([b[24], b[25], b[26], b[27]]), 10);
        assert_eq!(u32::from_le_bytes([b[28], b[29], b[30], b[31]]), 5);
        assert_eq!(u32::from_le_bytes([b[32], b[33], b[34], b[35]]), 56);
        assert_eq!(u32::from_le_bytes([b[36], b[37], b[38], b[39]]), 116);
        assert_eq!(b.len(), 24 + 16 + 56);
        assert_eq!(&b[40..56], &[0; 16]);
        assert_eq!(&b[56..], &[0x45; 40]);
    }

    #[test]
    fn pcap_reads_back() {
        let p = |s| Packet {
            ts: Duration::new(s, 0),
            // (pcap-file's reader refuses packets longer than the snap
            // length, which tcpdump and Wireshark read as cut short.)
            len: 300,
            sll: [1; 16],
            data: vec![0x60; 300],
        };
        let b = pcap_bytes(&[p(1), p(2)]);
        let mut r = pcap_file::pcap::PcapReader::new(&b[..]).unwrap();
        assert_eq!(r.header().datalink, DataLink::LINUX_SLL);
        let first = r.next_packet().unwrap().unwrap();
        assert_eq!((first.timestamp.as_secs(), first.orig_len), (1, 316));
        assert_eq!(first.data.len(), 316);
        assert!(r.next_packet().unwrap().is_ok());
        assert!(r.next_packet().is_none());
    }
}
