//! Networked checks against the real Debian archive (ignored by default):
//!
//! ```sh
//! NATVET_LIVE_SPECS="debian:6.1 debian:6.12" NATVET_CACHE=/tmp/natvet-cache \
//!     cargo test --release --lib kernel::live_tests -- --ignored --nocapture
//! ```

use std::time::Instant;

use super::*;

fn check(k: &Kernel) {
    let img = fs::read(&k.boot_image).expect("boot image readable");
    match k.boot_kind {
        BootKind::Pvh => {
            assert!(vmlinux::is_elf(&img), "PVH boot image is an ELF");
            assert!(vmlinux::has_pvh_note(&img), "PVH note present");
        }
        BootKind::BzImage => assert!(vmlinux::is_bzimage(&img)),
    }
    if let Some(m) = &k.modules_dir {
        assert!(m.join("modules.dep").is_file(), "modules.dep in {m:?}");
        assert!(m.join("modules.alias").is_file());
    }
}

#[test]
#[ignore = "downloads kernels from the Debian archive"]
fn resolve_live() {
    let specs = std::env::var("NATVET_LIVE_SPECS").unwrap_or_else(|_| "debian:6.12".into());
    let cache = Cache::from_env().unwrap();
    for s in specs.split_whitespace() {
        let spec = KernelSpec::parse(s, None).unwrap();
        let t = Instant::now();
        let k = resolve(&spec, &cache, &|m| eprintln!("  [{s}] {m}")).unwrap();
        let first = t.elapsed();
        check(&k);
        eprintln!("{s}: resolved in {:.2} s\n{k:#?}", first.as_secs_f64());
        // Again, by exact release: must be instant and offline.
        let exact = KernelSpec::parse(
            &format!(
                "debian:{}",
                k.package
                    .as_ref()
                    .unwrap()
                    .name
                    .trim_start_matches("linux-image-")
                    .trim_end_matches("-unsigned")
            ),
            None,
        )
        .unwrap();
        std::env::set_var("NATVET_DEBIAN_MIRROR", "http://127.0.0.1:9/unreachable");
        let t = Instant::now();
        let again = resolve(&exact, &cache, &|m| panic!("second resolve printed {m}")).unwrap();
        std::env::remove_var("NATVET_DEBIAN_MIRROR");
        eprintln!(
            "{exact}: second resolve in {:.3} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
        assert_eq!(again.boot_image, k.boot_image);
    }
    let t = Instant::now();
    let e = resolve(
        &KernelSpec::parse("debian:9.9.9", None).unwrap(),
        &cache,
        &|m| eprintln!("  {m}"),
    )
    .unwrap_err();
    eprintln!("debian:9.9.9 ({:.2} s): {e}", t.elapsed().as_secs_f64());
    assert!(e.is_user_error());
}
