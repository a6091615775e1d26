//! `cargo xtask install`: builds scope-router in release mode and installs it as a systemd
//! service: the binary in /usr/local/bin, `dist/scope-router.service` in
//! /etc/systemd/system, and one region's config with the catalogs it names in
//! /etc/scope-router (README, "Run it as a service"). Idempotent: an identical file is
//! left alone, a changed binary or unit is replaced, and a config that differs from the
//! repository's (an operator's edit) is kept unless `--force`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

use crate::exec;
use crate::progress::step;
use crate::setup::{self, Profile};
use crate::workspace;

/// Where each file goes, relative to `--root`.
const BIN_DEST: &str = "usr/local/bin/scope-router";
const UNIT_DEST: &str = "etc/systemd/system/scope-router.service";
const CONFIG_DIR: &str = "etc/scope-router";
/// The unit's `ExecStart=` reads this name, whatever the source config was called.
const CONFIG_NAME: &str = "router.toml";
const UNIT_SOURCE: &str = "dist/scope-router.service";

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("which").required(true).args(["region", "config"])))]
pub struct Options {
    /// The region this machine serves: installs config/<REGION>.toml (e.g. RegionOne).
    #[arg(long)]
    pub region: Option<String>,
    /// A config file to install instead (its catalogs are found relative to it).
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Install under this directory instead of / (packaging, tests); never runs systemctl.
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
    /// Install this scope-router binary instead of building one.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Replace config and catalog files that differ from the ones being installed.
    #[arg(long)]
    pub force: bool,
    /// Install the plain release build, not the BOLT-optimized one.
    #[arg(long)]
    pub no_bolt: bool,
}

/// What happened to one destination file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Installed,
    Replaced,
    Unchanged,
    /// A config file that differs from the source, left as it is (no `--force`).
    Kept,
}

#[derive(Debug)]
pub struct Change {
    pub dest: PathBuf,
    pub source: PathBuf,
    pub outcome: Outcome,
}

impl Change {
    fn changed(&self) -> bool {
        matches!(self.outcome, Outcome::Installed | Outcome::Replaced)
    }
}

pub fn run(opts: Options) -> Result<()> {
    let repo = workspace::root();
    let config = match (&opts.config, &opts.region) {
        (Some(path), _) => path.clone(),
        (None, Some(region)) => region_config(&repo, region)?,
        (None, None) => bail!("say which config to install: --region NAME or --config PATH"),
    };
    let binary = match &opts.binary {
        Some(path) => path.clone(),
        None => {
            setup::ensure(Profile::Build)?;
            crate::bolt::release_router(!opts.no_bolt)?
        }
    };
    if opts.root == Path::new("/") && !exec::is_root() {
        // Built as the user (a root build would leave root-owned files in target/); only
        // the copying runs through sudo, as this same xtask with the binary just built.
        eprintln!("note: installing into / needs root: copying through sudo");
        let xtask = std::env::current_exe().context("cannot find the xtask executable")?;
        let mut cmd = exec::as_root(&xtask.to_string_lossy());
        cmd.arg("install")
            .arg("--binary")
            .arg(&binary)
            .arg("--config")
            .arg(&config);
        if opts.force {
            cmd.arg("--force");
        }
        return exec::exec(&mut cmd);
    }
    if opts.root == Path::new("/") {
        ensure_user(SERVICE_USER)?;
    }
    let install = step(format!("install into {}", opts.root.display()));
    let changes = install_files(
        &opts.root,
        &binary,
        &repo.join(UNIT_SOURCE),
        &config,
        opts.force,
    )?;
    report(&changes);
    install.done();
    let unit_changed = changes
        .iter()
        .any(|c| c.changed() && c.dest.ends_with(UNIT_DEST));
    after_install(
        &opts.root,
        unit_changed,
        changes.iter().any(Change::changed),
    )
}

/// The unprivileged user `[process] user` names in an installed config: the router sets
/// up eBPF and the VIP as root, then runs as this user (docs/ARCHITECTURE.md §14.5).
const SERVICE_USER: &str = "scope-router";

/// Creates the system user `name` (no home, no login shell) unless it exists.
fn ensure_user(name: &str) -> Result<()> {
    let check = step(format!("system user {name}"));
    let exists = Command::new("id")
        .arg("-u")
        .arg(name)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if exists {
        check.skip("exists");
        return Ok(());
    }
    exec::exec(Command::new("useradd").args([
        "--system",
        "--no-create-home",
        "--home-dir",
        "/nonexistent",
        "--shell",
        "/usr/sbin/nologin",
        name,
    ]))?;
    check.done();
    Ok(())
}

/// config/<REGION>.toml, or an error listing the regions the repository has.
fn region_config(repo: &Path, region: &str) -> Result<PathBuf> {
    let path = repo.join("config").join(format!("{region}.toml"));
    if path.is_file() {
        return Ok(path);
    }
    let mut known: Vec<String> = fs::read_dir(repo.join("config"))
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    name.strip_suffix(".toml").map(str::to_owned)
                })
                .collect()
        })
        .unwrap_or_default();
    known.sort();
    bail!(
        "no config/{region}.toml in the repository; --region is one of: {} (or give \
         --config PATH)",
        known.join(", ")
    )
}

/// Installs every file under `root`; the order is the report's order.
pub fn install_files(
    root: &Path,
    binary: &Path,
    unit: &Path,
    config: &Path,
    force: bool,
) -> Result<Vec<Change>> {
    // Read first: a config install would refuse leaves nothing half installed.
    let catalogs = catalogs(config)?;
    let mut changes = vec![
        replace_if_different(binary, &root.join(BIN_DEST), 0o755)?,
        replace_if_different(unit, &root.join(UNIT_DEST), 0o644)?,
    ];
    let config_dir = root.join(CONFIG_DIR);
    changes.push(keep_if_edited(
        config,
        &config_dir.join(CONFIG_NAME),
        force,
    )?);
    let base = config.parent().unwrap_or(Path::new("."));
    for catalog in catalogs {
        // Relative paths are relative to the config file, so copying each catalog to
        // the same relative place beside router.toml needs no rewriting.
        changes.push(keep_if_edited(
            &base.join(&catalog),
            &config_dir.join(&catalog),
            force,
        )?);
    }
    Ok(changes)
}

/// The config's `catalog` entries, each a relative path inside the config's directory.
fn catalogs(config: &Path) -> Result<Vec<PathBuf>> {
    let text = fs::read_to_string(config)
        .with_context(|| format!("cannot read the config {}", config.display()))?;
    let doc: toml::Table = toml::from_str(&text).with_context(|| {
        format!(
            "{} is not valid TOML; check it with `scope-router check --config {}`",
            config.display(),
            config.display()
        )
    })?;
    let Some(list) = doc.get("catalog").and_then(toml::Value::as_array) else {
        bail!(
            "{} has no `catalog = [...]` list; see config/RegionOne.toml",
            config.display()
        );
    };
    list.iter()
        .map(|entry| {
            let path = PathBuf::from(entry.as_str().with_context(|| {
                format!(
                    "{}: every `catalog` entry must be a string",
                    config.display()
                )
            })?);
            let inside = path
                .components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
            if !inside {
                bail!(
                    "{}: catalog entry {} is absolute or leaves the config's directory; \
                     install copies catalogs beside the config, so write it relative to \
                     the config (e.g. \"endpoint-list-RegionOne.json\")",
                    config.display(),
                    path.display()
                );
            }
            Ok(path)
        })
        .collect()
}

/// Installs `source` at `dest` unless they are identical; a binary or unit from the
/// repository always wins over what is installed.
fn replace_if_different(source: &Path, dest: &Path, mode: u32) -> Result<Change> {
    install_file(source, dest, mode, false)
}

/// Installs a config file; one that differs from `source` is the operator's and is kept
/// unless `force`.
fn keep_if_edited(source: &Path, dest: &Path, force: bool) -> Result<Change> {
    install_file(source, dest, 0o644, !force)
}

/// Writes `source` to `dest` (with `mode`) when it is missing or differs; a differing
/// one is left alone when `keep_edited` (then only the contents count, not the mode).
fn install_file(source: &Path, dest: &Path, mode: u32, keep_edited: bool) -> Result<Change> {
    let wanted = read(source)?;
    let outcome = match fs::read(dest) {
        Ok(have) if have == wanted && (keep_edited || mode_is(dest, mode)) => Outcome::Unchanged,
        Ok(_) if keep_edited => Outcome::Kept,
        Ok(_) => {
            write_atomically(dest, &wanted, mode)?;
            Outcome::Replaced
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomically(dest, &wanted, mode)?;
            Outcome::Installed
        }
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", dest.display())),
    };
    Ok(Change {
        dest: dest.to_path_buf(),
        source: source.to_path_buf(),
        outcome,
    })
}

fn read(source: &Path) -> Result<Vec<u8>> {
    fs::read(source).with_context(|| format!("cannot read {}", source.display()))
}

fn mode_is(path: &Path, mode: u32) -> bool {
    fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o7777 == mode)
}

/// Writes beside `dest` and renames over it: a running router's binary cannot be written
/// in place ("text file busy"), and a reader never sees half a config.
fn write_atomically(dest: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let dir = dest
        .parent()
        .with_context(|| format!("{} has no parent directory", dest.display()))?;
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = dest
        .file_name()
        .with_context(|| format!("{} has no file name", dest.display()))?;
    let tmp = dir.join(format!(".{}.xtask-install", name.to_string_lossy()));
    let mut file = fs::File::create(&tmp)
        .with_context(|| format!("cannot create {} (are you root?)", tmp.display()))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    fs::set_permissions(&tmp, fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", tmp.display()))?;
    fs::rename(&tmp, dest)
        .with_context(|| format!("cannot move {} to {}", tmp.display(), dest.display()))
}

fn report(changes: &[Change]) {
    for change in changes {
        let dest = change.dest.display();
        match change.outcome {
            Outcome::Installed => eprintln!("    installed  {dest}"),
            Outcome::Replaced => eprintln!("    replaced   {dest}"),
            Outcome::Unchanged => eprintln!("    unchanged  {dest}"),
            Outcome::Kept => eprintln!(
                "    KEPT       {dest}: it differs from {} (an operator's edit?); \
                 `diff -u {} {dest}` shows how; --force replaces it",
                change.source.display(),
                change.source.display()
            ),
        }
    }
    if !changes.iter().any(Change::changed) {
        eprintln!("    nothing changed: everything was already installed");
    }
}

/// systemd learns about a new or changed unit with `daemon-reload`, but only a systemd
/// that runs this machine, and only for an install into `/`.
fn after_install(root: &Path, unit_changed: bool, anything_changed: bool) -> Result<()> {
    if root != Path::new("/") {
        eprintln!(
            "    installed under {}: no systemctl (the unit is for the system that boots \
             from it)",
            root.display()
        );
        return Ok(());
    }
    let systemd_runs = Path::new("/run/systemd/system").is_dir();
    if unit_changed {
        if systemd_runs {
            exec::exec(Command::new("systemctl").arg("daemon-reload"))?;
        } else {
            eprintln!(
                "    systemd is not PID 1 here: would run `systemctl daemon-reload`; run it \
                 once systemd manages this machine"
            );
        }
    }
    if anything_changed {
        eprintln!(
            "next: `systemctl enable --now scope-router` the first time; afterwards \
             `systemctl restart scope-router` for a new binary or unit, `systemctl reload \
             scope-router` for a new config"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixture {
        _dir: tempfile::TempDir,
        root: PathBuf,
        binary: PathBuf,
        unit: PathBuf,
        config: PathBuf,
    }

    /// A root to install into, a stand-in binary, and the repository's unit and RegionOne
    /// config (the real catalog list).
    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().expect("tempdir");
        let root = dir.path().join("root");
        let binary = dir.path().join("scope-router");
        fs::write(&binary, b"\x7fELF stand-in").expect("write the stand-in binary");
        let repo = workspace::root();
        Fixture {
            root,
            binary,
            unit: repo.join(UNIT_SOURCE),
            config: repo.join("config/RegionOne.toml"),
            _dir: dir,
        }
    }

    fn install(f: &Fixture, force: bool) -> Vec<Change> {
        install_files(&f.root, &f.binary, &f.unit, &f.config, force).expect("install")
    }

    fn outcome(changes: &[Change], dest: &str) -> Outcome {
        changes
            .iter()
            .find(|c| c.dest.ends_with(dest))
            .unwrap_or_else(|| panic!("no {dest} in {changes:?}"))
            .outcome
            .clone()
    }

    #[test]
    fn first_install_puts_every_file_in_place_with_its_mode() {
        let f = fixture();
        let changes = install(&f, false);
        assert!(
            changes.iter().all(|c| c.outcome == Outcome::Installed),
            "{changes:?}"
        );
        assert!(mode_is(&f.root.join(BIN_DEST), 0o755));
        assert!(mode_is(&f.root.join(UNIT_DEST), 0o644));
        let etc = f.root.join(CONFIG_DIR);
        assert_eq!(
            fs::read(etc.join("router.toml")).expect("config"),
            fs::read(&f.config).expect("source")
        );
        // The catalogs RegionOne.toml names, beside it, as the relative paths expect.
        for name in [
            "endpoint-list-RegionOne.json",
            "endpoint-list-RegionTwo.json",
        ] {
            assert!(etc.join(name).is_file(), "{name} not installed");
        }
        assert_eq!(changes.len(), 5, "{changes:?}");
    }

    #[test]
    fn a_second_install_changes_nothing() {
        let f = fixture();
        install(&f, false);
        let again = install(&f, false);
        assert!(
            again.iter().all(|c| c.outcome == Outcome::Unchanged),
            "{again:?}"
        );
        assert!(!again.iter().any(Change::changed));
    }

    #[test]
    fn a_new_binary_or_unit_replaces_the_installed_one() {
        let f = fixture();
        install(&f, false);
        fs::write(&f.binary, b"\x7fELF a newer build").expect("rebuild");
        let changes = install(&f, false);
        assert_eq!(outcome(&changes, BIN_DEST), Outcome::Replaced);
        assert_eq!(outcome(&changes, UNIT_DEST), Outcome::Unchanged);
        assert_eq!(
            fs::read(f.root.join(BIN_DEST)).expect("binary"),
            b"\x7fELF a newer build"
        );
        // Someone edited the installed unit by hand: the repository's wins.
        fs::write(f.root.join(UNIT_DEST), "[Service]\n").expect("edit the unit");
        let changes = install(&f, false);
        assert_eq!(outcome(&changes, UNIT_DEST), Outcome::Replaced);
    }

    #[test]
    fn an_edited_config_is_kept_unless_forced() {
        let f = fixture();
        install(&f, false);
        let installed = f.root.join(CONFIG_DIR).join("router.toml");
        let edited = format!(
            "{}\n# operator: tuned\n",
            fs::read_to_string(&installed).expect("config")
        );
        fs::write(&installed, &edited).expect("edit");

        let changes = install(&f, false);
        assert_eq!(
            outcome(&changes, "etc/scope-router/router.toml"),
            Outcome::Kept
        );
        assert_eq!(fs::read_to_string(&installed).expect("config"), edited);
        assert!(!changes.iter().any(Change::changed), "{changes:?}");

        let forced = install(&f, true);
        assert_eq!(
            outcome(&forced, "etc/scope-router/router.toml"),
            Outcome::Replaced
        );
        assert_eq!(
            fs::read(&installed).expect("config"),
            fs::read(&f.config).expect("source")
        );
    }

    #[test]
    fn a_catalog_outside_the_configs_directory_is_refused() {
        let f = fixture();
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("router.toml");
        fs::write(&config, "catalog = [\"../elsewhere.json\"]\n").expect("write");
        let err = install_files(&f.root, &f.binary, &f.unit, &config, false)
            .expect_err("a catalog above the config")
            .to_string();
        assert!(err.contains("relative to the config"), "{err}");
        assert!(!f.root.exists(), "a refused install wrote files");
    }

    #[test]
    fn an_unknown_region_lists_the_known_ones() {
        let err = region_config(&workspace::root(), "RegionThree")
            .expect_err("no such region")
            .to_string();
        assert!(
            err.contains("RegionOne") && err.contains("RegionTwo"),
            "{err}"
        );
    }

    #[test]
    fn the_unit_runs_the_binary_and_config_where_install_puts_them() {
        let unit = fs::read_to_string(workspace::root().join(UNIT_SOURCE)).expect("unit");
        assert!(unit.contains(&format!(
            "ExecStart=/{BIN_DEST} run --config /{CONFIG_DIR}/{CONFIG_NAME}"
        )));
    }
}
