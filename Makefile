# natvet: the two set-up commands are `make vet` and `make test`.
# Each installs what it needs (Debian packages) first; kernels are fetched by
# natvet itself from the mirror in the host's apt sources, and cached.

CARGO  ?= cargo
TARGET := x86_64-unknown-linux-gnu
NATVET := target/$(TARGET)/debug/natvet
# Debian packages natvet needs on the host: qemu for the VMs, the NAT tools
# and conntrack (copied into each guest with their libraries), kmod for depmod,
# gpgv and Debian's archive keyring to check the archive's signatures.
DEB_PACKAGES := qemu-system-x86 nftables iptables conntrack kmod gpgv debian-archive-keyring
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

# Debian packages the tests need beyond those: Chromium opens the HTML
# report (tests/report_in_browser.rs); apt-ftparchive and gpg build and sign
# a local repository (tests/matrix/repository.rs).
TEST_DEB_PACKAGES := chromium apt-utils gnupg xz-utils

# Debian packages `natvet kernels build` needs to compile a kernel.
KERNEL_DEB_PACKAGES := build-essential bc bison flex libelf-dev libssl-dev patch xz-utils

# Install the Debian packages in $(1) that are not installed yet (apt-get update only then).
apt_install = missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -q && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

.PHONY: all deps test-deps kernel-deps build vet test lint fmt bench clean

all: build

deps:
	@$(call apt_install,$(DEB_PACKAGES))

test-deps:
	@$(call apt_install,$(TEST_DEB_PACKAGES))

# What `natvet kernels build` needs (compiler, kbuild tools, libelf/libssl headers).
kernel-deps:
	@$(call apt_install,$(KERNEL_DEB_PACKAGES))

build:
	$(CARGO) build

# Vet the default kernel set (vm-images/kernels.toml) with every shipped scenario.
vet: deps build
	$(NATVET) vet $(VET_ARGS)

# Unit tests, the HTML report in Chromium, then the kernel matrix
# (tests/matrix.rs) in real VMs.
test: deps test-deps
	$(CARGO) test $(TEST_ARGS)

# Boot, agent and per-kernel times, memory, initramfs size, parallel speed-up.
bench: deps
	$(CARGO) bench --profile dev --bench pure -- --quick
	$(CARGO) bench --profile dev --bench vm

# The check files are declared by the registry macro in harness/src/checks/mod.rs,
# where `cargo fmt` does not see them: they are named here.
CHECK_FILES := $(wildcard harness/src/checks/*.rs harness/src/checks/*/*.rs)

lint:
	$(CARGO) fmt --all -- --check
	rustfmt --edition 2021 --check $(CHECK_FILES)
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all
	rustfmt --edition 2021 $(CHECK_FILES)

clean:
	$(CARGO) clean
	rm -rf natvet-out
