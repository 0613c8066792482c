use super::*;

fn both() -> Vec<Family> {
    vec![Family::Ipv4, Family::Ipv6]
}

#[test]
fn the_default_topology_is_valid() {
    let t = TopologySpec::default();
    t.validate(&both(), "public", "wan").unwrap();
    let a = t.addrs(Family::Ipv4, "public", "wan").unwrap();
    assert_eq!(a.relay_public.to_string(), "192.0.2.1");
    assert_eq!(a.client_seen, a.client_public);
    assert_eq!(a.tunnel_net.to_string(), "10.99.0.0/24");
    let a = t.addrs(Family::Ipv6, "public", "wan").unwrap();
    assert_eq!(a.internet.to_string(), "2001:db8:2::2");
}

fn broken(edit: impl Fn(&mut TopologySpec)) -> String {
    let mut t = TopologySpec::default();
    edit(&mut t);
    t.validate(&both(), "public", "wan")
        .unwrap_err()
        .to_string()
}

#[test]
fn each_mistake_gets_its_own_message() {
    let e = broken(|t| t.links[0].b.at.ns = "hom".into());
    assert!(e.contains("namespace 'hom', which is not defined"), "{e}");
    let e = broken(|t| t.wireguard[0].peers[0].peer.iface = "wg1".into());
    assert!(e.contains("names peer client:wg1, which no"), "{e}");
    let e = broken(|t| t.wireguard[1].peers.clear());
    assert!(e.contains("exactly one peer, relay:wg0"), "{e}");
    let e = broken(|t| t.links[1].b.addresses[0] = "192.0.2.2/24".parse().unwrap());
    assert!(e.contains("not in one subnet"), "{e}");
    let e = broken(|t| {
        t.links[1].a.addresses[0] = "192.0.2.9/24".parse().unwrap();
        t.links[1].b.addresses[0] = "192.0.2.10/24".parse().unwrap();
    });
    assert!(e.contains("overlapping subnets"), "{e}");
    let e = broken(|t| t.wireguard[1].addresses[0] = "10.99.0.1/24".parse().unwrap());
    assert!(
        e.contains("address 10.99.0.1 of client:wg0 is already relay:wg0's"),
        "{e}"
    );
    let e = broken(|t| t.namespaces.retain(|n| n.name != "internet"));
    assert!(e.contains("no namespace 'internet'"), "{e}");
    let e = broken(|t| t.routes[0].dev = Some("wg9".into()));
    assert!(e.contains("dev wg9 is not an interface of client"), "{e}");
    let e = broken(|t| t.routes[0].via = Some("10.1.1.1".parse().unwrap()));
    assert!(e.contains("gateway 10.1.1.1 is in no subnet"), "{e}");
    let e = broken(|t| t.links[1].b.addresses.truncate(1));
    assert!(e.contains("has no ipv6 address"), "{e}");
    let e = broken(|t| {
        t.namespaces[0]
            .sysctls
            .insert("kernel.panic".into(), SysctlValue("1".into()));
    });
    assert!(e.contains("only net.* sysctls"), "{e}");
}

#[test]
fn networks() {
    let n: IpNet = "192.0.2.7/24".parse().unwrap();
    assert_eq!(n.network().to_string(), "192.0.2.0/24");
    assert!(n.contains("192.0.2.200".parse().unwrap()));
    assert!(!n.contains("192.0.3.1".parse().unwrap()));
    let v6: IpNet = "2001:db8:1::9/64".parse().unwrap();
    assert!(v6.contains("2001:db8:1::1".parse().unwrap()));
    assert!(!v6.overlaps(&n));
    assert!("10.0.0.0/33".parse::<IpNet>().is_err());
    assert_eq!("10.0.0.1".parse::<IpNet>().unwrap().prefix, 32);
}
