//! natvet: boots Linux kernels in QEMU and proves, with real packets, that a
//! WireGuard relay behind NAT still forwards traffic.
//!
//! One binary, two roles: on the host it fetches kernels, builds an initramfs
//! and drives QEMU; inside the guest the same (static) binary is PID 1 and runs
//! the scenario. See `docs/architecture.md`.

pub mod agent;
pub mod bisect;
pub mod bounds;
pub mod catalogue;
pub mod checks;
pub mod child;
pub mod commands;
pub mod conntrack;
pub mod cpio;
pub mod elfdeps;
pub mod evidence;
pub mod host;
pub mod inbound;
pub mod initramfs;
pub mod kernel;
pub mod kernel_log;
pub mod kernel_sets;
pub mod launcher;
pub mod modules;
pub mod nat;
pub mod perf;
pub mod protocol;
pub mod provision;
pub mod qemu;
pub mod relay;
pub mod report;
pub mod retry;
pub mod scenario;
pub mod types;
pub mod ui;
pub mod verify;
pub mod vet;
