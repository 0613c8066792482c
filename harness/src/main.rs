//! One binary, three roles: the host-side harness, the guest's PID 1 (the
//! agent), and the guest's modprobe (the kernel calls it to load modules).
//! It is the agent only as PID 1 of natvet's own initramfs (its marker
//! file says so): PID 1 of a container without an init is the command line,
//! and never mounts or reboots anything.

fn main() {
    let argv0 = std::env::args().next().unwrap_or_default();
    if argv0.ends_with("modprobe") {
        let args: Vec<String> = std::env::args().collect();
        std::process::exit(natvet::modules::modprobe::main(&args));
    }
    if std::process::id() == 1 && natvet::initramfs::is_own_guest(std::path::Path::new("/")) {
        natvet::agent::main_pid1();
    }
    // Die quietly on a closed pipe (`natvet kernels list | head`), like other tools.
    // SAFETY: setting a signal disposition before any threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    std::process::exit(natvet::commands::main());
}
