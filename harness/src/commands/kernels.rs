//! `natvet kernels`: list the kernel sets and the cache, fetch kernels, or
//! build one from Debian's source package.

use std::path::PathBuf;

use clap::Subcommand;

use super::error::{usage, Result};
use super::options::parse_specs;
use crate::kernel::{Cache, KernelSpec};
use crate::report::exit;
use crate::ui::Ui;
use crate::vet;

#[derive(Subcommand, Debug)]
pub enum KernelsCmd {
    /// Show what each kernel set's entries resolve to today, and what is cached.
    List {
        /// Also list every generic kernel release each repository offers
        /// (Debian's archive and security archive, vm-images/matrix.toml's
        /// [[repository]] entries, --repository).
        #[arg(long)]
        all: bool,
        /// With --all: only these sources' releases (debian, ubuntu, a
        /// --repository's name).
        #[arg(value_name = "SOURCE", requires = "all")]
        sources: Vec<String>,
    },
    /// Fetch kernels into the cache (specs, or the name of a set in vm-images/matrix.toml).
    Fetch {
        #[arg(required = true)]
        specs: Vec<String>,
        #[arg(long, value_name = "DIR")]
        modules: Option<PathBuf>,
    },
    /// Build a kernel from Debian's source package with a config fragment (and
    /// patches); the last line printed is the build:PATH spec to vet it with.
    ///
    /// Exit codes: 0 built (or already built), 2 bad input (unknown source
    /// package, missing fragment/patch, a patch that does not apply, fragment
    /// settings the kernel did not take), 3 download or build failure.
    Build {
        /// Source package: debian:linux-source-X.Y (e.g. debian:linux-source-6.12).
        #[arg(long, value_name = "debian:linux-source-X.Y")]
        source: String,
        /// Kconfig fragment merged on top of tinyconfig (e.g. vm-images/minimal-nat.config).
        #[arg(long, value_name = "FRAGMENT")]
        config: PathBuf,
        /// Patch applied with `patch -p1` before building. Repeatable, applied in order.
        #[arg(long = "patch", value_name = "FILE")]
        patches: Vec<PathBuf>,
        /// Parallel compile jobs (make -jN, 1-256). Default: the number of cores.
        #[arg(long, short = 'j', value_parser = |s: &str| BUILD_JOBS.parse_arg(s).map(|n| n as usize))]
        jobs: Option<usize>,
    },
}

/// `make -jN` of `kernels build`.
pub(super) const BUILD_JOBS: crate::bounds::Limit = crate::bounds::Limit::new(
    "--jobs",
    1,
    256,
    "each job is a compiler of up to a few hundred MiB of the host's memory, and more jobs than the host's cores only take turns",
);

pub fn exec(cmd: KernelsCmd) -> Result<i32> {
    match cmd {
        KernelsCmd::List { all, sources } => kernels_list(all, &sources),
        KernelsCmd::Build {
            source,
            config,
            patches,
            jobs,
        } => kernels_build(source, config, patches, jobs),
        KernelsCmd::Fetch { specs, modules } => kernels_fetch(specs, modules),
    }
}

fn kernels_build(
    source: String,
    fragment: PathBuf,
    patches: Vec<PathBuf>,
    jobs: Option<usize>,
) -> Result<i32> {
    use crate::kernel::build::{self, BuildRequest};
    let req = BuildRequest {
        source,
        fragment,
        patches,
        jobs: jobs.unwrap_or_else(crate::host::cores),
    };
    let cache = Cache::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let progress = |line: &str| eprintln!("natvet: {line}");
    let t0 = std::time::Instant::now();
    match build::build(&req, &cache, &progress) {
        Ok(dir) => {
            eprintln!(
                "natvet: done in {:.0} s; vet it with: natvet vet --kernel build:{}",
                t0.elapsed().as_secs_f64(),
                dir.display()
            );
            println!("build:{}", dir.display());
            Ok(exit::PASS)
        }
        Err(e) if e.is_user_error() => Err(usage(e.to_string())),
        Err(e) => Err(anyhow::anyhow!("{e}").into()),
    }
}

fn kernels_list(all: bool, sources: &[String]) -> Result<i32> {
    let cache = Cache::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let quiet = |_: &str| {};
    let known = crate::kernel::sources::catalogue_names();
    if let Some(s) = sources.iter().find(|s| !known.contains(&s.as_str())) {
        return Err(usage(format!(
            "no kernel source named '{s}' offers a list; sources: {}",
            known.join(", ")
        )));
    }
    let mut code = exit::PASS;
    for set in crate::kernel_sets::kernel_set_names()?
        .into_iter()
        .filter(|_| sources.is_empty())
    {
        println!("set {set}:");
        for entry in crate::kernel_sets::kernel_set(&set)? {
            let spec = KernelSpec::parse(&entry, None).map_err(|e| usage(e.to_string()))?;
            match crate::kernel::lookup(&spec, &cache, &quiet) {
                Ok((release, cached)) => println!(
                    "  {entry:<24} -> {:<28} {}",
                    release.as_deref().unwrap_or("(not in the archive)"),
                    if cached { "cached" } else { "not cached" }
                ),
                // One entry that cannot be answered does not hide the others.
                Err(e) => {
                    println!("  {entry:<24} -> (cannot tell: see below)");
                    eprintln!("natvet: {entry}: {e}");
                    code = exit::INFRA;
                }
            }
        }
    }
    if all {
        // A repository that cannot be read is said, and the others listed.
        for (name, c) in crate::kernel::catalogues(&cache, sources, &quiet) {
            match c {
                Ok(c) => print!("{c}"),
                Err(e) => {
                    println!("{name}: cannot list its kernels: {e}");
                    eprintln!("natvet: {name}: {e}");
                    code = if e.is_user_error() && code != exit::INFRA {
                        exit::USAGE
                    } else {
                        exit::INFRA
                    };
                }
            }
        }
    }
    println!("cache: {}", cache.root().display());
    Ok(code)
}

fn kernels_fetch(specs: Vec<String>, modules: Option<PathBuf>) -> Result<i32> {
    let cache = Cache::from_env().map_err(|e| anyhow::anyhow!("{e}"))?;
    let ui = Ui::new(false);
    // A set's name stands for its kernels.
    let sets = crate::kernel_sets::kernel_set_names()?;
    let mut expanded = Vec::new();
    for s in specs {
        if sets.contains(&s) {
            expanded.extend(crate::kernel_sets::kernel_set(&s)?);
        } else {
            expanded.push(s);
        }
    }
    let specs = parse_specs(&expanded, modules)?;
    for (spec, r) in vet::resolve_all(&specs, &cache, &ui).map_err(|e| usage(e.to_string()))? {
        match r {
            Ok((k, ms)) => println!(
                "{spec}: release {} boot {:?} image {} modules {} ({ms} ms)",
                k.release.as_deref().unwrap_or("?"),
                k.boot_kind,
                k.boot_image.display(),
                k.modules_dir
                    .as_ref()
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|| "none".into())
            ),
            Err(e) => {
                eprintln!("{spec}: {e}");
                return Ok(exit::INFRA);
            }
        }
    }
    Ok(exit::PASS)
}
