//! Builds ditto's vDSO (`vdso/vdso.c`, laid out by `vdso/vdso.lds`) with the host's C
//! compiler into `$OUT_DIR/vdso.so`, which `src/vdso.rs` embeds. The flags follow Linux's
//! arch/x86/entry/vdso/Makefile: position-independent, no libc, no stack protector, one
//! PT_LOAD, SysV and GNU hash tables, the LINUX_2.6 version, no undefined symbols, and the
//! static symbol table stripped (the dynamic one stays). `src/vdso.rs`'s tests check the
//! result (no relocations, every symbol at LINUX_2.6).

use std::env;
use std::path::PathBuf;
use std::process::Command;

fn main() {
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let src = manifest.join("vdso/vdso.c");
    let lds = manifest.join("vdso/vdso.lds");
    let include = manifest.join("../guest-images/include");
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("vdso.so");
    for p in [&src, &lds, &include.join("ditto.h")] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    println!("cargo:rerun-if-env-changed=CC");
    let cc = cc::Build::new().get_compiler().path().to_path_buf();
    let output = Command::new(&cc)
        .args([
            "-O2",
            "-Wall",
            "-fPIC",
            "-ffreestanding",
            "-fno-stack-protector",
            "-fno-stack-clash-protection",
            "-fcf-protection=none",
            "-mcmodel=small",
            "-fasynchronous-unwind-tables",
            "-nostdlib",
            "-shared",
            "-Wl,--hash-style=both",
            "-Wl,-soname=linux-vdso.so.1",
            "-Wl,-Bsymbolic",
            "-Wl,--no-undefined",
            "-Wl,--eh-frame-hdr",
            "-Wl,-z,max-page-size=4096",
            "-Wl,-z,noexecstack",
            "-Wl,--build-id=none",
            "-Wl,-s",
        ])
        .arg("-I")
        .arg(&include)
        .arg(format!("-Wl,-T,{}", lds.display()))
        .arg("-o")
        .arg(&out)
        .arg(&src)
        .output()
        .unwrap_or_else(|e| panic!("vmm: running {}: {e}", cc.display()));
    if !output.status.success() {
        panic!(
            "vmm: building the vDSO with {} failed:\n{}",
            cc.display(),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
