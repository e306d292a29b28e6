//! Builds the XDP programs (crate `lb-ebpf`: nightly, BPF target, `build-std=core`) so that a
//! plain `cargo build` produces an `xlb` binary that embeds them.
//!
//! This is what `aya-build` does, plus a codegen flag the programs need, which `aya-build`
//! cannot pass (it owns `CARGO_ENCODED_RUSTFLAGS`): `--disable-expand-memcpy-in-order` lets
//! LLVM inline small `memset`/`memcpy` as stores instead of calling a byte loop.
//!
//! Tried and rejected: `-Ctarget-cpu=v3` (its 32-bit moves truncate packet pointers, which
//! the verifier then refuses) and `+allows-misaligned-mem-access` (LLVM then also emits
//! misaligned stack accesses, which the verifier never allows).

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const PROGRAMS: [&str; 3] = ["xlb-balancer", "xlb-decap", "xlb-reference"];

fn main() {
    let manifest = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.parent().expect("workspace root").to_path_buf();
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    for dir in [
        "lb-ebpf/src",
        "lb-ebpf/Cargo.toml",
        "lb-common/src",
        "lb-common/Cargo.toml",
    ] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rerun-if-env-changed=XLB_EBPF_TOOLCHAIN");

    let arch = env::var("CARGO_CFG_TARGET_ARCH").expect("CARGO_CFG_TARGET_ARCH");
    let endian = env::var("CARGO_CFG_TARGET_ENDIAN").expect("CARGO_CFG_TARGET_ENDIAN");
    let target = if endian == "big" {
        "bpfeb-unknown-none"
    } else {
        "bpfel-unknown-none"
    };
    println!(
        "cargo:rerun-if-changed={}",
        root.join("lb-ebpf/rust-toolchain.toml").display()
    );
    let toolchain = env::var("XLB_EBPF_TOOLCHAIN").unwrap_or_else(|_| ebpf_toolchain(&root));

    let flags = [
        format!("--cfg=bpf_target_arch=\"{arch}\""),
        "-Cdebuginfo=2".to_owned(),
        "-Clink-arg=--btf".to_owned(),
        "-Clink-arg=--disable-expand-memcpy-in-order".to_owned(),
    ]
    .join("\x1f");

    let target_dir = out_dir.join("ebpf-target");
    let mut cmd = Command::new("rustup");
    cmd.args([
        "run",
        &toolchain,
        "cargo",
        "build",
        "--package",
        "lb-ebpf",
        "--bins",
        "--release",
    ])
    .args(["--target", target, "-Z", "build-std=core"])
    .arg("--target-dir")
    .arg(&target_dir)
    .current_dir(&root)
    .env("CARGO_ENCODED_RUSTFLAGS", flags)
    // The outer build's compiler settings must not leak into the nightly BPF build.
    .env_remove("RUSTC")
    .env_remove("RUSTC_WORKSPACE_WRAPPER")
    .env_remove("RUSTFLAGS")
    .env_remove("CARGO_BUILD_RUSTFLAGS");
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("cannot run rustup to build the XDP programs ({e}); run `cargo xtask setup`")
    });
    if !status.success() {
        panic!(
            "building the XDP programs failed ({status}). They need the `{toolchain}` toolchain \
             with rust-src and bpf-linker on PATH: `cargo xtask setup` installs both."
        );
    }
    let built = target_dir.join(target).join("release");
    for program in PROGRAMS {
        copy(&built.join(program), &out_dir.join(program));
    }
}

/// The toolchain pinned in `lb-ebpf/rust-toolchain.toml`, or an undated `nightly` that
/// is the same build (its `rustc -V` is the one that file records).
fn ebpf_toolchain(root: &Path) -> String {
    let pin = std::fs::read_to_string(root.join("lb-ebpf/rust-toolchain.toml"))
        .expect("lb-ebpf/rust-toolchain.toml");
    let channel = pin
        .lines()
        .find_map(|l| l.trim().strip_prefix("channel = "))
        .map(|c| c.trim_matches('"').to_owned())
        .expect("a channel in lb-ebpf/rust-toolchain.toml");
    let rustc = pin
        .lines()
        .find_map(|l| l.trim().strip_prefix("# rustc "))
        .map(str::trim);
    let version = |tc: &str| {
        Command::new("rustup")
            .args(["run", tc, "rustc", "-V"])
            .env("RUSTUP_AUTO_INSTALL", "0")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    if version(&channel).is_some() {
        return channel;
    }
    match (version("nightly"), rustc) {
        (Some(v), Some(want)) if v.strip_prefix("rustc ") == Some(want) => "nightly".to_owned(),
        (Some(v), _) => {
            println!(
                "cargo:warning=building the XDP programs with `nightly` ({v}), not the pinned {channel}; `cargo xtask setup` installs it"
            );
            "nightly".to_owned()
        }
        (None, _) => channel,
    }
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to)
        .unwrap_or_else(|e| panic!("copying {} to {}: {e}", from.display(), to.display()));
}
