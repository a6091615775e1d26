//! The repository's `Vagrantfile`: `vagrant validate` accepts it (no VM, no network, no
//! provider needed), a broken copy is refused, and its `eth2` addresses are the example
//! configs' service addresses, never their VIPs (scope-router owns those).

use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn vagrantfile() -> String {
    std::fs::read_to_string(repo().join("Vagrantfile")).expect("read the Vagrantfile")
}

/// `vagrant validate --ignore-provider` on `text` as DIR/Vagrantfile. Vagrant writes
/// `.vagrant/` beside the file and its own state in VAGRANT_HOME: both go to the tempdir,
/// not the repository or the user's home.
fn validate(dir: &Path, text: &str) -> (bool, String) {
    std::fs::write(dir.join("Vagrantfile"), text).expect("write the Vagrantfile copy");
    test_support::tool::run_printed(
        Command::new("vagrant")
            .args(["validate", "--ignore-provider"])
            .current_dir(dir)
            .env("VAGRANT_HOME", dir.join("vagrant-home"))
            // Debian's vagrant would otherwise check for a newer release over the network.
            .env("VAGRANT_CHECKPOINT_DISABLE", "1")
            .env_remove("VAGRANT_CWD")
            .env_remove("VAGRANT_VAGRANTFILE"),
    )
}

#[test]
fn vagrant_validate_accepts_the_vagrantfile_and_refuses_a_broken_one() {
    const TEST: &str = "vagrant_validate_accepts_the_vagrantfile_and_refuses_a_broken_one";
    if !test_support::tool::installed(
        TEST,
        "vagrant",
        "`cargo xtask setup` installs Debian's vagrant",
    ) {
        return;
    }
    let text = vagrantfile();
    let dir = tempfile::tempdir().expect("tempdir");
    let (ok, printed) = validate(dir.path(), &text);
    assert!(ok, "vagrant validate refused the Vagrantfile:\n{printed}");
    assert!(printed.contains("validated successfully"), "{printed}");

    // The control: a misspelt setting must be refused, or the pass above proves nothing.
    let broken = text.replace("config.vm.box =", "config.vm.boxx =");
    assert_ne!(broken, text);
    let bad = tempfile::tempdir().expect("tempdir");
    let (ok, printed) = validate(bad.path(), &broken);
    assert!(
        !ok,
        "vagrant validate accepted a misspelt setting:\n{printed}"
    );
    assert!(printed.contains("boxx"), "{printed}");
}

/// `key = "value"` from a config file (the first such line).
fn config_value(config: &str, key: &str) -> String {
    config
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == key).then(|| v.split('"').nth(1).map(str::to_owned))?
        })
        .unwrap_or_else(|| panic!("no `{key} = \"…\"` in the config"))
}

#[test]
fn each_regions_eth2_is_its_service_address_and_its_vip_is_left_to_the_router() {
    let text = vagrantfile();
    for region in ["RegionOne", "RegionTwo"] {
        let config = std::fs::read_to_string(repo().join(format!("config/{region}.toml")))
            .expect("read the example config");
        let backend = config_value(&config, "backend");
        let vip = config_value(&config, "address");
        let line = text
            .lines()
            .find(|l| l.contains(&format!("\"{region}\" =>")))
            .unwrap_or_else(|| panic!("no machine {region} in the Vagrantfile"));
        assert!(
            line.contains(&format!("eth2: \"{backend}\"")),
            "{region}'s eth2 must be its backend {backend}: {line}"
        );
        assert!(
            !text.contains(&vip),
            "the Vagrantfile configures {region}'s VIP {vip}; scope-router must own it"
        );
    }
}
