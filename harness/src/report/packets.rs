//! A capture's packets as lines a person reads next to the failure, in the
//! spirit of `tcpdump -r`: time, direction, addresses, protocol. The pcap
//! is read with pcap-file and each packet sliced with etherparse (laxly:
//! captures keep only the first bytes of each packet).

use std::fmt::Write;

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};

/// The first `max` packets of a pcap (LINKTYPE_LINUX_SLL, as natvet writes
/// them), one line each, and how many packets the file holds in all.
pub fn summarize(pcap: &[u8], max: usize) -> (Vec<String>, usize) {
    let Ok(mut reader) = pcap_file::pcap::PcapReader::new(pcap) else {
        return (vec!["(not a pcap file)".into()], 0);
    };
    let mut lines = Vec::new();
    let mut count = 0;
    let mut first_ts: Option<f64> = None;
    // Raw records: the parsed ones refuse packets longer than the snap
    // length, which is every cut-short packet.
    while let Some(Ok(p)) = reader.next_raw_packet() {
        count += 1;
        if lines.len() >= max {
            continue;
        }
        let ts = f64::from(p.ts_sec) + f64::from(p.ts_frac) / 1e6;
        let t0 = *first_ts.get_or_insert(ts);
        lines.push(format!(
            "{:8.3}  {}",
            ts - t0,
            describe_sll(&p.data, p.orig_len.saturating_sub(16))
        ));
    }
    (lines, count)
}

/// One packet behind its 16-byte Linux "cooked" header.
fn describe_sll(data: &[u8], len: u32) -> String {
    if data.len() < 16 {
        return "(truncated)".into();
    }
    let dir = match u16::from_be_bytes([data[0], data[1]]) {
        4 => "out",
        0 => "in ",
        1 | 2 => "bc ",
        _ => "   ",
    };
    format!("{dir} {}", describe_ip(&data[16..], len))
}

/// "udp 10.99.0.2:40002 > 198.51.100.2:8081 len 20", "icmp ... echo request".
pub fn describe_ip(ip: &[u8], len: u32) -> String {
    let Ok(p) = LaxSlicedPacket::from_ip(ip) else {
        return format!("not IP, {len} bytes");
    };
    let (src, dst) = match &p.net {
        Some(LaxNetSlice::Ipv4(v4)) => (
            v4.header().source_addr().to_string(),
            v4.header().destination_addr().to_string(),
        ),
        Some(LaxNetSlice::Ipv6(v6)) => (
            v6.header().source_addr().to_string(),
            v6.header().destination_addr().to_string(),
        ),
        _ => return format!("not IP, {len} bytes"),
    };
    let at = |a: &str, port: u16| {
        if a.contains(':') {
            format!("[{a}]:{port}")
        } else {
            format!("{a}:{port}")
        }
    };
    let mut out = String::new();
    match &p.transport {
        Some(TransportSlice::Udp(u)) => {
            let _ = write!(
                out,
                "udp  {} > {} len {}",
                at(&src, u.source_port()),
                at(&dst, u.destination_port()),
                u.length().saturating_sub(8)
            );
        }
        Some(TransportSlice::Tcp(t)) => {
            let flags: String = [
                (t.syn(), 'S'),
                (t.fin(), 'F'),
                (t.rst(), 'R'),
                (t.psh(), 'P'),
                (t.ack(), '.'),
            ]
            .iter()
            .filter(|(on, _)| *on)
            .map(|(_, c)| *c)
            .collect();
            let _ = write!(
                out,
                "tcp  {} > {} [{flags}]",
                at(&src, t.source_port()),
                at(&dst, t.destination_port())
            );
        }
        Some(TransportSlice::Icmpv4(i)) => {
            let _ = write!(
                out,
                "icmp {src} > {dst} {}",
                icmp_name(false, i.type_u8(), i.code_u8())
            );
        }
        Some(TransportSlice::Icmpv6(i)) => {
            let _ = write!(
                out,
                "icmp6 {src} > {dst} {}",
                icmp_name(true, i.type_u8(), i.code_u8())
            );
        }
        _ => {
            let _ = write!(
                out,
                "ip   {src} > {dst} protocol {}",
                p.net
                    .as_ref()
                    .map(|n| match n {
                        LaxNetSlice::Ipv4(v4) => v4.payload_ip_number().0,
                        LaxNetSlice::Ipv6(v6) => v6.payload().ip_number.0,
                        LaxNetSlice::Arp(_) => 0,
                    })
                    .unwrap_or(0)
            );
        }
    }
    out
}

fn icmp_name(v6: bool, ty: u8, code: u8) -> String {
    match (v6, ty, code) {
        (false, 0, _) | (true, 129, _) => "echo reply".into(),
        (false, 8, _) | (true, 128, _) => "echo request".into(),
        (false, 3, 3) | (true, 1, 4) => "port unreachable".into(),
        (false, 3, 4) => "fragmentation needed".into(),
        (true, 2, _) => "packet too big".into(),
        (false, 3, c) | (true, 1, c) => format!("unreachable code {c}"),
        (false, 11, _) | (true, 3, _) => "time exceeded".into(),
        (true, 133..=137, _) => "neighbour discovery".into(),
        (true, 130..=132, _) | (true, 143, _) => "multicast listener message".into(),
        (_, t, c) => format!("type {t} code {c}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describes_udp_and_icmp() {
        let mut udp = vec![
            0x45, 0, 0, 33, 0, 0, 0, 0, 64, 17, 0, 0, 10, 99, 0, 2, 198, 51, 100, 2,
        ];
        udp.extend_from_slice(&[
            0x9c, 0x42, 0x1f, 0x91, 0, 13, 0, 0, b'h', b'e', b'l', b'l', b'o',
        ]);
        assert_eq!(
            describe_ip(&udp, 33),
            "udp  10.99.0.2:40002 > 198.51.100.2:8081 len 5"
        );
        let mut icmp = vec![
            0x45, 0, 0, 28, 0, 0, 0, 0, 64, 1, 0, 0, 192, 0, 2, 1, 192, 0, 2, 2,
        ];
        icmp.extend_from_slice(&[3, 3, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            describe_ip(&icmp, 28),
            "icmp 192.0.2.1 > 192.0.2.2 port unreachable"
        );
        assert_eq!(describe_ip(&[1, 2, 3], 3), "not IP, 3 bytes");
    }
}
