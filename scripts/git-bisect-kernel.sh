#!/bin/sh
# git-bisect-kernel.sh: one step of `git bisect run` in a Linux kernel git tree.
#
# Builds the checked-out commit, then vets it with natvet and answers in the
# exit codes git bisect run expects: 0 good, 1 bad, 125 cannot test (skip:
# the build failed, the kernel did not boot, natvet could not run a check),
# 128 stop (natvet's own options are wrong, which no commit fixes).
#
# Usage, from the top of a kernel git tree:
#
#   git bisect start BAD_COMMIT GOOD_COMMIT
#   git bisect run /path/to/natvet/scripts/git-bisect-kernel.sh \
#       [--config FRAGMENT] [--output DIR] [--jobs N] [--] [natvet vet options...]
#   git bisect reset
#
# e.g. only the redirected-port handshakes decide, nftables only:
#
#   git bisect run ~/natvet/scripts/git-bisect-kernel.sh \
#       --config ~/natvet/vm-images/minimal-nat.config -- \
#       --scenario extended-ports --backend nftables --check handshake/
#
# Options (before `--`; everything after it, or the first unknown option,
# goes to `natvet vet`):
#   --config FRAGMENT  Kconfig fragment merged onto the configuration with
#                      scripts/kconfig/merge_config.sh (e.g. natvet's
#                      vm-images/minimal-nat.config). Without a .config in the
#                      build folder the base is `make tinyconfig` when a
#                      fragment is given, else `make defconfig`. Settings
#                      of the fragment that did not stick after
#                      olddefconfig are listed on stderr (a warning).
#   --output DIR       build in DIR (make O=DIR) instead of in the tree.
#   --jobs N           make -jN (default: the number of cores).
#
# Environment: NATVET is the natvet binary (default: `natvet` on PATH);
# NATVET_OUT the evidence folder (default: natvet-bisect-out/COMMIT under
# the build folder's parent, so each commit keeps its own evidence).
# The build runs under `nice -n 19`; its log is in BUILD/natvet-build.log.
# Every make runs with ARCH=x86_64, as `natvet kernels build` does: natvet
# boots x86_64 guests, and without it kbuild takes ARCH=x86, whose
# tinyconfig is a 32-bit configuration that the fragment's CONFIG_64BIT=y
# then flips, leaving 64-bit-only options at their defaults (5-level
# paging, VMAP_STACK, CET, ...) instead of off.
set -u

SKIP=125
STOP=128

fragment=""
output=""
jobs="$(nproc 2>/dev/null || echo 1)"
while [ $# -gt 0 ]; do
    case "$1" in
        --config) fragment="${2:?--config needs a file}"; shift 2 ;;
        --output) output="${2:?--output needs a folder}"; shift 2 ;;
        --jobs) jobs="${2:?--jobs needs a number}"; shift 2 ;;
        --) shift; break ;;
        *) break ;;
    esac
done

natvet="${NATVET:-natvet}"
if ! command -v "$natvet" >/dev/null 2>&1; then
    echo "git-bisect-kernel: natvet not found ($natvet): put it on PATH or set NATVET=/path/to/natvet" >&2
    exit $STOP
fi
if [ ! -f Makefile ] || [ ! -f scripts/kconfig/merge_config.sh ]; then
    echo "git-bisect-kernel: $(pwd) is not the top of a Linux kernel tree: run git bisect from there" >&2
    exit $STOP
fi
if [ -n "$fragment" ]; then
    case "$fragment" in /*) ;; *) fragment="$(pwd)/$fragment" ;; esac
    if [ ! -f "$fragment" ]; then
        echo "git-bisect-kernel: config fragment $fragment not found" >&2
        exit $STOP
    fi
fi

if [ -n "$output" ]; then
    mkdir -p "$output" || exit $STOP
    build="$(cd "$output" && pwd)"
    make_o="O=$build"
else
    build="$(pwd)"
    make_o=""
fi
log="$build/natvet-build.log"
commit="$(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
echo "git-bisect-kernel: building $commit in $build (log: $log)" >&2

kmake() {
    # $make_o is empty or one word (O=DIR); leave it unquoted so empty means nothing.
    # shellcheck disable=SC2086
    nice -n 19 make ARCH=x86_64 $make_o "$@" >>"$log" 2>&1
}

: >"$log"
if [ ! -f "$build/.config" ]; then
    if [ -n "$fragment" ]; then base=tinyconfig; else base=defconfig; fi
    kmake "$base" || { echo "git-bisect-kernel: make $base failed (see $log): skip" >&2; exit $SKIP; }
fi
if [ -n "$fragment" ]; then
    # merge_config.sh -m: merge only; olddefconfig below resolves dependencies.
    scripts/kconfig/merge_config.sh -m -O "$build" "$build/.config" "$fragment" >>"$log" 2>&1 ||
        { echo "git-bisect-kernel: merging $fragment failed (see $log): skip" >&2; exit $SKIP; }
fi
kmake olddefconfig || { echo "git-bisect-kernel: make olddefconfig failed (see $log): skip" >&2; exit $SKIP; }

if [ -n "$fragment" ]; then
    # The fragment's settings that olddefconfig did not keep (a dependency
    # unmet, or a symbol this commit does not have). Warn and go on: natvet
    # reports what the kernel lacks (a missing feature makes checks
    # unsupported, and git bisect skips the commit).
    unmet=""
    while IFS= read -r line; do
        case "$line" in
            CONFIG_*=*)
                grep -qxF "$line" "$build/.config" || unmet="$unmet $line" ;;
            "# CONFIG_"*" is not set")
                sym="${line#\# }"; sym="${sym%% *}"
                if grep -q "^$sym=" "$build/.config"; then unmet="$unmet $sym(off)"; fi ;;
        esac
    done <"$fragment"
    if [ -n "$unmet" ]; then
        echo "git-bisect-kernel: warning: settings of $fragment that $commit's configuration does not have:$unmet" | tee -a "$log" >&2
    fi
fi

targets="bzImage"
if grep -q '^CONFIG_MODULES=y' "$build/.config"; then
    targets="bzImage modules"
fi
# shellcheck disable=SC2086
kmake -j"$jobs" $targets || {
    echo "git-bisect-kernel: the build of $commit failed (see the end of $log): skip" >&2
    tail -n 20 "$log" >&2
    exit $SKIP
}

out="${NATVET_OUT:-$(dirname "$build")/natvet-bisect-out/$commit}"
echo "git-bisect-kernel: vetting $commit (evidence under $out)" >&2
"$natvet" vet --kernel "build:$build" --bisect-exit-codes --out "$out" "$@"
code=$?
echo "git-bisect-kernel: $commit -> exit $code" >&2
exit $code
