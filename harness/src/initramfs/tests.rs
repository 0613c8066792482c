use super::*;
use std::io::Read;
use std::process::{Command, Stdio};

fn agent() -> PathBuf {
    std::env::current_exe().unwrap()
}

fn have(cmd: &str) -> bool {
    Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {cmd}"))
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

fn list(archive: &Path) -> Vec<String> {
    let out = Command::new("sh")
        .arg("-c")
        .arg("cpio -it --quiet < \"$1\"")
        .arg("sh")
        .arg(archive)
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

fn unpack(archive: &Path, root: &Path) {
    fs::create_dir_all(root).unwrap();
    let st = Command::new("sh")
        .arg("-c")
        .arg("cpio -idm --quiet --no-absolute-filenames < \"$1\"")
        .arg("sh")
        .arg(archive)
        .current_dir(root)
        .status()
        .unwrap();
    assert!(st.success());
}

/// The files of a newc archive: (name, contents).
fn newc_files(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let field = |at: usize| {
        usize::from_str_radix(std::str::from_utf8(&archive[at..at + 8]).unwrap(), 16).unwrap()
    };
    let pad = |n: usize| (n + 3) & !3;
    let (mut at, mut out) = (0, Vec::new());
    while at + 110 <= archive.len() && &archive[at..at + 6] == b"070701" {
        let (size, name_len) = (field(at + 54), field(at + 94));
        let name =
            String::from_utf8_lossy(&archive[at + 110..at + 110 + name_len - 1]).into_owned();
        let data = pad(at + 110 + name_len);
        if name == "TRAILER!!!" {
            break;
        }
        out.push((name, archive[data..data + size].to_vec()));
        at = pad(data + size);
    }
    out
}

#[test]
fn every_initramfs_carries_the_guest_marker() {
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("i.cpio");
    let spec = InitramfsSpec {
        agent: &agent(),
        files: vec![],
        modules: None,
        host_binaries: vec![],
        host_dirs: vec![],
    };
    build(&spec, &out).unwrap();
    let files = newc_files(&fs::read(&out).unwrap());
    let (_, marker) = files
        .iter()
        .find(|(n, _)| n == GUEST_MARKER)
        .unwrap_or_else(|| {
            panic!(
                "no {GUEST_MARKER} in {:?}",
                files.iter().map(|f| &f.0).collect::<Vec<_>>()
            )
        });
    assert_eq!(marker, GUEST_MARKER_CONTENTS);
    // What main() asks before it acts as the guest's PID 1.
    let root = d.path().join("root");
    assert!(!is_own_guest(&root));
    fs::create_dir_all(root.join("natvet")).unwrap();
    fs::write(root.join(GUEST_MARKER), b"something else").unwrap();
    assert!(!is_own_guest(&root), "only natvet's own contents count");
    fs::write(root.join(GUEST_MARKER), marker).unwrap();
    assert!(is_own_guest(&root));
    assert!(
        !is_own_guest(Path::new("/")),
        "the host is not natvet's guest"
    );
}

#[test]
fn rejects_dynamic_agent() {
    if !Path::new("/bin/sh").exists() {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let spec = InitramfsSpec {
        agent: Path::new("/bin/sh"),
        files: vec![],
        modules: None,
        host_binaries: vec![],
        host_dirs: vec![],
    };
    assert!(matches!(
        build(&spec, &d.path().join("i.cpio")),
        Err(InitramfsError::AgentNotStatic(_))
    ));
}

#[test]
fn host_tools_run_in_chroot() {
    if !have("cpio") {
        eprintln!("note: cpio missing, skipping");
        return;
    }
    let tools = [
        "/usr/sbin/nft",
        "/usr/sbin/iptables-legacy",
        "/usr/sbin/iptables-nft",
        "/usr/sbin/conntrack",
    ];
    let xt = PathBuf::from("/usr/lib/x86_64-linux-gnu/xtables");
    if tools.iter().any(|t| !Path::new(t).exists()) || !xt.is_dir() {
        eprintln!("note: nftables/iptables/conntrack not installed, skipping");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let out = d.path().join("initramfs.cpio");
    let spec = InitramfsSpec {
        agent: &agent(),
        files: vec![("natvet/job.json".into(), b"{}".to_vec())],
        modules: None,
        host_binaries: tools.iter().map(PathBuf::from).collect(),
        host_dirs: vec![xt],
    };
    let stats = build(&spec, &out).unwrap();
    eprintln!(
        "host tools initramfs: {} bytes, {} files, {:?}",
        stats.bytes, stats.files, stats.elapsed
    );
    assert_eq!(fs::metadata(&out).unwrap().len(), stats.bytes);
    let names = list(&out);
    for n in [
        "init",
        "sbin/modprobe",
        "dev/console",
        "dev/null",
        "proc",
        "tmp",
        "natvet/job.json",
        GUEST_MARKER,
        "usr/sbin/nft",
        "usr/sbin/xtables-legacy-multi",
        "usr/lib/x86_64-linux-gnu/xtables/libxt_MASQUERADE.so",
        "lib64",
    ] {
        assert!(names.iter().any(|x| x == n), "{n} missing from {names:?}");
    }
    let root = d.path().join("root");
    assert!(!is_own_guest(&root), "no marker before it is unpacked");
    unpack(&out, &root);
    // The agent acts as PID 1 only where the initramfs put its marker.
    assert!(is_own_guest(&root));
    assert!(
        !is_own_guest(Path::new("/")),
        "the host is not natvet's guest"
    );
    assert_eq!(
        fs::read_link(root.join("usr/sbin/iptables-legacy")).unwrap(),
        Path::new("xtables-legacy-multi")
    );
    assert_eq!(
        fs::read_link(root.join("sbin/modprobe")).unwrap(),
        Path::new("/init")
    );
    if !is_root() || !have("chroot") {
        eprintln!("note: not root, skipping the chroot runs");
        return;
    }
    for args in [
        &["/usr/sbin/nft", "--version"][..],
        &["/usr/sbin/iptables-legacy", "--version"],
        &["/usr/sbin/iptables-nft", "--version"],
        &["/usr/sbin/conntrack", "--version"],
    ] {
        let o = Command::new("chroot")
            .arg(&root)
            .args(args)
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{args:?}: {}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    // The xtables extensions load (dlopen) inside the chroot: parse a
    // rule with a match and a target without touching the kernel.
    let o = Command::new("chroot")
        .arg(&root)
        .args([
            "/usr/sbin/iptables-legacy",
            "-t",
            "nat",
            "-A",
            "POSTROUTING",
            "-p",
            "udp",
            "-m",
            "multiport",
            "--dports",
            "53,4000:4010",
            "-j",
            "MASQUERADE",
            "--help",
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(text.contains("MASQUERADE target options"), "{text}");
    assert!(text.contains("multiport match options"), "{text}");
}

fn xz(data: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    xz2::read::XzEncoder::new(data, 6)
        .read_to_end(&mut v)
        .unwrap();
    v
}

#[test]
fn synthetic_modules() {
    if !have("cpio") {
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let m = d.path().join("mods");
    fs::create_dir_all(m.join("kernel/net/netfilter")).unwrap();
    fs::create_dir_all(m.join("kernel/lib")).unwrap();
    fs::create_dir_all(m.join("kernel/drivers/x")).unwrap();
    fs::create_dir_all(m.join("kernel/crypto")).unwrap();
    for (p, body) in [
        ("kernel/net/netfilter/nf_nat.ko.xz", "NAT"),
        ("kernel/net/netfilter/nf_conntrack.ko.xz", "CT"),
        ("kernel/lib/libcrc32c.ko.xz", "CRC"),
        ("kernel/crypto/crc32c_generic.ko.xz", "CRCG"),
        ("kernel/drivers/x/unused.ko.xz", "U"),
        ("kernel/drivers/x/veth.ko.xz", "VETH"),
    ] {
        fs::write(m.join(p), xz(body.as_bytes())).unwrap();
    }
    fs::write(
        m.join("modules.dep"),
        "kernel/net/netfilter/nf_nat.ko.xz: kernel/net/netfilter/nf_conntrack.ko.xz kernel/lib/libcrc32c.ko.xz\n\
         kernel/net/netfilter/nf_conntrack.ko.xz: kernel/lib/libcrc32c.ko.xz\n\
         kernel/lib/libcrc32c.ko.xz:\n\
         kernel/crypto/crc32c_generic.ko.xz:\n\
         kernel/drivers/x/unused.ko.xz:\n\
         kernel/drivers/x/veth.ko.xz:\n",
    )
    .unwrap();
    fs::write(
        m.join("modules.alias"),
        "# header\nalias nf-nat nf_nat\nalias crc32c crc32c_generic\nalias pci:v*d* unused\nalias rtnl-link-veth veth\n",
    )
    .unwrap();
    fs::write(
        m.join("modules.softdep"),
        "softdep libcrc32c pre: crc32c\nsoftdep unused pre: veth\n",
    )
    .unwrap();
    fs::write(m.join("modules.builtin"), "kernel/net/ipv4/udp_tunnel.ko\n").unwrap();
    fs::write(
        m.join("modules.order"),
        "kernel/lib/libcrc32c.ko.xz\nkernel/drivers/x/unused.ko.xz\nkernel/net/netfilter/nf_nat.ko.xz\n",
    )
    .unwrap();
    let out = d.path().join("i.cpio");
    let mut spec = InitramfsSpec {
        agent: &agent(),
        files: vec![],
        modules: Some(ModulesSpec {
            dir: m.clone(),
            release: "9.9.9-test".into(),
            wanted: vec!["rtnl-link-veth".into(), "udp_tunnel".into()],
            include_dirs: vec!["kernel/net/netfilter".into()],
        }),
        host_binaries: vec![],
        host_dirs: vec![],
    };
    let stats = build(&spec, &out).unwrap();
    assert_eq!(stats.modules, 5);
    let root = d.path().join("root");
    unpack(&out, &root);
    let g = root.join("lib/modules/9.9.9-test");
    assert_eq!(
        fs::read(g.join("kernel/net/netfilter/nf_nat.ko")).unwrap(),
        b"NAT"
    );
    assert!(!g.join("kernel/drivers/x/unused.ko").exists());
    let dep = fs::read_to_string(g.join("modules.dep")).unwrap();
    assert!(dep.contains("kernel/net/netfilter/nf_nat.ko: kernel/net/netfilter/nf_conntrack.ko kernel/lib/libcrc32c.ko\n"), "{dep}");
    assert!(!dep.contains(".xz"));
    let alias = fs::read_to_string(g.join("modules.alias")).unwrap();
    assert_eq!(
        alias,
        "# header\nalias nf-nat nf_nat\nalias crc32c crc32c_generic\nalias rtnl-link-veth veth\n"
    );
    assert_eq!(
        fs::read_to_string(g.join("modules.softdep")).unwrap(),
        "softdep libcrc32c pre: crc32c\n"
    );
    assert_eq!(
        fs::read_to_string(g.join("modules.order")).unwrap(),
        "kernel/lib/libcrc32c.ko\nkernel/net/netfilter/nf_nat.ko\n"
    );
    // The guest-side index works on the rewritten tree.
    let idx = ModuleIndex::load(&g).unwrap();
    assert_eq!(
        idx.load_order(&["nf-nat"]).unwrap(),
        [
            "kernel/crypto/crc32c_generic.ko",
            "kernel/lib/libcrc32c.ko",
            "kernel/net/netfilter/nf_conntrack.ko",
            "kernel/net/netfilter/nf_nat.ko"
        ]
    );
    assert_eq!(idx.resolve("udp-tunnel"), modules::Resolved::Builtin);

    // Unknown wanted module: clear error naming it.
    if let Some(ms) = spec.modules.as_mut() {
        ms.wanted = vec!["wireguard".into(), "veth".into()];
    }
    let err = build(&spec, &out).unwrap_err().to_string();
    assert!(err.contains("wireguard") && !err.contains("veth"), "{err}");
}

/// A real module tree: $NATVET_TEST_MODULES_DIR, /lib/modules/*, or the
/// natvet kernel cache.
fn real_module_trees() -> Vec<PathBuf> {
    if let Some(d) = std::env::var_os("NATVET_TEST_MODULES_DIR") {
        return std::env::split_paths(&d).collect();
    }
    let mut v = Vec::new();
    let mut roots = vec![PathBuf::from("/lib/modules")];
    if let Some(home) = std::env::var_os("HOME") {
        let cache = Path::new(&home).join(".cache/natvet/kernels");
        if let Ok(rd) = fs::read_dir(cache) {
            for e in rd.filter_map(Result::ok) {
                roots.push(e.path().join("root/lib/modules"));
                roots.push(e.path().join("root/usr/lib/modules"));
            }
        }
    }
    for r in roots {
        if let Ok(rd) = fs::read_dir(&r) {
            for e in rd.filter_map(Result::ok) {
                if e.path().join("modules.dep").exists() {
                    v.push(e.path());
                }
            }
        }
    }
    v.sort();
    v
}

#[test]
fn real_module_tree_sizes() {
    let trees = real_module_trees();
    if trees.is_empty() {
        eprintln!("note: no real module tree (set NATVET_TEST_MODULES_DIR), skipping");
        return;
    }
    let d = tempfile::tempdir().unwrap();
    for dir in trees {
        let release = dir
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let idx = ModuleIndex::load(&dir).unwrap();
        for a in [
            "nft-chain-2-nat",
            "nf-nat",
            "fs-9p",
            "rtnl-link-veth",
            "wireguard",
        ] {
            assert_ne!(idx.resolve(a), modules::Resolved::Unknown, "{release}: {a}");
        }
        let wanted: Vec<String> = [
            "wireguard",
            "veth",
            "nf_tables",
            "nft_chain_nat",
            "nft_masq",
            "nft_redir",
            "nf_conntrack",
            "nft_ct",
            "iptable_nat",
            "xt_MASQUERADE",
            "xt_REDIRECT",
            "xt_multiport",
            "nfnetlink_queue",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        for include in [false, true] {
            let include_dirs = if include {
                [
                    "kernel/net/netfilter",
                    "kernel/net/ipv4/netfilter",
                    "kernel/net/ipv6/netfilter",
                    "kernel/drivers/net/wireguard",
                ]
                .iter()
                .map(|s| s.to_string())
                .collect()
            } else {
                vec![]
            };
            let out = d.path().join("i.cpio");
            let spec = InitramfsSpec {
                agent: &agent(),
                files: vec![],
                modules: Some(ModulesSpec {
                    dir: dir.clone(),
                    release: release.clone(),
                    wanted: wanted.clone(),
                    include_dirs,
                }),
                host_binaries: vec![],
                host_dirs: vec![],
            };
            let s = build(&spec, &out).unwrap();
            let agent_len = fs::metadata(agent()).map(|m| m.len()).unwrap_or(0);
            eprintln!(
                "{release}: netfilter dirs={include}: {} modules, {} files, {:.2} MiB without the agent ({:.1} MiB with this {:.1} MiB test binary as agent), built in {:?}",
                s.modules,
                s.files,
                s.bytes.saturating_sub(agent_len) as f64 / 1048576.0,
                s.bytes as f64 / 1048576.0,
                agent_len as f64 / 1048576.0,
                s.elapsed,
            );
            assert!(s.modules >= 10);
            if include && have("cpio") {
                // The unpacked tree is self-consistent: every module in
                // the closure of the on-demand aliases is a plain ELF.
                let root = d.path().join(format!("root-{release}"));
                unpack(&out, &root);
                let g = root.join("lib/modules").join(&release);
                let gi = ModuleIndex::load(&g).unwrap();
                assert_eq!(gi.len(), s.modules);
                let order = gi
                    .load_order(&["nft-chain-2-nat", "nf-nat", "wireguard", "veth"])
                    .unwrap();
                assert!(order.iter().any(|p| p.ends_with("/nf_nat.ko")));
                for rel in &order {
                    let b = fs::read(g.join(rel)).unwrap();
                    assert!(b.starts_with(b"\x7fELF"), "{rel}");
                }
                eprintln!("{release}: guest load order for nat+wireguard+veth: {order:?}");
            }
        }
    }
}
