//! Probes: what the internet host really receives, and the client's side of
//! each exchange. Servers record the source address of every packet they see,
//! tagged by the nonce the client put in it, so a check reads packets, not
//! exit codes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::mem::MaybeUninit;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use sha2::{Digest, Sha256};
use socket2::{Domain, Protocol, Socket, Type};

use super::netns::Netns;

pub const TCP_PORT: u16 = 8080;
pub const UDP_PORT: u16 = 8081;
const POLL: Duration = Duration::from_millis(100);

/// What the internet host saw, by tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub source: IpAddr,
    pub source_port: Option<u16>,
}

type Ledger = Arc<Mutex<HashMap<String, Seen>>>;

fn record(ledger: &Ledger, tag: &str, seen: Seen) {
    if let Ok(mut map) = ledger.lock() {
        map.insert(tag.to_string(), seen);
    }
}

/// TCP, UDP and ICMP listeners on the internet host.
pub struct InternetHost {
    pub addr: Ipv4Addr,
    ledger: Ledger,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl InternetHost {
    pub fn start(ns: &Netns, addr: Ipv4Addr) -> Result<InternetHost> {
        let (tcp, udp, icmp) = ns.run(|| {
            let tcp = TcpListener::bind((addr, TCP_PORT)).context("binding TCP probe server")?;
            tcp.set_nonblocking(true)?;
            let udp = UdpSocket::bind((addr, UDP_PORT)).context("binding UDP probe server")?;
            udp.set_read_timeout(Some(POLL))?;
            let icmp = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
                .context("opening raw ICMP socket")?;
            icmp.set_read_timeout(Some(POLL))?;
            Ok((tcp, udp, icmp))
        })?;
        let ledger: Ledger = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();

        let (l, s) = (ledger.clone(), stop.clone());
        threads.push(std::thread::spawn(move || tcp_server(tcp, l, s)));
        let (l, s) = (ledger.clone(), stop.clone());
        threads.push(std::thread::spawn(move || udp_server(udp, l, s)));
        let (l, s) = (ledger.clone(), stop.clone());
        threads.push(std::thread::spawn(move || icmp_watcher(icmp, l, s)));
        Ok(InternetHost {
            addr,
            ledger,
            stop,
            threads,
        })
    }

    pub fn seen(&self, tag: &str) -> Option<Seen> {
        self.ledger.lock().ok()?.get(tag).cloned()
    }

    pub fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn tcp_server(listener: TcpListener, ledger: Ledger, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => {
                let ledger = ledger.clone();
                std::thread::spawn(move || {
                    let _ = tcp_session(stream, peer, &ledger);
                });
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// One line of command, then: `ECHO tag` echoes the tag; `SINK tag N` reads N
/// bytes and answers their SHA-256 in hex.
fn tcp_session(stream: TcpStream, peer: SocketAddr, ledger: &Ledger) -> Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let words: Vec<&str> = line.split_whitespace().collect();
    let seen = Seen {
        source: peer.ip(),
        source_port: Some(peer.port()),
    };
    let mut out = stream;
    match words.as_slice() {
        ["ECHO", tag] => {
            record(ledger, tag, seen);
            out.write_all(format!("{tag}\n").as_bytes())?;
        }
        ["SINK", tag, n] => {
            record(ledger, tag, seen);
            let n: u64 = n.parse()?;
            let mut hasher = Sha256::new();
            let mut left = n;
            let mut buf = vec![0u8; 64 * 1024];
            while left > 0 {
                let want = buf.len().min(left as usize);
                let got = reader.read(&mut buf[..want])?;
                if got == 0 {
                    bail!("stream ended {left} bytes early");
                }
                hasher.update(&buf[..got]);
                left -= got as u64;
            }
            out.write_all(format!("{}\n", hex::encode(hasher.finalize())).as_bytes())?;
        }
        _ => bail!("unknown probe command {line:?}"),
    }
    Ok(())
}

fn udp_server(socket: UdpSocket, ledger: Ledger, stop: Arc<AtomicBool>) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::SeqCst) {
        if let Ok((n, peer)) = socket.recv_from(&mut buf) {
            let tag = String::from_utf8_lossy(&buf[..n]).to_string();
            record(
                &ledger,
                &tag,
                Seen {
                    source: peer.ip(),
                    source_port: Some(peer.port()),
                },
            );
            let _ = socket.send_to(&buf[..n], peer);
        }
    }
}

/// Records the source of every ICMP echo request, tagged "icmp-ID-SEQ".
/// The kernel itself answers the echo.
fn icmp_watcher(socket: Socket, ledger: Ledger, stop: Arc<AtomicBool>) {
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    while !stop.load(Ordering::SeqCst) {
        let Ok(n) = socket.recv(&mut buf) else {
            continue;
        };
        // SAFETY: recv initialised the first n bytes.
        let bytes: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        if let Some(p) = parse_ipv4_icmp(&bytes) {
            if p.icmp_type == ICMP_ECHO_REQUEST {
                record(
                    &ledger,
                    &echo_tag(p.id, p.seq),
                    Seen {
                        source: IpAddr::V4(p.source),
                        source_port: None,
                    },
                );
            }
        }
    }
}

pub fn echo_tag(id: u16, seq: u16) -> String {
    format!("icmp-{id}-{seq}")
}

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_UNREACHABLE: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;

/// The parts of an IPv4 ICMP packet the checks look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpPacket {
    pub source: Ipv4Addr,
    pub icmp_type: u8,
    pub code: u8,
    pub id: u16,
    pub seq: u16,
    /// For errors: the embedded original packet's protocol, source and destination port.
    pub inner_proto: Option<u8>,
    pub inner_src: Option<Ipv4Addr>,
    pub inner_sport: Option<u16>,
    pub inner_dport: Option<u16>,
}

/// Parse an IPv4 packet carrying ICMP, as a raw socket delivers it.
pub fn parse_ipv4_icmp(pkt: &[u8]) -> Option<IcmpPacket> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 || pkt[9] != 1 {
        return None;
    }
    let ihl = usize::from(pkt[0] & 0x0f) * 4;
    let icmp = pkt.get(ihl..)?;
    if icmp.len() < 8 {
        return None;
    }
    let source = Ipv4Addr::new(pkt[12], pkt[13], pkt[14], pkt[15]);
    let (mut inner_proto, mut inner_src, mut inner_sport, mut inner_dport) =
        (None, None, None, None);
    if icmp[0] == ICMP_UNREACHABLE {
        if let Some(inner) = icmp.get(8..) {
            if inner.len() >= 20 {
                let ihl = usize::from(inner[0] & 0x0f) * 4;
                inner_proto = Some(inner[9]);
                inner_src = Some(Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]));
                if let Some(l4) = inner.get(ihl..ihl + 4) {
                    inner_sport = Some(u16::from_be_bytes([l4[0], l4[1]]));
                    inner_dport = Some(u16::from_be_bytes([l4[2], l4[3]]));
                }
            }
        }
    }
    Some(IcmpPacket {
        source,
        icmp_type: icmp[0],
        code: icmp[1],
        id: u16::from_be_bytes([icmp[4], icmp[5]]),
        seq: u16::from_be_bytes([icmp[6], icmp[7]]),
        inner_proto,
        inner_src,
        inner_sport,
        inner_dport,
    })
}

fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from_be_bytes([chunk[0], 0])
        };
        sum += u32::from(word);
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An ICMP echo request packet (without IP header).
pub fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut pkt = vec![ICMP_ECHO_REQUEST, 0, 0, 0];
    pkt.extend_from_slice(&id.to_be_bytes());
    pkt.extend_from_slice(&seq.to_be_bytes());
    pkt.extend_from_slice(payload);
    let sum = checksum(&pkt);
    pkt[2..4].copy_from_slice(&sum.to_be_bytes());
    pkt
}

/// A raw ICMP socket in a namespace: sends echo requests, sees every ICMP packet.
pub struct IcmpSocket(Socket);

impl IcmpSocket {
    pub fn open(ns: &Netns) -> Result<IcmpSocket> {
        ns.run(|| {
            let s = Socket::new(Domain::IPV4, Type::RAW, Some(Protocol::ICMPV4))
                .context("opening raw ICMP socket")?;
            s.set_read_timeout(Some(Duration::from_millis(20)))?;
            Ok(IcmpSocket(s))
        })
    }

    /// Drop anything queued so far.
    pub fn drain(&self) {
        while self.recv().is_some() {}
    }

    /// The next ICMP packet, or None after a short wait.
    pub fn recv(&self) -> Option<IcmpPacket> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
        let n = self.0.recv(&mut buf).ok()?;
        // SAFETY: recv initialised the first n bytes.
        let bytes: Vec<u8> = buf[..n]
            .iter()
            .map(|b| unsafe { b.assume_init() })
            .collect();
        parse_ipv4_icmp(&bytes)
    }

    pub fn send_echo(&self, dest: Ipv4Addr, id: u16, seq: u16) -> Result<()> {
        let pkt = echo_request(id, seq, b"natvet-echo-probe");
        self.0
            .send_to(&pkt, &SocketAddr::V4(SocketAddrV4::new(dest, 0)).into())
            .context("sending ICMP echo request")?;
        Ok(())
    }

    /// Wait for the echo reply to (id, seq) until `deadline`.
    pub fn await_echo_reply(&self, id: u16, seq: u16, deadline: Instant) -> Option<IcmpPacket> {
        while Instant::now() < deadline {
            if let Some(p) = self.recv() {
                if p.icmp_type == ICMP_ECHO_REPLY && p.id == id && p.seq == seq {
                    return Some(p);
                }
            }
        }
        None
    }
}

/// A TCP exchange from the client: `ECHO tag`, answer must be the tag.
pub fn tcp_echo(ns: &Netns, dest: SocketAddr, tag: &str, timeout: Duration) -> Result<()> {
    let mut stream = ns.run(|| {
        TcpStream::connect_timeout(&dest, timeout).with_context(|| format!("TCP connect to {dest}"))
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("ECHO {tag}\n").as_bytes())?;
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .context("reading TCP echo")?;
    if line.trim() != tag {
        bail!("TCP echo answered {:?} instead of {tag:?}", line.trim());
    }
    Ok(())
}

/// A UDP exchange from the client: the datagram must come back unchanged.
pub fn udp_echo(ns: &Netns, dest: SocketAddr, tag: &str, timeout: Duration) -> Result<()> {
    let socket = ns.run(|| UdpSocket::bind("0.0.0.0:0").context("binding UDP client socket"))?;
    udp_echo_on(&socket, dest, tag, timeout)
}

/// A UDP exchange on an existing socket.
pub fn udp_echo_on(
    socket: &UdpSocket,
    dest: SocketAddr,
    tag: &str,
    timeout: Duration,
) -> Result<()> {
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 2048];
    // Resend every 200 ms: the first datagram may wait for a handshake.
    while Instant::now() < deadline {
        socket
            .send_to(tag.as_bytes(), dest)
            .context("sending UDP probe")?;
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            if &buf[..n] == tag.as_bytes() {
                return Ok(());
            }
        }
    }
    Err(anyhow!("no UDP echo from {dest} within {timeout:?}"))
}

/// Send `bytes` of deterministic pseudo-random data; returns (our hash, their hash).
/// `connect` bounds the connection attempt, `timeout` each read and write.
pub fn tcp_transfer(
    ns: &Netns,
    dest: SocketAddr,
    tag: &str,
    bytes: u64,
    connect: Duration,
    timeout: Duration,
) -> Result<(String, String)> {
    let mut stream = ns.run(|| {
        TcpStream::connect_timeout(&dest, connect).with_context(|| format!("TCP connect to {dest}"))
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    stream.write_all(format!("SINK {tag} {bytes}\n").as_bytes())?;
    let mut hasher = Sha256::new();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut left = bytes;
    let mut buf = vec![0u8; 64 * 1024];
    while left > 0 {
        let n = buf.len().min(left as usize);
        for b in &mut buf[..n] {
            // xorshift64: cheap, deterministic, not compressible.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *b = state as u8;
        }
        stream
            .write_all(&buf[..n])
            .context("sending transfer data")?;
        hasher.update(&buf[..n]);
        left -= n as u64;
    }
    let mut line = String::new();
    BufReader::new(stream)
        .read_line(&mut line)
        .context("reading the receiver's hash")?;
    Ok((hex::encode(hasher.finalize()), line.trim().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_request_checksum_verifies() {
        let pkt = echo_request(0x1234, 7, b"abc");
        assert_eq!(checksum(&pkt), 0);
    }

    #[test]
    fn parses_port_unreachable() {
        // IPv4 header (20) + ICMP 3/3 + embedded IPv4 (20) + UDP header.
        let mut pkt = vec![
            0x45, 0, 0, 56, 0, 0, 0, 0, 64, 1, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2,
        ];
        pkt.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
        pkt.extend_from_slice(&[
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 17, 0, 0, 192, 0, 2, 2, 192, 0, 2, 1,
        ]);
        pkt.extend_from_slice(&[0x9c, 0x40, 0x82, 0x9a, 0, 8, 0, 0]);
        let p = parse_ipv4_icmp(&pkt).unwrap();
        assert_eq!(p.icmp_type, ICMP_UNREACHABLE);
        assert_eq!(p.code, 3);
        assert_eq!(p.source, Ipv4Addr::new(192, 0, 2, 1));
        assert_eq!(p.inner_proto, Some(17));
        assert_eq!(p.inner_dport, Some(33434));
        assert_eq!(p.inner_sport, Some(40000));
        assert_eq!(p.inner_src, Some(Ipv4Addr::new(192, 0, 2, 2)));
    }

    #[test]
    fn truncated_packets_are_ignored() {
        assert_eq!(parse_ipv4_icmp(&[]), None);
        assert_eq!(parse_ipv4_icmp(&[0x45; 21]), None);
    }
}
