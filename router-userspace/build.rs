//! Builds the kernel programs (`router-ebpf`) for `bpfel-unknown-none` and leaves the
//! object at `$OUT_DIR/router-ebpf`, where `src/ebpf/object.rs` embeds it.
//!
//! Needs a nightly toolchain with `rust-src` and `bpf-linker` on PATH (`cargo xtask
//! setup` installs both). Without nightly it retries with the stable toolchain and
//! `RUSTC_BOOTSTRAP=1` (stable + rust-src can build `core` that way). If neither works,
//! the build still succeeds with an empty object and a warning, so `cargo test` keeps
//! working on a bare machine; the router then reports "eBPF object not built" and
//! `ebpf.mode = "auto"` falls back to direct binds. Under `CI=true` a failed eBPF build
//! is an error instead, so CI can never quietly ship a router without its programs.

use std::{env, fs, path::PathBuf, process::Command};

fn main() {
    println!("cargo:rerun-if-env-changed=CI");
    println!("cargo:rerun-if-env-changed=SCOPE_ROUTER_EBPF_TOOLCHAIN");
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let workspace = manifest_dir.parent().map(PathBuf::from).unwrap_or_default();
    let ebpf_dir = workspace.join("router-ebpf");
    // aya-build only watches router-ebpf; the shared map types change the object too.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("router-common").display()
    );
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("router-ebpf");

    let result = build(&ebpf_dir);
    match result {
        Ok(()) if out.is_file() => {}
        outcome => {
            let why = match outcome {
                Ok(()) => "the eBPF build produced no object (AYA_BUILD_SKIP set?)".to_owned(),
                Err(err) => format!("{err:#}"),
            };
            if env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                panic!(
                    "building router-ebpf failed under CI: {why}\n\
                     run `cargo xtask setup` (nightly + rust-src + bpf-linker)"
                );
            }
            println!(
                "cargo:warning=router-ebpf not built ({}); the router will run without eBPF steering. Run `cargo xtask setup` to install nightly, rust-src and bpf-linker.",
                why.lines().next().unwrap_or("unknown error")
            );
            if let Err(err) = fs::write(&out, []) {
                panic!("cannot write placeholder {}: {err}", out.display());
            }
        }
    }
}

fn build(ebpf_dir: &std::path::Path) -> aya_build::Result<()> {
    let root_dir = ebpf_dir.to_string_lossy().into_owned();
    let package = || aya_build::Package {
        name: "router-ebpf",
        root_dir: &root_dir,
        ..Default::default()
    };
    // aya-build relays the child cargo's stderr as cargo warnings; keep only real messages.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    let chosen = env::var("SCOPE_ROUTER_EBPF_TOOLCHAIN").ok();
    if let Some(toolchain) = chosen.as_deref() {
        return aya_build::build_ebpf([package()], aya_build::Toolchain::Custom(toolchain));
    }
    if toolchain_works("nightly") {
        return aya_build::build_ebpf([package()], aya_build::Toolchain::Nightly);
    }
    // Stable can build `core` for the BPF target when told to accept -Z flags; aya-build
    // reads RUSTC_BOOTSTRAP from our environment and the child cargo inherits it.
    println!(
        "cargo:warning=no nightly toolchain; building router-ebpf with stable + RUSTC_BOOTSTRAP=1"
    );
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("RUSTC_BOOTSTRAP", "1") };
    aya_build::build_ebpf([package()], aya_build::Toolchain::Custom("stable"))
}

fn toolchain_works(name: &str) -> bool {
    Command::new("rustup")
        .args(["run", name, "rustc", "--version"])
        .output()
        .is_ok_and(|out| out.status.success())
}
