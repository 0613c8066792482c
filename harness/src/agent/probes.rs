//! Probes: what the internet host really receives, and the client's side of
//! each exchange. Servers record the source address of every packet they see,
//! tagged by the nonce the client put in it, so a check reads packets, not
//! exit codes.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::mem::MaybeUninit;
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket,
};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use etherparse::{
    IcmpEchoHeader, Icmpv4Header, Icmpv4Slice, Icmpv4Type, Icmpv6Slice, IpNumber, LaxIpSlice,
    LaxIpv4Slice,
};
use sha2::{Digest, Sha256};
use socket2::{Domain, Protocol, Socket, Type};

use super::netns::{take_port, Netns};

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

/// TCP, UDP and ICMP listeners on the internet host, on each of its addresses.
pub struct InternetHost {
    ledger: Ledger,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl InternetHost {
    pub fn start(ns: &Netns, addrs: &[IpAddr]) -> Result<InternetHost> {
        let ledger: Ledger = Arc::default();
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::new();
        for &addr in addrs {
            let (tcp, udp, icmp) = ns.run(|| {
                // A relay at scale opens thousands of connections at once: a
                // long accept queue, and room for bursts of datagrams.
                let tcp = Socket::new(
                    Domain::for_address((addr, TCP_PORT).into()),
                    Type::STREAM,
                    None,
                )
                .context("creating the TCP probe server")?;
                tcp.set_reuse_address(true)?;
                tcp.bind(&SocketAddr::new(addr, TCP_PORT).into())
                    .with_context(|| format!("binding TCP probe server on {addr}"))?;
                tcp.listen(4096)
                    .context("listening on the TCP probe server")?;
                let tcp = TcpListener::from(tcp);
                tcp.set_nonblocking(true)?;
                let udp = UdpSocket::bind((addr, UDP_PORT))
                    .with_context(|| format!("binding UDP probe server on {addr}"))?;
                udp.set_read_timeout(Some(POLL))?;
                let _ = socket2::SockRef::from(&udp).set_recv_buffer_size(4 << 20);
                let icmp = raw_icmp(addr.is_ipv6())?;
                icmp.set_read_timeout(Some(POLL))?;
                Ok((tcp, udp, icmp))
            })?;
            let (l, s) = (ledger.clone(), stop.clone());
            threads.push(std::thread::spawn(move || tcp_server(tcp, l, s)));
            let (l, s) = (ledger.clone(), stop.clone());
            threads.push(std::thread::spawn(move || udp_server(udp, l, s)));
            let (l, s) = (ledger.clone(), stop.clone());
            threads.push(std::thread::spawn(move || icmp_watcher(icmp, l, s)));
        }
        Ok(InternetHost {
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
/// bytes and answers their SHA-256 in hex; `LOOP tag` echoes every line that
/// follows until the client closes (a long session's TCP connection).
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
        ["LOOP", tag] => {
            record(ledger, tag, seen);
            out.write_all(format!("{tag}\n").as_bytes())?;
            loop {
                line.clear();
                if reader.read_line(&mut line)? == 0 {
                    break;
                }
                out.write_all(line.as_bytes())?;
            }
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

/// A raw ICMP (or ICMPv6) socket.
fn raw_icmp(v6: bool) -> Result<Socket> {
    let (domain, proto) = if v6 {
        (Domain::IPV6, Protocol::ICMPV6)
    } else {
        (Domain::IPV4, Protocol::ICMPV4)
    };
    Socket::new(domain, Type::RAW, Some(proto)).context("opening a raw ICMP socket")
}

/// The next packet of a raw ICMP socket, parsed: IPv4 raw sockets deliver the
/// IP header, ICMPv6 ones only the message, with the source in the address.
fn recv_icmp(socket: &Socket) -> Option<IcmpPacket> {
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    let (n, from) = socket.recv_from(&mut buf).ok()?;
    // SAFETY: recv_from initialised the first n bytes.
    let bytes: Vec<u8> = buf[..n]
        .iter()
        .map(|b| unsafe { b.assume_init() })
        .collect();
    match from.as_socket() {
        Some(SocketAddr::V6(a)) => parse_icmpv6(&bytes, *a.ip()),
        _ => parse_ipv4_icmp(&bytes),
    }
}

/// Records the source of every ICMP echo request, tagged "icmp-ID-SEQ".
/// The kernel itself answers the echo.
fn icmp_watcher(socket: Socket, ledger: Ledger, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::SeqCst) {
        let Some(p) = recv_icmp(&socket) else {
            continue;
        };
        if p.is_echo_request() {
            record(
                &ledger,
                &echo_tag(p.id, p.seq),
                Seen {
                    source: p.source,
                    source_port: None,
                },
            );
        }
    }
}

pub fn echo_tag(id: u16, seq: u16) -> String {
    format!("icmp-{id}-{seq}")
}

pub const ICMP_ECHO_REPLY: u8 = 0;
pub const ICMP_UNREACHABLE: u8 = 3;
pub const ICMP_ECHO_REQUEST: u8 = 8;

pub const ICMPV6_UNREACHABLE: u8 = 1;
pub const ICMPV6_TOO_BIG: u8 = 2;
pub const ICMPV6_ECHO_REQUEST: u8 = 128;
pub const ICMPV6_ECHO_REPLY: u8 = 129;

/// The parts of an ICMP or ICMPv6 packet the checks look at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IcmpPacket {
    pub source: IpAddr,
    pub icmp_type: u8,
    pub code: u8,
    pub id: u16,
    pub seq: u16,
    /// For errors: the embedded original packet's protocol, source and destination port.
    pub inner_proto: Option<u8>,
    pub inner_src: Option<IpAddr>,
    pub inner_dst: Option<IpAddr>,
    pub inner_sport: Option<u16>,
    pub inner_dport: Option<u16>,
    /// For "fragmentation needed" / "packet too big": the MTU it announces.
    pub mtu: u32,
}

/// Parse an IPv4 packet carrying ICMP, as a raw socket delivers it.
pub fn parse_ipv4_icmp(pkt: &[u8]) -> Option<IcmpPacket> {
    let (ip, _) = LaxIpv4Slice::from_slice(pkt).ok()?;
    if ip.payload_ip_number() != IpNumber::ICMP {
        return None;
    }
    let icmp = Icmpv4Slice::from_slice(ip.payload().payload).ok()?;
    // An error quotes the start of the offending packet, cut short.
    let inner = if icmp.type_u8() == ICMP_UNREACHABLE {
        LaxIpSlice::from_slice(icmp.payload()).ok().map(|(i, _)| i)
    } else {
        None
    };
    let rest = icmp.bytes5to8();
    Some(packet(
        IpAddr::V4(ip.header().source_addr()),
        icmp.type_u8(),
        icmp.code_u8(),
        rest,
        // "Fragmentation needed" carries the next hop's MTU in its last two bytes.
        u32::from(u16::from_be_bytes([rest[2], rest[3]])),
        inner.as_ref(),
    ))
}

/// Parse an ICMPv6 message (as a raw ICMPv6 socket delivers it) from `source`.
pub fn parse_icmpv6(msg: &[u8], source: Ipv6Addr) -> Option<IcmpPacket> {
    let icmp = Icmpv6Slice::from_slice(msg).ok()?;
    // The offending packet, after the 8-byte header (extension headers are
    // skipped to reach the transport header).
    let inner = if matches!(icmp.type_u8(), ICMPV6_UNREACHABLE | ICMPV6_TOO_BIG) {
        msg.get(8..)
            .and_then(|quoted| LaxIpSlice::from_slice(quoted).ok())
            .map(|(i, _)| i)
    } else {
        None
    };
    let rest = icmp.bytes5to8();
    Some(packet(
        IpAddr::V6(source),
        icmp.type_u8(),
        icmp.code_u8(),
        rest,
        // "Packet too big" carries the MTU in all four bytes.
        u32::from_be_bytes(rest),
        inner.as_ref(),
    ))
}

/// The fields the checks read: type, code, the rest of the header (an
/// echo's id and sequence number) and, for an error, the quoted packet's
/// protocol, source and ports.
fn packet(
    source: IpAddr,
    icmp_type: u8,
    code: u8,
    rest: [u8; 4],
    mtu: u32,
    inner: Option<&LaxIpSlice>,
) -> IcmpPacket {
    let echo = IcmpEchoHeader::from_bytes(rest);
    let ports = inner.and_then(|i| i.payload().payload.get(..4)).map(|l4| {
        (
            u16::from_be_bytes([l4[0], l4[1]]),
            u16::from_be_bytes([l4[2], l4[3]]),
        )
    });
    IcmpPacket {
        source,
        icmp_type,
        code,
        id: echo.id,
        seq: echo.seq,
        inner_proto: inner.map(|i| i.payload_ip_number().0),
        inner_src: inner.map(|i| i.source_addr()),
        inner_dst: inner.map(|i| i.destination_addr()),
        inner_sport: ports.map(|p| p.0),
        inner_dport: ports.map(|p| p.1),
        mtu,
    }
}

impl IcmpPacket {
    fn v6(&self) -> bool {
        self.source.is_ipv6()
    }

    pub fn is_echo_request(&self) -> bool {
        self.icmp_type
            == if self.v6() {
                ICMPV6_ECHO_REQUEST
            } else {
                ICMP_ECHO_REQUEST
            }
    }

    pub fn is_echo_reply(&self) -> bool {
        self.icmp_type
            == if self.v6() {
                ICMPV6_ECHO_REPLY
            } else {
                ICMP_ECHO_REPLY
            }
    }

    /// Destination unreachable, any code.
    pub fn is_unreachable(&self) -> bool {
        self.icmp_type
            == if self.v6() {
                ICMPV6_UNREACHABLE
            } else {
                ICMP_UNREACHABLE
            }
    }

    /// "Fragmentation needed" (IPv4) or "packet too big" (IPv6).
    pub fn is_too_big(&self) -> bool {
        if self.v6() {
            self.icmp_type == ICMPV6_TOO_BIG
        } else {
            self.icmp_type == ICMP_UNREACHABLE && self.code == 4
        }
    }

    /// Destination unreachable: port unreachable.
    pub fn is_port_unreachable(&self) -> bool {
        self.is_unreachable() && self.code == if self.v6() { 4 } else { 3 }
    }
}

/// An ICMP echo request packet (without IP header), its checksum filled in.
pub fn echo_request(id: u16, seq: u16, payload: &[u8]) -> Vec<u8> {
    let header =
        Icmpv4Header::with_checksum(Icmpv4Type::EchoRequest(IcmpEchoHeader { id, seq }), payload);
    let mut pkt = header.to_bytes().to_vec();
    pkt.extend_from_slice(payload);
    pkt
}

/// A raw ICMP (or ICMPv6) socket in a namespace: sends echo requests, sees
/// every ICMP packet of its family.
pub struct IcmpSocket(Socket);

impl IcmpSocket {
    pub fn open(ns: &Netns, v6: bool) -> Result<IcmpSocket> {
        ns.run(|| {
            let s = raw_icmp(v6)?;
            s.set_read_timeout(Some(Duration::from_millis(20)))?;
            Ok(IcmpSocket(s))
        })
    }

    /// A raw ICMP socket that sends from `addr` and sees only what comes to it.
    pub fn open_bound(ns: &Netns, addr: IpAddr) -> Result<IcmpSocket> {
        ns.run(|| {
            let s = raw_icmp(addr.is_ipv6())?;
            s.bind(&SocketAddr::new(addr, 0).into())
                .with_context(|| format!("binding a raw ICMP socket to {addr}"))?;
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
        recv_icmp(&self.0)
    }

    pub fn send_echo(&self, dest: IpAddr, id: u16, seq: u16) -> Result<()> {
        let (pkt, to) = match dest {
            IpAddr::V4(d) => (
                echo_request(id, seq, b"natvet-echo-probe"),
                SocketAddr::V4(SocketAddrV4::new(d, 0)),
            ),
            // The kernel fills in an ICMPv6 checksum itself (RFC 3542).
            IpAddr::V6(d) => {
                let mut pkt = echo_request(id, seq, b"natvet-echo-probe");
                pkt[0] = ICMPV6_ECHO_REQUEST;
                pkt[2] = 0;
                pkt[3] = 0;
                (pkt, SocketAddr::V6(std::net::SocketAddrV6::new(d, 0, 0, 0)))
            }
        };
        self.0
            .send_to(&pkt, &to.into())
            .context("sending ICMP echo request")?;
        Ok(())
    }

    /// Wait for the echo reply to (id, seq) until `deadline`.
    pub fn await_echo_reply(&self, id: u16, seq: u16, deadline: Instant) -> Option<IcmpPacket> {
        while Instant::now() < deadline {
            if let Some(p) = self.recv() {
                if p.is_echo_reply() && p.id == id && p.seq == seq {
                    return Some(p);
                }
            }
        }
        None
    }
}

/// One sender's side of an [`echo_exchange`].
pub struct Flow<'a> {
    pub sender: &'a UdpSocket,
    pub dest: SocketAddr,
    pub tag: String,
}

/// What one flow of an [`echo_exchange`] saw.
#[derive(Debug, Default, Clone)]
pub struct Echoed {
    /// Every distinct source the responder saw the tag come from, first
    /// first (more than one means the flow's translation changed mid-way).
    pub sources: Vec<SocketAddr>,
    /// When the tag first reached the responder.
    pub arrived_after: Option<Duration>,
    /// Where the sender's own tag came back from, and when.
    pub reply: Option<(SocketAddr, Duration)>,
    /// The sender received another flow's tag.
    pub crossed: bool,
    /// The responder's kernel refused to send its echo (EPERM: a netfilter
    /// rule dropped it on output): the reply was lost on the relay, which
    /// is the kernel's doing, not natvet's.
    pub echo_refused: Option<String>,
}

impl Echoed {
    pub fn source(&self) -> Option<SocketAddr> {
        self.sources.first().copied()
    }
    pub fn reply_from(&self) -> Option<SocketAddr> {
        self.reply.map(|(from, _)| from)
    }
}

/// Request/echo between sockets the agent holds both ends of: each flow's
/// sender sends its tag to its `dest` every `resend` until its own echo is
/// back; the `responder` echoes every copy it receives to where it came
/// from. A lost datagram in either direction is only a resend away, while
/// a translation fault repeats on every copy and so still shows. Ends when
/// every flow has its reply, at `timeout`, or when `stop` says so (it sees
/// the flows so far; a caller watching something else, like ICMP errors,
/// decides there).
pub fn echo_exchange(
    flows: &[Flow],
    responder: &UdpSocket,
    timeout: Duration,
    resend: Duration,
    mut stop: impl FnMut(&[Echoed], Duration) -> bool,
) -> Result<Vec<Echoed>> {
    responder.set_read_timeout(Some(Duration::from_millis(10)))?;
    for f in flows {
        f.sender.set_nonblocking(true)?;
    }
    let start = Instant::now();
    let mut seen = vec![Echoed::default(); flows.len()];
    let mut last_send: Option<Instant> = None;
    let mut buf = [0u8; 2048];
    while start.elapsed() < timeout && seen.iter().any(|e| e.reply.is_none()) {
        if last_send.is_none_or(|t| t.elapsed() >= resend) {
            for (f, e) in flows.iter().zip(&seen) {
                if e.reply.is_none() {
                    f.sender
                        .send_to(f.tag.as_bytes(), f.dest)
                        .with_context(|| format!("sending to {}", f.dest))?;
                }
            }
            last_send = Some(Instant::now());
        }
        if let Ok((n, from)) = responder.recv_from(&mut buf) {
            if let Some(i) = flows.iter().position(|f| f.tag.as_bytes() == &buf[..n]) {
                let e = &mut seen[i];
                e.arrived_after.get_or_insert(start.elapsed());
                if !e.sources.contains(&from) {
                    e.sources.push(from);
                }
                match responder.send_to(&buf[..n], from) {
                    Ok(_) => {}
                    Err(err) if err.raw_os_error() == Some(libc::EPERM) => {
                        e.echo_refused.get_or_insert_with(|| {
                            format!("the relay's kernel refused to send the reply to {from} ({err}: a netfilter rule dropped it on output)")
                        });
                    }
                    Err(err) => {
                        return Err(err).with_context(|| format!("echoing to {from}"));
                    }
                }
            }
        }
        for (i, f) in flows.iter().enumerate() {
            while let Ok((n, from)) = f.sender.recv_from(&mut buf) {
                match flows.iter().position(|g| g.tag.as_bytes() == &buf[..n]) {
                    Some(j) if j == i => {
                        seen[i].reply.get_or_insert((from, start.elapsed()));
                    }
                    Some(_) => seen[i].crossed = true,
                    None => {}
                }
            }
        }
        if stop(&seen, start.elapsed()) {
            break;
        }
    }
    Ok(seen)
}

/// Bind a UDP port that an earlier check's socket, now closed, held (the
/// relay's listen port, a forwarded port): see [`take_port`]. Called on the
/// namespace's thread: when the port stays taken, the error names the
/// sockets that hold it.
pub fn bind_udp_again(addr: SocketAddr) -> Result<UdpSocket> {
    take_port(|| Ok(UdpSocket::bind(addr)?)).map_err(|e| {
        let holders = port_holders("udp", addr.port());
        e.context(format!("binding udp {addr}{holders}"))
    })
}

/// [`bind_udp_again`] for a TCP listener.
pub fn listen_tcp_again(addr: SocketAddr) -> Result<TcpListener> {
    take_port(|| Ok(TcpListener::bind(addr)?)).map_err(|e| {
        let holders = port_holders("tcp", addr.port());
        e.context(format!("listening on tcp {addr}{holders}"))
    })
}

/// Sockets of this thread's namespace bound to `port` (from
/// /proc/thread-self/net/PROTO and PROTO6), for an error message.
fn port_holders(proto: &str, port: u16) -> String {
    let hex = format!(":{port:04X}");
    let mut found = Vec::new();
    for table in [proto.to_string(), format!("{proto}6")] {
        let text =
            std::fs::read_to_string(format!("/proc/thread-self/net/{table}")).unwrap_or_default();
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if cols.get(1).is_some_and(|local| local.ends_with(&hex)) {
                found.push(format!(
                    "{table} local {} remote {} inode {}",
                    cols[1],
                    cols.get(2).unwrap_or(&"?"),
                    cols.get(9).unwrap_or(&"?")
                ));
            }
        }
    }
    if found.is_empty() {
        String::new()
    } else {
        format!(" (held by: {})", found.join("; "))
    }
}

/// A TCP connection from `addr` to the probe server at `dest`, which then
/// echoes every line until it is closed (`LOOP tag`): a long session's TCP
/// flow. `timeout` bounds the connection and each read.
pub fn tcp_loop(
    ns: &Netns,
    addr: IpAddr,
    dest: SocketAddr,
    tag: &str,
    timeout: Duration,
) -> Result<TcpStream> {
    let mut stream = ns.run(|| {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(dest),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )
        .context("creating the session's TCP socket")?;
        s.bind(&SocketAddr::new(addr, 0).into())
            .with_context(|| format!("binding the session's TCP socket to {addr}"))?;
        s.connect_timeout(&dest.into(), timeout)
            .with_context(|| format!("connecting to {dest} through the session's tunnel"))?;
        Ok(TcpStream::from(s))
    })?;
    stream.set_read_timeout(Some(timeout))?;
    stream.write_all(format!("LOOP {tag}\n").as_bytes())?;
    let mut greeting = vec![0u8; tag.len() + 1];
    stream
        .read_exact(&mut greeting)
        .context("reading the probe server's greeting")?;
    Ok(stream)
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
    let any: SocketAddr = if dest.is_ipv6() {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    };
    let socket = ns.run(|| UdpSocket::bind(any).context("binding UDP client socket"))?;
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

    /// The Internet checksum (RFC 1071) of `data`, computed here the long
    /// way to check the crate's.
    fn checksum(data: &[u8]) -> u16 {
        let mut sum: u32 = 0;
        for chunk in data.chunks(2) {
            let hi = u32::from(chunk[0]) << 8;
            sum += hi | chunk.get(1).copied().map(u32::from).unwrap_or(0);
        }
        while sum >> 16 != 0 {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        !(sum as u16)
    }

    #[test]
    fn echo_request_checksum_verifies() {
        let pkt = echo_request(0x1234, 7, b"abc");
        assert_eq!(checksum(&pkt), 0);
        assert_eq!(&pkt[..8], &[8, 0, pkt[2], pkt[3], 0x12, 0x34, 0, 7]);
        assert_eq!(&pkt[8..], b"abc");
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
        assert_eq!(p.source, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
        assert_eq!(p.inner_proto, Some(17));
        assert_eq!(p.inner_dport, Some(33434));
        assert_eq!(p.inner_sport, Some(40000));
        assert_eq!(p.inner_src, Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2))));
        assert!(p.is_port_unreachable());
    }

    #[test]
    fn parses_icmpv6_port_unreachable() {
        let mut msg = vec![1, 4, 0, 0, 0, 0, 0, 0];
        let mut ip6 = vec![0x60, 0, 0, 0, 0, 8, 17, 64];
        ip6.extend_from_slice(&"fd99::2".parse::<Ipv6Addr>().unwrap().octets());
        ip6.extend_from_slice(&"2001:db8:2::2".parse::<Ipv6Addr>().unwrap().octets());
        msg.extend_from_slice(&ip6);
        msg.extend_from_slice(&[0x9c, 0x40, 0, 9, 0, 8, 0, 0]);
        let p = parse_icmpv6(&msg, "2001:db8:2::2".parse().unwrap()).unwrap();
        assert!(p.is_port_unreachable());
        assert_eq!(p.inner_proto, Some(17));
        assert_eq!(p.inner_src, Some("fd99::2".parse().unwrap()));
        assert_eq!(p.inner_sport, Some(40000));
        assert_eq!(p.inner_dport, Some(9));
    }

    #[test]
    fn truncated_packets_are_ignored() {
        assert_eq!(parse_ipv4_icmp(&[]), None);
        assert_eq!(parse_ipv4_icmp(&[0x45; 21]), None);
    }
}
