//! `cargo xtask setup`: installs what building and testing scope-router needs. Every
//! step checks first and skips when already satisfied, so it is cheap to run before
//! every `test`, `run` and `lab`.

use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::exec::{self, as_root, is_root};
use crate::progress::{self, step};

/// The bpf-linker release router-ebpf is built with (aya-build invokes it). 0.10.2 is the
/// first to sanitise union names in BTF: aya-log-ebpf's `MaybeUninit<u8>` made the kernel
/// reject the object's BTF ("Invalid name") with 0.10.0. Exact, so every machine links
/// the same object; only 0.10.2 is tested with aya 0.14.
pub const BPF_LINKER_VERSION: &str = "0.10.2";
const BPFFS: &str = "/sys/fs/bpf";

/// What a subcommand needs installed; the operator's VM only needs the build toolchain,
/// not the benchmark's HAProxy/nginx (whose packages would start services there).
/// Ordered: each profile includes the ones before it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Profile {
    /// Toolchain, bpffs and llvm-bolt: enough to build, optimize and run the router.
    Build,
    /// Build plus what the namespace lab drives (iproute2, curl, nsenter).
    Lab,
    /// The lab plus nftables, whose `nft` blackholes a region during `soak`.
    Soak,
    /// Everything: tests and benchmarks (HAProxy + Lua, wrk, nginx, tcpdump, python3 for
    /// the benchmark's upload sink, python3-requests, the OpenStack CLI's HTTP library, as
    /// a TLS client in the TLS suite, nftables, whose `nft` blackholes a region inside a
    /// privileged test's namespace, prometheus for `promtool check metrics` on the admin
    /// listener's exposition, chromium, which loads the status page headless, systemd for
    /// `systemd-analyze verify` on the unit, vagrant for `vagrant validate` on the
    /// Vagrantfile, keepalived, whose adverts the VRRP suite must understand, and tshark,
    /// which dissects ours), and cargo-fuzz for the fuzz targets and CI's fuzz smoke.
    Full,
}

impl Profile {
    /// Debian packages for this profile.
    pub fn packages(self) -> &'static [&'static str] {
        // llvm-bolt, which lays out the release binary (`install`, `bench`, the soak).
        const BUILD: &[&str] = &[crate::bolt::PACKAGE];
        const LAB: &[&str] = &[crate::bolt::PACKAGE, "iproute2", "util-linux", "curl"];
        const SOAK: &[&str] = &[
            crate::bolt::PACKAGE,
            "iproute2",
            "util-linux",
            "curl",
            "nftables",
        ];
        const FULL: &[&str] = &[
            crate::bolt::PACKAGE,
            "iproute2",
            "util-linux",
            "curl",
            "haproxy",
            "lua-cjson",
            "wrk",
            "nginx",
            "tcpdump",
            "python3",
            "python3-requests",
            "nftables",
            "prometheus",
            "chromium",
            "systemd",
            "vagrant",
            "keepalived",
            "tshark",
        ];
        match self {
            Profile::Build => BUILD,
            Profile::Lab => LAB,
            Profile::Soak => SOAK,
            Profile::Full => FULL,
        }
    }
}

pub fn run(profile: Profile) -> Result<()> {
    if !is_root() {
        eprintln!(
            "note: not running as root; installing packages and mounting bpffs use `sudo` \
             for exactly those commands (cargo and rustup steps run as you)"
        );
    }
    debian_packages(profile.packages())?;
    stable_components()?;
    nightly()?;
    rust_src()?;
    bpf_linker()?;
    bpffs()?;
    if profile == Profile::Full {
        cargo_fuzz()?;
    }
    Ok(())
}

fn debian_packages(wanted: &[&str]) -> Result<()> {
    if wanted.is_empty() {
        return Ok(());
    }
    let step = step(format!("Debian packages: {}", wanted.join(" ")));
    if exec::probe(Command::new("dpkg-query").arg("--version")).is_none() {
        progress::loud(&[
            "not a Debian system (no dpkg-query): install these yourself:",
            &wanted.join(" "),
        ]);
        step.skip("not Debian; left to the operator");
        return Ok(());
    }
    let missing = missing_packages(wanted);
    if missing.is_empty() {
        step.skip("all installed");
        return Ok(());
    }
    eprintln!("    missing: {}", missing.join(" "));
    if !is_root() {
        eprintln!("    installing packages needs root: using sudo for the two apt-get commands");
    }
    // apt-get update only now: a satisfied machine never touches the network.
    exec::exec(&mut apt(&["update"]))?;
    let mut install = apt(&["install", "-y", "--no-install-recommends"]);
    install.args(&missing);
    exec::exec(&mut install)?;
    let still = missing_packages(wanted);
    if !still.is_empty() {
        bail!(
            "apt-get finished but these are still not installed: {}",
            still.join(" ")
        );
    }
    step.done();
    Ok(())
}

/// `apt-get ARGS` as root, never prompting; `env` carries the variable through sudo.
fn apt(args: &[&str]) -> Command {
    let mut cmd = as_root("env");
    cmd.args(["DEBIAN_FRONTEND=noninteractive", "apt-get"]);
    cmd.args(args);
    cmd
}

fn missing_packages<'a>(wanted: &[&'a str]) -> Vec<&'a str> {
    wanted
        .iter()
        .copied()
        .filter(|pkg| {
            let status = exec::probe(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]));
            !status.is_some_and(|s| package_installed(&s))
        })
        .collect()
}

fn package_installed(dpkg_status: &str) -> bool {
    dpkg_status.trim() == "install ok installed"
}

/// `cargo xtask test` runs `cargo fmt` and `cargo clippy` on the default toolchain; a
/// `--profile minimal` rustup install lacks both.
fn stable_components() -> Result<()> {
    let step = step("rustfmt and clippy on the default toolchain");
    let installed = rustup_installed_components(None)?;
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !has_component(&installed, c))
        .collect();
    if missing.is_empty() {
        step.skip("both installed");
        return Ok(());
    }
    exec::exec(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )?;
    step.done();
    Ok(())
}

fn nightly() -> Result<()> {
    let step = step("nightly toolchain (builds the eBPF programs)");
    let list = exec::query(Command::new("rustup").args(["toolchain", "list"]))
        .context("the eBPF build needs rustup: install it from https://rustup.rs")?;
    if has_nightly(&list) {
        step.skip("nightly installed");
        return Ok(());
    }
    exec::exec(Command::new("rustup").args([
        "toolchain",
        "install",
        "nightly",
        "--profile",
        "minimal",
    ]))?;
    step.done();
    Ok(())
}

fn rust_src() -> Result<()> {
    let step = step("rust-src for nightly (build-std for bpfel-unknown-none)");
    let installed = rustup_installed_components(Some("nightly"))?;
    if has_component(&installed, "rust-src") {
        step.skip("rust-src installed");
        return Ok(());
    }
    exec::exec(Command::new("rustup").args([
        "component",
        "add",
        "rust-src",
        "--toolchain",
        "nightly",
    ]))?;
    step.done();
    Ok(())
}

fn rustup_installed_components(toolchain: Option<&str>) -> Result<String> {
    let mut cmd = Command::new("rustup");
    cmd.args(["component", "list", "--installed"]);
    if let Some(t) = toolchain {
        cmd.args(["--toolchain", t]);
    }
    exec::query(&mut cmd)
}

fn bpf_linker() -> Result<()> {
    let step = step(format!("bpf-linker {BPF_LINKER_VERSION}"));
    let found = exec::probe(Command::new("bpf-linker").arg("--version"));
    if found.as_deref().is_some_and(is_wanted_bpf_linker) {
        step.skip(&format!("bpf-linker {BPF_LINKER_VERSION} on PATH"));
        return Ok(());
    }
    if let Some(other) = &found {
        eprintln!("    found `{}`, replacing it", other.trim());
    }
    eprintln!("    compiling bpf-linker takes a few minutes; cargo shows its progress");
    let mut install = crate::workspace::cargo();
    install.args([
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--force",
    ]);
    exec::exec(&mut install)?;
    let after = exec::probe(Command::new("bpf-linker").arg("--version"));
    if !after.as_deref().is_some_and(is_wanted_bpf_linker) {
        bail!(
            "bpf-linker {BPF_LINKER_VERSION} was installed but `bpf-linker --version` does \
             not find it: add cargo's bin directory (usually ~/.cargo/bin) to PATH"
        );
    }
    step.done();
    Ok(())
}

/// `cargo fuzz`, which builds and runs the fuzz targets (`cargo xtask fuzz`, and the fuzz
/// smoke of `cargo xtask test`). Installed only when missing: it changes rarely and
/// `--locked` builds it with the dependencies it was released with.
fn cargo_fuzz() -> Result<()> {
    let step = step("cargo-fuzz (the fuzz targets of fuzz/)");
    if cargo_fuzz_installed() {
        step.skip("cargo-fuzz installed");
        return Ok(());
    }
    eprintln!("    compiling cargo-fuzz takes a few minutes; cargo shows its progress");
    exec::exec(crate::workspace::cargo().args(["install", "cargo-fuzz", "--locked"]))?;
    if !cargo_fuzz_installed() {
        bail!(
            "cargo-fuzz was installed but `cargo fuzz --version` does not find it: add \
             cargo's bin directory (usually ~/.cargo/bin) to PATH"
        );
    }
    step.done();
    Ok(())
}

fn cargo_fuzz_installed() -> bool {
    exec::probe(crate::workspace::cargo().args(["fuzz", "--version"])).is_some()
}

fn bpffs() -> Result<()> {
    let step = step(format!("bpffs mounted at {BPFFS} (pinned maps)"));
    let mounts = std::fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
    if bpffs_mounted(&mounts) {
        step.skip("already mounted");
        return Ok(());
    }
    if !is_root() {
        eprintln!("    mounting a filesystem needs root: using sudo for this one command");
    }
    exec::exec(as_root("mount").args(["-t", "bpf", "bpf", BPFFS]))?;
    step.done();
    Ok(())
}

/// Whether everything `profile` needs is present, without installing anything; lets
/// `run` and `lab` skip the banners when a machine is already set up.
pub fn satisfied(profile: Profile) -> bool {
    let packages_ok = profile.packages().is_empty()
        || exec::probe(Command::new("dpkg-query").arg("--version")).is_none()
        || missing_packages(profile.packages()).is_empty();
    let nightly_ok = exec::probe(Command::new("rustup").args(["toolchain", "list"]))
        .is_some_and(|l| has_nightly(&l));
    let src_ok =
        rustup_installed_components(Some("nightly")).is_ok_and(|c| has_component(&c, "rust-src"));
    let stable_ok = rustup_installed_components(None)
        .is_ok_and(|c| has_component(&c, "rustfmt") && has_component(&c, "clippy"));
    let linker_ok = exec::probe(Command::new("bpf-linker").arg("--version"))
        .is_some_and(|v| is_wanted_bpf_linker(&v));
    let bpffs_ok = std::fs::read_to_string("/proc/mounts").is_ok_and(|m| bpffs_mounted(&m));
    let fuzz_ok = profile != Profile::Full || cargo_fuzz_installed();
    packages_ok && nightly_ok && src_ok && stable_ok && linker_ok && bpffs_ok && fuzz_ok
}

/// Runs setup only when something is missing, so a ready machine prints nothing.
pub fn ensure(profile: Profile) -> Result<()> {
    if satisfied(profile) {
        Ok(())
    } else {
        run(profile)
    }
}

fn has_nightly(toolchain_list: &str) -> bool {
    toolchain_list
        .lines()
        .any(|l| l.trim_start().starts_with("nightly"))
}

fn has_component(installed: &str, name: &str) -> bool {
    // Components are listed bare (`rust-src`) or with the host triple
    // (`clippy-x86_64-unknown-linux-gnu`); matching the triple exactly keeps
    // `rust-std-…` from passing for `rust-src` or `rust`.
    let host = crate::workspace::host_triple().unwrap_or_default();
    component_listed(installed, name, &host)
}

fn component_listed(installed: &str, name: &str, host: &str) -> bool {
    let with_host = format!("{name}-{host}");
    installed
        .lines()
        .map(str::trim)
        .any(|l| l == name || l == with_host)
}

fn is_wanted_bpf_linker(version_output: &str) -> bool {
    version_output.split_whitespace().nth(1) == Some(BPF_LINKER_VERSION)
}

fn bpffs_mounted(proc_mounts: &str) -> bool {
    proc_mounts.lines().any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        matches!(fields.as_slice(), [_, mountpoint, "bpf", ..] if *mountpoint == BPFFS)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bpf_linker_version_must_match_exactly() {
        assert!(is_wanted_bpf_linker("bpf-linker 0.10.2\n"));
        assert!(!is_wanted_bpf_linker("bpf-linker 0.10.0\n"));
        assert!(!is_wanted_bpf_linker("bpf-linker 0.9.15"));
        assert!(!is_wanted_bpf_linker(""));
    }

    #[test]
    fn bpffs_is_found_only_at_its_mountpoint() {
        let with = "sysfs /sys sysfs rw 0 0\nbpf /sys/fs/bpf bpf rw,relatime 0 0\n";
        let elsewhere = "bpf /mnt/bpf bpf rw 0 0\n";
        let without = "sysfs /sys sysfs rw 0 0\n";
        assert!(bpffs_mounted(with));
        assert!(!bpffs_mounted(elsewhere));
        assert!(!bpffs_mounted(without));
    }

    #[test]
    fn nightly_and_components_are_recognised() {
        let toolchains =
            "stable-x86_64-unknown-linux-gnu (default)\nnightly-x86_64-unknown-linux-gnu\n";
        assert!(has_nightly(toolchains));
        assert!(!has_nightly("stable-x86_64-unknown-linux-gnu (default)\n"));

        let components =
            "cargo-x86_64-unknown-linux-gnu\nclippy-x86_64-unknown-linux-gnu\nrust-src\n";
        let host = "x86_64-unknown-linux-gnu";
        assert!(component_listed(components, "rust-src", host));
        assert!(component_listed(components, "clippy", host));
        assert!(!component_listed(components, "rustfmt", host));
        // rust-std must count neither as rust-src nor as rust.
        assert!(!component_listed(
            "rust-std-x86_64-unknown-linux-gnu\n",
            "rust-src",
            host
        ));
        assert!(!component_listed(
            "rust-std-x86_64-unknown-linux-gnu\n",
            "rust",
            host
        ));
    }

    #[test]
    fn dpkg_status_must_be_fully_installed() {
        assert!(package_installed("install ok installed"));
        assert!(!package_installed("deinstall ok config-files"));
        assert!(!package_installed(""));
    }

    #[test]
    fn operator_profile_installs_no_services() {
        assert_eq!(Profile::Build.packages(), [crate::bolt::PACKAGE]);
        assert!(!Profile::Lab.packages().contains(&"nginx"));
        for pkg in [
            "haproxy",
            "lua-cjson",
            "wrk",
            "nginx",
            "iproute2",
            "nftables",
            "prometheus",
            "chromium",
        ] {
            assert!(Profile::Full.packages().contains(&pkg), "{pkg}");
        }
    }
}
