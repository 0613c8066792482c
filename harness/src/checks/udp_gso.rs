//! Behaviour 14: UDP GSO bursts from the client cross tunnel and masquerade
//! segment by segment, intact.

use std::collections::BTreeSet;
use std::net::UdpSocket;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use super::check::{Check, Info, Phase};
use super::common::{at, ensure_tunnel, EXCHANGE_TIMEOUT};
use super::context::Context;
use super::verdict::Verdict;
use crate::bounds::{Invalid, Limit};
use crate::scenario::setup::Setup;

/// UDP GSO: the client hands the kernel `bursts` buffers of `segments`
/// datagrams of `segment` bytes each (one send per buffer, UDP_SEGMENT);
/// every datagram crosses tunnel and masquerade and arrives at the
/// internet host intact, from the relay's address.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UdpGso {
    #[serde(default = "default_segment")]
    pub segment: u32,
    #[serde(default = "default_segments")]
    pub segments: u32,
    #[serde(default = "default_bursts")]
    pub bursts: u32,
}

fn default_segment() -> u32 {
    1200
}
fn default_segments() -> u32 {
    40
}
fn default_bursts() -> u32 {
    4
}

/// One datagram of a GSO send.
const SEGMENT: Limit = Limit::new(
    "segment",
    64,
    1372,
    "a segment carries the check's 8-byte header and must cross the 1420-byte tunnel as one datagram (1372 bytes of payload with IPv6 and UDP headers)",
)
.unit(" bytes");
/// Datagrams per send.
const SEGMENTS: Limit = Limit::new(
    "segments",
    1,
    64,
    "the kernel takes at most 64 segments in one UDP_SEGMENT send (UDP_MAX_SEGMENTS)",
);
/// Bytes per send.
const SEND: Limit = Limit::new(
    "segments",
    64,
    65_000,
    "one send is one UDP datagram to the kernel, which holds at most 65507 bytes of payload",
)
.on("segment x segments")
.unit(" bytes");
/// Sends.
const BURSTS: Limit = Limit::new(
    "bursts",
    1,
    100,
    "every datagram of every burst is kept at the receiver until it is judged (up to 100 x 65000 bytes, 6.2 MiB of the guest), and all must arrive within the check's 10 s",
);

impl Check for UdpGso {
    const INFO: Info = Info {
        results: "udp-gso/BURSTSxSEGMENTS",
        behaviours: "14",
        description: "UDP GSO sends from the client (UDP_SEGMENT): every segment crosses tunnel and masquerade and arrives intact at the internet host, from the relay's address",
        timeout: EXCHANGE_TIMEOUT,
        needs_wireguard: false,
        phase: Phase::AfterTunnel,
        per_family: true,
        example: "",
        limits: &[SEGMENT, SEGMENTS, SEND, BURSTS],
        capture_first: true,
    };
    type Case = ();

    fn cases(&self) -> Vec<(String, ())> {
        vec![(format!("udp-gso/{}x{}", self.bursts, self.segments), ())]
    }

    fn validate(&self, _: &Setup) -> Result<(), Invalid> {
        let UdpGso {
            segment,
            segments,
            bursts,
        } = *self;
        SEGMENT.check(segment)?;
        SEGMENTS.check(segments)?;
        // Both at most their limits above: no overflow.
        let send = u64::from(segment) * u64::from(segments);
        SEND.check_derived(send, format!("{segment} x {segments} = {send}"))?;
        BURSTS.check(bursts)?;
        Ok(())
    }

    fn run(&self, ctx: &mut Context, _: &()) -> Result<Verdict> {
        udp_gso(
            ctx,
            self.segment as usize,
            self.segments as usize,
            self.bursts,
        )
    }
}

/// The UDP port the GSO check's receiver listens on in the internet namespace.
const GSO_PORT: u16 = 8082;

/// The payload of datagram `seq` of burst `burst`: its numbers, then bytes
/// that depend on both, so a corrupted, truncated or misplaced datagram shows.
fn gso_payload(burst: u32, seq: u32, len: usize) -> Vec<u8> {
    let mut p = Vec::with_capacity(len);
    p.extend_from_slice(&burst.to_be_bytes());
    p.extend_from_slice(&seq.to_be_bytes());
    let mut x = burst.wrapping_mul(2_654_435_761) ^ seq.wrapping_mul(40_503);
    while p.len() < len {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        p.push((x >> 16) as u8);
    }
    p
}

/// Behaviour 14: UDP GSO bursts from the client through tunnel and masquerade.
fn udp_gso(ctx: &mut Context, segment: usize, segments: usize, bursts: u32) -> Result<Verdict> {
    use std::os::fd::AsRawFd;
    let a = *ctx.a();
    let dest = at(a.internet, GSO_PORT);
    let expected = format!(
        "{bursts} GSO sends of {segments} x {segment}-byte UDP segments from the client: all {} datagrams reach {dest} intact, from {}",
        bursts as usize * segments,
        a.relay_wan
    );
    if let Err(why) = ensure_tunnel(ctx)? {
        return Ok(Verdict::judge(false, expected, why));
    }
    let receiver = ctx.topo.internet.run(|| {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(dest),
            socket2::Type::DGRAM,
            Some(socket2::Protocol::UDP),
        )
        .context("creating the receiver")?;
        s.set_recv_buffer_size(4 << 20)
            .context("sizing the receiver's buffer")?;
        s.bind(&dest.into())
            .with_context(|| format!("binding {dest} in the internet namespace"))?;
        Ok(UdpSocket::from(s))
    })?;
    let sender = ctx.client_tunnel_socket()?;
    let gso = segment as i32;
    // SAFETY: setsockopt on a socket we own, with an int option of the right size.
    let rc = unsafe {
        libc::setsockopt(
            sender.as_raw_fd(),
            libc::SOL_UDP,
            libc::UDP_SEGMENT,
            &gso as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as u32,
        )
    };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ENOPROTOOPT) {
            return Ok(Verdict::unsupported(
                expected,
                format!("the kernel has no UDP GSO (UDP_SEGMENT: {e})"),
            ));
        }
        return Err(e).context("enabling UDP_SEGMENT on the client's socket");
    }
    receiver.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = vec![0u8; 65536];
    let mut intact = 0usize;
    let mut damaged = 0usize;
    let mut wrong_source = 0usize;
    let mut sources = BTreeSet::new();
    let mut missing_in = Vec::new();
    let started = Instant::now();
    for burst in 0..bursts {
        let mut wanted: BTreeSet<u32> = (0..segments as u32).collect();
        let mut big = Vec::with_capacity(segment * segments);
        for seq in 0..segments as u32 {
            big.extend(gso_payload(burst, seq, segment));
        }
        // One send: the kernel cuts it into `segments` datagrams.
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut sends = 0;
        while !wanted.is_empty() && Instant::now() < deadline {
            // The first burst may wait for the tunnel; resend once a second.
            if sends == 0 || (burst == 0 && sends < 3 && intact == 0) {
                sender.send_to(&big, dest).context("sending a GSO buffer")?;
                sends += 1;
            }
            let wait_until = Instant::now() + Duration::from_secs(1);
            while !wanted.is_empty() && Instant::now() < wait_until {
                let Ok((n, from)) = receiver.recv_from(&mut buf) else {
                    continue;
                };
                sources.insert(from.ip());
                if from.ip() != a.relay_wan {
                    wrong_source += 1;
                }
                if n < 8 {
                    damaged += 1;
                    continue;
                }
                let b = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
                let seq = u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]);
                if b == burst && seq < segments as u32 {
                    if buf[..n] == gso_payload(b, seq, segment)[..] {
                        if wanted.remove(&seq) {
                            intact += 1;
                        }
                    } else {
                        damaged += 1;
                    }
                }
            }
        }
        if !wanted.is_empty() {
            missing_in.push(format!("burst {burst}: {} missing", wanted.len()));
        }
    }
    let total = bursts as usize * segments;
    let sources: Vec<String> = sources.iter().map(|s| s.to_string()).collect();
    let observed = format!(
        "{intact} of {total} datagrams arrived intact in {} ms{}{}; from {}{}",
        started.elapsed().as_millis(),
        if damaged > 0 {
            format!(", {damaged} damaged")
        } else {
            String::new()
        },
        if missing_in.is_empty() {
            String::new()
        } else {
            format!(" ({})", missing_in.join(", "))
        },
        if sources.is_empty() {
            "nowhere".to_string()
        } else {
            sources.join(", ")
        },
        if wrong_source > 0 {
            format!(" ({wrong_source} not from {})", a.relay_wan)
        } else {
            String::new()
        }
    );
    Ok(Verdict::judge(
        intact == total && damaged == 0 && wrong_source == 0,
        expected,
        observed,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::checks::tests::scenario_with;

    #[test]
    fn payloads_differ_by_burst_and_position() {
        let a = gso_payload(0, 1, 1200);
        assert_eq!(a.len(), 1200);
        assert_eq!(a, gso_payload(0, 1, 1200));
        assert_ne!(a, gso_payload(1, 1, 1200));
        assert_ne!(a, gso_payload(0, 2, 1200));
    }

    #[test]
    fn sends_fit_the_kernel_and_the_tunnel() {
        let s = scenario_with("kind = \"udp-gso\"").unwrap();
        assert_eq!(s.checks[0].result_names(), ["udp-gso/4x40"]);
        for bad in [
            "segments = 65",
            "segment = 1373",
            "segment = 1372\nsegments = 64",
            "bursts = 0",
        ] {
            let e = scenario_with(&format!("kind = \"udp-gso\"\n{bad}")).unwrap_err();
            assert!(e.contains("udp-gso"), "{bad}: {e}");
        }
    }
}
