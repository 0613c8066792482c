//! Networked checks against the real Debian archive (ignored by default):
//!
//! ```sh
//! NATVET_LIVE_SPECS="debian:6.1 debian:6.12" NATVET_CACHE=/tmp/natvet-cache \
//!     cargo test --release --lib kernel::live_tests -- --ignored --nocapture
//! ```

use std::fs;
use std::path::{Path, PathBuf};
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
        BootKind::Running => panic!("a resolved kernel is never the running one"),
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

fn hardlink_tree(src: &Path, dst: &Path) {
    fs::create_dir_all(dst).unwrap();
    for e in fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        let name = e.file_name().into_string().unwrap();
        if e.file_type().unwrap().is_dir() {
            hardlink_tree(&e.path(), &to);
        } else if !name.starts_with("modules.")
            || matches!(
                name.as_str(),
                "modules.order" | "modules.builtin" | "modules.builtin.modinfo"
            )
        {
            fs::hard_link(e.path(), to).unwrap();
        }
    }
}

/// Local images, using a Debian kernel already in the cache:
/// `NATVET_LIVE_KERNEL_DIR=$NATVET_CACHE/kernels/6.1.0-50-amd64`.
#[test]
#[ignore = "needs a resolved Debian kernel in the cache"]
fn resolve_local_live() {
    let kdir = PathBuf::from(std::env::var("NATVET_LIVE_KERNEL_DIR").unwrap());
    let release = kdir.file_name().unwrap().to_str().unwrap().to_string();
    let cache = Cache::from_env().unwrap();
    // A user's module folder without modules.dep (a root holding lib/modules/REL).
    let user = tempfile::tempdir_in(cache.root()).unwrap();
    let user_mods = user.path().join("lib/modules").join(&release);
    hardlink_tree(&kdir.join("root/lib/modules").join(&release), &user_mods);
    assert!(!user_mods.join("modules.dep").exists());

    for (image, modules) in [
        (kdir.join("vmlinuz"), user.path().to_path_buf()),
        (kdir.join("vmlinux"), user_mods.clone()),
    ] {
        let spec = KernelSpec::parse(&image.display().to_string(), Some(modules)).unwrap();
        for round in 0..2 {
            let t = Instant::now();
            let k = resolve(&spec, &cache, &|m| eprintln!("  [{}] {m}", image.display())).unwrap();
            eprintln!(
                "{} round {round}: {:.2} s\n{k:#?}",
                image.display(),
                t.elapsed().as_secs_f64()
            );
            check(&k);
            assert_eq!(k.release.as_deref(), Some(release.as_str()));
            assert_eq!(k.boot_kind, BootKind::Pvh);
            let dep =
                fs::read_to_string(k.modules_dir.as_ref().unwrap().join("modules.dep")).unwrap();
            assert!(dep.contains("wireguard"), "modules.dep lists wireguard");
            assert!(
                !user_mods.join("modules.dep").exists(),
                "user folder untouched"
            );
        }
    }
    // Monolithic: no modules at all.
    let k = resolve(
        &KernelSpec::parse(&kdir.join("vmlinuz").display().to_string(), None).unwrap(),
        &cache,
        &|_| {},
    )
    .unwrap();
    assert!(k.modules_dir.is_none());
}
