//! Builds the tc BPF programs in `bpf/` with clang (`-O2 -g -target bpf
//! -mcpu=v3`: atomic compare-and-swap; `bpf_loop` needs kernels >= 5.17)
//! into `OUT_DIR/ptcp.bpf.o`, which `preservetcpd` embeds and loads.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/ptcp.bpf.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("ptcp.bpf.o");
    // linux/bpf.h includes <asm/types.h>, which Debian keeps under the
    // host's multiarch directory.
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let multiarch = match arch.as_str() {
        "x86_64" => "x86_64-linux-gnu",
        "aarch64" => "aarch64-linux-gnu",
        "arm" => "arm-linux-gnueabihf",
        "riscv64" => "riscv64-linux-gnu",
        other => other,
    };
    let clang = std::env::var("CLANG").unwrap_or_else(|_| "clang".into());
    let result = Command::new(&clang)
        .args([
            "-O2", "-g", "-target", "bpf", "-mcpu=v3", "-Wall", "-Werror",
        ])
        .arg(format!("-I/usr/include/{multiarch}"))
        .args(["-c", src, "-o"])
        .arg(&out)
        .output();
    match result {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "preservetcp: compiling {src} with {clang} failed (are the libbpf-dev headers \
             installed? run scripts/install-deps.sh):\n{}",
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => panic!(
            "preservetcp: cannot run {clang} ({e}): the tc BPF programs need clang, llvm and \
             libbpf-dev; run scripts/install-deps.sh (as root) to install them"
        ),
    }
}
