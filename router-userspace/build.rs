//! Builds the kernel programs (`router-ebpf`) for `bpfel-unknown-none` and leaves the
//! object at `$OUT_DIR/router-ebpf`, where `src/ebpf/object.rs` embeds it.
//!
//! Toolchain, in order: `SCOPE_ROUTER_EBPF_TOOLCHAIN` if set, else `nightly`, else
//! `stable` with `RUSTC_BOOTSTRAP=1` (build-std needs `rust-src` of that toolchain either
//! way), plus `bpf-linker` on PATH — all installed by `cargo xtask setup`, which
//! `cargo xtask test|run|lab` run first.
//!
//! Without them the build still succeeds, so `cargo build`/`cargo test` work on any
//! machine: an empty object is embedded with a cargo warning, the router says it was built
//! without its eBPF object, and `ebpf.mode = "auto"` falls back to direct binds. Under
//! `CI=true` a missing eBPF build fails the build instead, so CI can never quietly ship a
//! router without its programs.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

fn main() {
    for var in ["CI", "SCOPE_ROUTER_EBPF_TOOLCHAIN"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let workspace = manifest_dir.parent().map(PathBuf::from).unwrap_or_default();
    let ebpf_dir = workspace.join("router-ebpf");
    // aya-build only watches router-ebpf; the shared map types change the object too.
    println!(
        "cargo:rerun-if-changed={}",
        workspace.join("router-common").display()
    );
    // Nor does it watch the linker, which shapes the object's BTF (0.10.0 left a name the
    // kernel rejects): replacing it (`cargo xtask setup`) must relink.
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
    // Release binaries keep their relocations (sections the loader ignores: the file grows,
    // the process does not) so that LLVM BOLT can move their functions after linking
    // (`cargo xtask bench|install` do: xtask/src/bolt.rs).
    println!("cargo:rerun-if-env-changed=PROFILE");
    if env::var("PROFILE").as_deref() == Ok("release") {
        println!("cargo:rustc-link-arg-bins=-Wl,--emit-relocs");
    }
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("router-ebpf");

    let origin = match build(&ebpf_dir) {
        Ok(()) if out.is_file() => "built",
        outcome => {
            let why = match outcome {
                Ok(()) => "the eBPF build produced no object (AYA_BUILD_SKIP set?)".to_owned(),
                Err(err) => format!("{err:#}"),
            };
            // The first lines say which step failed and why (e.g. a missing toolchain);
            // the rest is the child cargo's noise.
            let why = why
                .lines()
                .map(str::trim)
                .take_while(|line| !line.starts_with("Stack backtrace"))
                .filter(|line| !line.is_empty())
                .take(3)
                .collect::<Vec<_>>()
                .join(" ");
            if test_support::ci::enabled() {
                panic!(
                    "building router-ebpf failed under CI: {why}\n\
                     run `cargo xtask setup` (nightly + rust-src + bpf-linker)"
                );
            }
            println!(
                "cargo:warning=router-ebpf not built ({why}); the router will run without eBPF steering. Run `cargo xtask setup` to install nightly, rust-src and bpf-linker, then rebuild."
            );
            if let Err(err) = fs::write(&out, []) {
                panic!("cannot write placeholder {}: {err}", out.display());
            }
            "missing"
        }
    };
    println!("cargo:rustc-env=ROUTER_EBPF_ORIGIN={origin}");
}

fn build(ebpf_dir: &Path) -> aya_build::Result<()> {
    let root_dir = ebpf_dir.to_string_lossy().into_owned();
    let package = || aya_build::Package {
        name: "router-ebpf",
        root_dir: &root_dir,
        ..Default::default()
    };
    // aya-build relays the child cargo's stderr as cargo warnings; keep only real messages.
    // SAFETY: build scripts are single-threaded at this point.
    unsafe { env::set_var("CARGO_TERM_QUIET", "true") };
    if let Ok(toolchain) = env::var("SCOPE_ROUTER_EBPF_TOOLCHAIN") {
        return aya_build::build_ebpf([package()], aya_build::Toolchain::Custom(&toolchain));
    }
    if toolchain_works("nightly") {
        return aya_build::build_ebpf([package()], aya_build::Toolchain::Nightly);
    }
    // Stable can build `core` for the BPF target when told to accept -Z flags; aya-build
    // reads RUSTC_BOOTSTRAP from our environment and the child cargo inherits it.
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
