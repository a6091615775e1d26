//! Builds the kernel programs (`router-ebpf`) for `bpfel-unknown-none` and leaves the
//! object at `$OUT_DIR/router-ebpf`, where `src/ebpf/object.rs` embeds it.
//!
//! Order of preference:
//! 1. `SCOPE_ROUTER_EBPF_TOOLCHAIN` if set, else `nightly`, else `stable` with
//!    `RUSTC_BOOTSTRAP=1` (build-std needs `rust-src` of that toolchain either way), plus
//!    `bpf-linker` on PATH — see `cargo xtask setup`.
//! 2. The checked-in `router-ebpf/prebuilt/router-ebpf.bpfel.o`, but only if its recorded
//!    source hash matches the current `router-ebpf` + `router-common` sources (machines
//!    without nightly/rust-src still get the exact same programs).
//! 3. An empty object and a warning: the router then reports "eBPF object not built" and
//!    `ebpf.mode = "auto"` falls back to direct binds. Under `CI=true` this is an error
//!    instead, so CI can never quietly ship a router without its programs.
//!
//! `SCOPE_ROUTER_UPDATE_PREBUILT=1` copies a freshly built object and its source hash
//! into `router-ebpf/prebuilt/` (commit both after changing the kernel programs; a unit
//! test fails while they are stale).

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
};

const PREBUILT_OBJECT: &str = "prebuilt/router-ebpf.bpfel.o";
const PREBUILT_HASH: &str = "prebuilt/SOURCE_HASH";

fn main() {
    for var in [
        "CI",
        "SCOPE_ROUTER_EBPF_TOOLCHAIN",
        "SCOPE_ROUTER_UPDATE_PREBUILT",
    ] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
    let workspace = manifest_dir.parent().map(PathBuf::from).unwrap_or_default();
    let ebpf_dir = workspace.join("router-ebpf");
    let common_dir = workspace.join("router-common");
    // aya-build only watches router-ebpf; the shared map types change the object too.
    println!("cargo:rerun-if-changed={}", common_dir.display());
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap_or_default()).join("router-ebpf");

    let source_hash = match source_hash(&ebpf_dir, &common_dir) {
        Ok(hash) => hash,
        Err(err) => panic!("cannot hash the eBPF sources: {err}"),
    };
    let prebuilt_hash = fs::read_to_string(ebpf_dir.join(PREBUILT_HASH))
        .map(|text| text.trim().to_owned())
        .unwrap_or_default();
    println!("cargo:rustc-env=ROUTER_EBPF_SOURCE_HASH={source_hash}");
    println!("cargo:rustc-env=ROUTER_EBPF_PREBUILT_HASH={prebuilt_hash}");

    let built = build(&ebpf_dir);
    let origin = match built {
        Ok(()) if out.is_file() => {
            if env::var("SCOPE_ROUTER_UPDATE_PREBUILT").is_ok_and(|v| v == "1") {
                update_prebuilt(&ebpf_dir, &out, &source_hash);
            }
            "built"
        }
        outcome => {
            let why = match outcome {
                Ok(()) => "the eBPF build produced no object (AYA_BUILD_SKIP set?)".to_owned(),
                Err(err) => format!("{err:#}"),
            };
            let why = why.lines().next().unwrap_or("unknown error").to_owned();
            let prebuilt = ebpf_dir.join(PREBUILT_OBJECT);
            if prebuilt_hash == source_hash && prebuilt.is_file() {
                println!(
                    "cargo:warning=router-ebpf not built here ({why}); embedding the checked-in prebuilt object, which matches the current sources"
                );
                if let Err(err) = fs::copy(&prebuilt, &out) {
                    panic!(
                        "cannot copy {} to {}: {err}",
                        prebuilt.display(),
                        out.display()
                    );
                }
                "prebuilt"
            } else {
                if env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                    panic!(
                        "building router-ebpf failed under CI and the prebuilt object is stale or missing: {why}\n\
                         run `cargo xtask setup` (nightly + rust-src + bpf-linker)"
                    );
                }
                println!(
                    "cargo:warning=router-ebpf not built ({why}) and no up-to-date prebuilt object; the router will run without eBPF steering. Run `cargo xtask setup` to install nightly, rust-src and bpf-linker."
                );
                if let Err(err) = fs::write(&out, []) {
                    panic!("cannot write placeholder {}: {err}", out.display());
                }
                "missing"
            }
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

/// FNV-1a over every source file (relative path + bytes), in sorted order: a staleness
/// check for the prebuilt object, not a security measure.
fn source_hash(ebpf_dir: &Path, common_dir: &Path) -> std::io::Result<String> {
    let mut files = Vec::new();
    for (label, dir) in [("router-ebpf", ebpf_dir), ("router-common", common_dir)] {
        files.push((format!("{label}/Cargo.toml"), dir.join("Cargo.toml")));
        collect(&dir.join("src"), &format!("{label}/src"), &mut files)?;
    }
    files.sort();
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |bytes: &[u8]| {
        for byte in bytes {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    for (label, path) in files {
        feed(label.as_bytes());
        feed(&[0]);
        feed(&fs::read(path)?);
        feed(&[0]);
    }
    Ok(format!("{hash:016x}"))
}

fn collect(dir: &Path, label: &str, files: &mut Vec<(String, PathBuf)>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            collect(&path, &format!("{label}/{name}"), files)?;
        } else if name.ends_with(".rs") {
            files.push((format!("{label}/{name}"), path));
        }
    }
    Ok(())
}

fn update_prebuilt(ebpf_dir: &Path, object: &Path, source_hash: &str) {
    let target = ebpf_dir.join(PREBUILT_OBJECT);
    let result = target
        .parent()
        .map_or(Ok(()), fs::create_dir_all)
        .and_then(|()| fs::copy(object, &target))
        .and_then(|_| fs::write(ebpf_dir.join(PREBUILT_HASH), format!("{source_hash}\n")));
    match result {
        Ok(()) => println!(
            "cargo:warning=updated {} (source hash {source_hash}); commit it",
            target.display()
        ),
        Err(err) => panic!("cannot update {}: {err}", target.display()),
    }
}
