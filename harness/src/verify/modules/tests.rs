use super::*;

fn scenario(name: &str) -> Scenario {
    Scenario::load(name).unwrap()
}

fn modules_of(needs: &[Need]) -> Vec<&str> {
    needs.iter().map(|n| n.module.as_str()).collect()
}

/// The module closure of one backend on extended-ports (both families,
/// a firewall): what Debian's 6.1 kernel loaded on demand in a VM for
/// exactly this run, besides veth, wireguard and nf_conntrack with its
/// dependencies (preloaded there).
#[test]
fn each_backend_maps_to_the_modules_a_real_kernel_loads() {
    let cases: [(BackendKind, &[&str]); 3] = [
        (
            BackendKind::Nftables,
            &[
                "nf_tables",
                "nfnetlink",
                "nft_chain_nat",
                "nf_nat",
                "nft_masq",
                "nft_redir",
                "nft_ct",
                "nf_conntrack_netlink",
            ],
        ),
        (
            BackendKind::IptablesNft,
            &[
                "nf_tables",
                "nfnetlink",
                "nft_chain_nat",
                "nf_nat",
                "nft_compat",
                "x_tables",
                "xt_MASQUERADE",
                "xt_REDIRECT",
                "xt_multiport",
                "xt_conntrack",
                "ip6_tables",
                "nf_conntrack_netlink",
            ],
        ),
        (
            BackendKind::IptablesLegacy,
            &[
                "x_tables",
                "ip_tables",
                "ip6_tables",
                "iptable_nat",
                "ip6table_nat",
                "iptable_filter",
                "ip6table_filter",
                "nf_nat",
                "xt_MASQUERADE",
                "xt_REDIRECT",
                "xt_multiport",
                "xt_conntrack",
                "nf_conntrack_netlink",
                "nfnetlink",
            ],
        ),
    ];
    for (kind, want) in cases {
        let mut s = scenario("extended-ports");
        s.backends = vec![kind];
        let needs = needs(&[s], CaptureMode::Never);
        let got = modules_of(&needs);
        for m in want {
            assert!(got.contains(m), "{kind}: {m} missing from {got:?}");
        }
        let foreign: &[&str] = match kind {
            BackendKind::IptablesLegacy => &["nf_tables", "nft_compat", "nft_chain_nat"],
            BackendKind::Nftables => &["x_tables", "ip_tables", "nft_compat"],
            BackendKind::IptablesNft => &["ip_tables", "iptable_nat", "nft_masq"],
        };
        for m in foreign {
            assert!(!got.contains(m), "{kind} does not use {m}: {got:?}");
        }
        for m in ["veth", "wireguard", "ipv6", "nf_conntrack"] {
            assert!(got.contains(&m), "{kind}: {m} missing from {got:?}");
        }
        assert!(!got.contains(&"af_packet"), "captures are off");
    }
}

#[test]
fn constructs_map_to_their_modules() {
    let mut n = Needs::default();
    nft_needs(
        &mut n,
        "table ip6 t {\n\tchain c {\n\t\ttype nat hook prerouting priority dstnat;\n\t\tiifname \"counter\" tcp dport 80 dnat to [fd99::2]:8080 # masquerade\n\t}\n}\n",
        "test",
    );
    let got = modules_of(&n.0);
    assert!(got.contains(&"nft_nat") && got.contains(&"nft_chain_nat"));
    // Quoted names and comments are not constructs.
    assert!(
        !got.contains(&"nft_counter") && !got.contains(&"nft_masq"),
        "{got:?}"
    );
    let chain = n.0.iter().find(|x| x.module == "nft_chain_nat").unwrap();
    assert_eq!(chain.requests[0], "nft-chain-10-nat");
    let nat = n.0.iter().find(|x| x.module == "nft_nat").unwrap();
    assert_eq!(nat.requests[..2], ["nft-expr-10-nat", "nft-expr-nat"]);

    let mut n = Needs::default();
    nft_needs(
        &mut n,
        "table inet f { flowtable ft { hook ingress priority 0; devices = { a, b }; }\nchain c { type filter hook forward priority 0; ct state established flow add @ft; reject } }",
        "test",
    );
    let got = modules_of(&n.0);
    for m in [
        "nf_flow_table_inet",
        "nf_flow_table",
        "nft_flow_offload",
        "nft_ct",
        "nft_reject_inet",
    ] {
        assert!(got.contains(&m), "{m} missing from {got:?}");
    }
    assert!(
        !got.contains(&"nft_chain_nat"),
        "a filter chain is built in: {got:?}"
    );

    let mut n = Needs::default();
    xtables_needs(
        &mut n,
        BackendKind::IptablesLegacy,
        Family::Ipv4,
        "*nat\n:MINE - [0:0]\n-A PREROUTING -j MINE\n-A MINE -p udp --dport 53 -j DNAT --to-destination 10.0.0.1\nCOMMIT\n",
        "test",
    );
    let got = modules_of(&n.0);
    assert_eq!(
        got,
        [
            "x_tables",
            "ip_tables",
            "iptable_nat",
            "nf_nat",
            "nf_conntrack",
            "xt_tcpudp",
            "xt_nat"
        ],
        "a jump to a chain of the script's own needs nothing"
    );
    let dnat = n.0.iter().find(|x| x.module == "xt_nat").unwrap();
    assert_eq!(dnat.requests[0], "ipt_DNAT");
}

#[test]
fn captures_a_flowtable_and_namespace_sysctls_add_what_they_use() {
    let mut s = scenario("flowtable");
    s.backends = vec![BackendKind::Nftables];
    let got = needs(&[s], CaptureMode::Failures);
    let m = modules_of(&got);
    assert!(
        m.contains(&"nft_flow_offload") && m.contains(&"af_packet"),
        "{m:?}"
    );
    let behind = needs(&[scenario("behind-nat")], CaptureMode::Never);
    let ct = behind.iter().find(|x| x.module == "nf_conntrack").unwrap();
    assert!(ct.used_by.contains("conntrack sysctls"), "{ct:?}");
    assert!(needs(&[], CaptureMode::Always).is_empty());
}

/// A fake root: /proc/modules (unless `loaded` is None), /sys/module
/// entries, and a module index for release "6.1.0-test" (`dep` of
/// kernel/net/netfilter, modules.builtin `builtin`).
fn fake_root(loaded: Option<&str>, sysfs: &[&str], dep: &str, builtin: &str) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let p = root.path();
    std::fs::create_dir_all(p.join("proc")).unwrap();
    if let Some(l) = loaded {
        std::fs::write(p.join("proc/modules"), l).unwrap();
    }
    for m in sysfs {
        std::fs::create_dir_all(p.join("sys/module").join(m)).unwrap();
    }
    let dir = p.join("lib/modules/6.1.0-test");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("modules.dep"),
        dep.replace("K/", "kernel/net/netfilter/"),
    )
    .unwrap();
    std::fs::write(
        dir.join("modules.alias"),
        "alias nft-expr-masq nft_masq\nalias nfnetlink-subsys-10 nf_tables\nalias net-pf-16-proto-12 nfnetlink\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("modules.builtin"),
        builtin.replace("K/", "kernel/net/netfilter/"),
    )
    .unwrap();
    root
}

/// A 6.1-like index: nft_masq needs nf_nat, conntrack and nf_tables.
const DEP: &str = "K/nf_tables.ko: K/nfnetlink.ko\nK/nfnetlink.ko:\nK/nft_masq.ko: K/nf_nat.ko K/nf_conntrack.ko K/nf_tables.ko K/nfnetlink.ko\nK/nf_nat.ko: K/nf_conntrack.ko\nK/nf_conntrack.ko:\n";

fn masq_needs() -> Vec<Need> {
    let mut n = Needs::default();
    nft_needs(
        &mut n,
        "table ip t {\n\tchain c {\n\t\tmasquerade\n\t}\n}\n",
        "nftables masquerade",
    );
    n.0.push(Need {
        module: "nft_counter".into(),
        requests: vec!["nft-expr-counter".into(), "nft_counter".into()],
        used_by: "counters".into(),
    });
    n.0
}

#[test]
fn without_module_support_nothing_can_load() {
    let root = fake_root(None, &["nf_conntrack"], DEP, "");
    let host = HostModules::read(root.path(), "6.1.0-test");
    match decide(&masq_needs(), &host) {
        Verdict::CannotLoad(why) => assert!(why.contains("no /proc/modules"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn modules_not_loaded_are_listed_with_their_dependencies_and_why() {
    // nf_conntrack is loaded; the rest would be loaded on demand.
    let root = fake_root(
        Some("nf_conntrack 200000 0 - Live 0x0\n"),
        &["nf_conntrack"],
        DEP,
        "",
    );
    let host = HostModules::read(root.path(), "6.1.0-test");
    let Verdict::WouldLoad {
        load,
        elsewhere,
        unsure,
    } = decide(&masq_needs(), &host)
    else {
        panic!("expected modules to load");
    };
    let names: Vec<&str> = load.iter().map(|l| l.module.as_str()).collect();
    assert_eq!(names, ["nfnetlink", "nf_tables", "nf_nat", "nft_masq"]);
    let nat = load.iter().find(|l| l.module == "nf_nat").unwrap();
    assert_eq!(nat.used_by, "needed by nft_masq");
    // No module of this kernel is nft_counter: nothing to load for it.
    assert_eq!(elsewhere, ["nft_counter"]);
    assert_eq!(unsure, None);
    assert!(
        Verdict::listing(&load).contains("nft_masq (nftables masquerade"),
        "{}",
        Verdict::listing(&load)
    );
    assert_eq!(Verdict::names(&load), "nfnetlink nf_tables nf_nat nft_masq");
}

#[test]
fn loaded_and_built_in_modules_need_nothing() {
    let loaded = "nfnetlink 20480 1 nf_tables, Live 0x0\nnf_tables 300000 0 - Live 0x0\nnf_conntrack 1 0 - Live 0x0\n";
    // nf_nat built in with parameters (in /sys/module only), nft_masq and
    // nft_counter built in without (modules.builtin only).
    let root = fake_root(
        Some(loaded),
        &["nf_nat", "nf_tables", "nfnetlink", "nf_conntrack"],
        "K/nf_tables.ko: K/nfnetlink.ko\nK/nfnetlink.ko:\n",
        "K/nft_masq.ko\nK/nft_counter.ko\nK/nf_nat.ko\n",
    );
    let host = HostModules::read(root.path(), "6.1.0-test");
    assert_eq!(
        decide(&masq_needs(), &host),
        Verdict::Present { elsewhere: vec![] }
    );
}

#[test]
fn modules_disabled_or_no_index_are_said() {
    let root = fake_root(Some(""), &[], DEP, "");
    std::fs::create_dir_all(root.path().join("proc/sys/kernel")).unwrap();
    std::fs::write(root.path().join("proc/sys/kernel/modules_disabled"), "1\n").unwrap();
    let host = HostModules::read(root.path(), "6.1.0-test");
    assert!(
        matches!(decide(&masq_needs(), &host), Verdict::CannotLoad(w) if w.contains("modules_disabled"))
    );
    // Another release: no index, so whatever is not seen loaded counts.
    let root = fake_root(Some("nf_tables 1 0 - Live 0x0\n"), &["nf_tables"], DEP, "");
    let host = HostModules::read(root.path(), "6.2.0-other");
    let Verdict::WouldLoad { load, unsure, .. } = decide(&masq_needs(), &host) else {
        panic!("expected modules to load");
    };
    assert!(!load.iter().any(|l| l.module == "nf_tables"));
    assert!(load.iter().any(|l| l.module == "nft_counter"));
    assert!(unsure.unwrap().contains("no module index"));
}
