//! Conntrack entries as `conntrack -L` prints them, parsed into tuples, and
//! the statistics of `conntrack -S`.

use std::net::IpAddr;

/// One direction of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tuple {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
}

/// One conntrack entry: the original direction and the expected reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub protocol: String,
    pub original: Tuple,
    pub reply: Tuple,
    pub line: String,
}

/// Seconds an entry of `conntrack -L` has left before it expires (the third
/// word: `udp 17 29 src=...`, `tcp 6 117 ESTABLISHED src=...`).
pub fn remaining(line: &str) -> Option<u32> {
    line.split_whitespace().nth(2)?.parse().ok()
}

/// Parse the text of `conntrack -L`; lines that are not entries are skipped.
pub fn parse(text: &str) -> Vec<Entry> {
    text.lines().filter_map(parse_line).collect()
}

fn parse_line(line: &str) -> Option<Entry> {
    let mut words = line.split_whitespace();
    let protocol = words.next()?.to_string();
    let mut tuples: Vec<Tuple> = Vec::new();
    let mut current: (Option<IpAddr>, Option<IpAddr>, Option<u16>, Option<u16>) =
        (None, None, None, None);
    let flush = |c: &mut (Option<IpAddr>, Option<IpAddr>, Option<u16>, Option<u16>),
                 tuples: &mut Vec<Tuple>| {
        if let (Some(src), Some(dst)) = (c.0, c.1) {
            tuples.push(Tuple {
                src,
                dst,
                sport: c.2,
                dport: c.3,
            });
        }
        *c = (None, None, None, None);
    };
    for word in words {
        let Some((key, value)) = word.split_once('=') else {
            continue;
        };
        match key {
            "src" => {
                if current.0.is_some() {
                    flush(&mut current, &mut tuples);
                }
                current.0 = value.parse().ok();
            }
            "dst" => current.1 = value.parse().ok(),
            "sport" => current.2 = value.parse().ok(),
            "dport" => current.3 = value.parse().ok(),
            _ => {}
        }
    }
    flush(&mut current, &mut tuples);
    let mut tuples = tuples.into_iter();
    Some(Entry {
        protocol,
        original: tuples.next()?,
        reply: tuples.next()?,
        line: line.trim().to_string(),
    })
}

/// Statistics counters that mean conntrack lost packets or entries: a new
/// entry that could not be inserted (an unresolved clash), a packet dropped
/// because no entry could be made, an entry evicted to make room. Every
/// kernel natvet supports has these three.
pub const TROUBLE_COUNTERS: [&str; 3] = ["insert_failed", "drop", "early_drop"];

/// `conntrack -S` summed over CPUs: counter name -> total. Which counters
/// exist depends on the kernel (clash_resolve and chaintoolong are newer).
pub fn parse_stats(text: &str) -> std::collections::BTreeMap<String, u64> {
    let mut totals = std::collections::BTreeMap::new();
    for field in text.split_whitespace() {
        let Some((name, value)) = field.split_once('=') else {
            continue;
        };
        if name == "cpu" {
            continue;
        }
        if let Ok(v) = value.parse::<u64>() {
            *totals.entry(name.to_string()).or_insert(0) += v;
        }
    }
    totals
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_seconds_an_entry_has_left() {
        let udp = "udp      17 0 src=10.99.0.2 dst=198.51.100.2 sport=59320 dport=8081 src=198.51.100.2 dst=198.51.100.1 sport=8081 dport=59320 mark=0 use=1";
        let tcp = "tcp      6 117 ESTABLISHED src=10.99.0.2 dst=198.51.100.2 sport=1 dport=2 src=198.51.100.2 dst=198.51.100.1 sport=2 dport=1 [ASSURED] mark=0 use=1";
        assert_eq!(remaining(udp), Some(0));
        assert_eq!(remaining(tcp), Some(117));
        assert_eq!(
            remaining("conntrack v1.4.7 (conntrack-tools): 3 flow entries"),
            None
        );
    }

    #[test]
    fn sums_statistics_over_cpus() {
        let text = "cpu=0   \tfound=0 invalid=3 insert=0 insert_failed=1 drop=0 early_drop=0 error=2 search_restart=0 clash_resolve=4 chaintoolong=0 \n\
                    cpu=1   \tfound=1 invalid=0 insert=0 insert_failed=2 drop=5 early_drop=0 error=0 search_restart=0 clash_resolve=0 chaintoolong=0 \n";
        let s = parse_stats(text);
        assert_eq!(s["insert_failed"], 3);
        assert_eq!(s["drop"], 5);
        assert_eq!(s["invalid"], 3);
        assert_eq!(s["clash_resolve"], 4);
        assert!(!s.contains_key("cpu"));
        assert!(parse_stats("conntrack v1.4.7: no stats").is_empty());
    }

    #[test]
    fn parses_a_redirected_udp_flow() {
        let text = "udp      17 28 src=192.0.2.2 dst=192.0.2.1 sport=40001 dport=4000 src=192.0.2.1 dst=192.0.2.2 sport=51820 dport=40001 [ASSURED] mark=0 use=1\n\
                    conntrack v1.4.7 (conntrack-tools): 1 flow entries have been shown.\n\
                    icmp     1 29 src=10.99.0.2 dst=198.51.100.2 type=8 code=0 id=7 src=198.51.100.2 dst=198.51.100.1 type=0 code=0 id=7 mark=0 use=1\n";
        let entries = parse(text);
        assert_eq!(entries.len(), 2);
        let e = &entries[0];
        assert_eq!(e.protocol, "udp");
        assert_eq!(e.original.dport, Some(4000));
        assert_eq!(e.reply.sport, Some(51820));
        assert_eq!(e.reply.dst.to_string(), "192.0.2.2");
        assert_eq!(entries[1].reply.dst.to_string(), "198.51.100.1");
        assert_eq!(entries[1].reply.sport, None);
    }

    #[test]
    fn garbage_yields_nothing() {
        assert!(parse("src=1.2.3.4\n\n===\nudp src=x dst=y").is_empty());
    }
}
