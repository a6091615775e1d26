//! What the lab will build, computed before anything is created: per region the VIP,
//! the services address, the router's own address, the ports to serve (from the
//! catalog) and the generated router config. Pure, so it is unit-tested.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use toml::{Table, Value};

/// Namespace and pin-path prefix: everything the lab creates carries it, so `--down`
/// only ever touches lab objects.
pub const PREFIX: &str = "srlab";
/// The client network (RFC 2544 benchmarking range: never routed anywhere real).
pub const CLIENT_ADDR: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const CLIENT_GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const CLIENT_NET: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
/// The router's interface name on the seed VMs, kept so configs need no change.
pub const VIP_INTERFACE: &str = "eth2";

/// A catalog entry reduced to what the lab needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    pub service_type: String,
    pub interface: String,
    pub host: String,
    pub port: u16,
    /// The URL's path, cut at the first `%(…)s`/`$(…)s` placeholder as the router
    /// cleans it (`/v2.1/`); `/` when the URL has none.
    pub path: String,
}

#[derive(Debug, Clone)]
pub struct RegionPlan {
    pub name: String,
    /// 1-based, names the core-side links (`rtr1`, `svc1`, `br1`).
    pub index: usize,
    pub vip: Ipv4Addr,
    pub backend: Ipv4Addr,
    /// The router's own address on eth2 (the VIP is an extra /32 on top).
    pub router_addr: Ipv4Addr,
    /// The core namespace's address on this region's segment.
    pub gateway: Ipv4Addr,
    /// Distinct listener ports of this region, in catalog order.
    pub ports: Vec<u16>,
    pub services: Vec<Service>,
    /// Whether the config has `[vip]`, i.e. the router adds the VIP itself; otherwise
    /// the lab adds it so the region is reachable.
    pub router_manages_vip: bool,
    pub source_config: PathBuf,
    /// The generated config's TOML text.
    pub config: String,
    /// `--ha`: this plan describes the region's backup router (its namespace, address).
    pub backup_role: bool,
    /// `--tls`: the lab CA the region's certificate chains to; its URLs are `https://`.
    pub ca_file: Option<PathBuf>,
}

impl RegionPlan {
    pub fn router_ns(&self) -> String {
        let ns = format!("{PREFIX}-{}", sanitize(&self.name));
        if self.backup_role {
            format!("{ns}-b")
        } else {
            ns
        }
    }

    pub fn services_ns(&self) -> String {
        format!("{PREFIX}-{}-svc", sanitize(&self.name))
    }

    pub fn network(&self) -> Ipv4Addr {
        network24(self.vip)
    }

    pub fn pin_path(&self) -> PathBuf {
        pin_path(&self.name)
    }

    /// The URL of `path` on the region's VIP and `port`, over `https://` with `--tls`.
    pub fn url(&self, port: u16, path: &str) -> String {
        let scheme = if self.ca_file.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}:{port}{path}", self.vip)
    }

    /// curl's arguments to trust the region's certificate (none in cleartext).
    pub fn curl_trust(&self) -> Vec<String> {
        self.ca_file
            .iter()
            .flat_map(|ca| ["--cacert".to_owned(), ca.to_string_lossy().into_owned()])
            .collect()
    }

    /// The echo backend's name for `port`, shown in the results table.
    pub fn backend_name(&self, port: u16) -> String {
        format!("{}:{port}", self.name)
    }

    /// The port of the first catalog entry of `service_type` (public interface first).
    pub fn port_of(&self, service_type: &str) -> Option<u16> {
        let of_type = || {
            self.services
                .iter()
                .filter(|s| s.service_type == service_type)
        };
        of_type()
            .find(|s| s.interface == "public")
            .or_else(|| of_type().next())
            .map(|s| s.port)
    }
}

/// The admin listener's port in the lab (the router's default).
pub const ADMIN_PORT: u16 = 9101;

impl RegionPlan {
    /// The admin listener as the client namespace reaches it.
    pub fn admin_url(&self) -> String {
        format!("http://{}:{ADMIN_PORT}", self.router_addr)
    }
}

pub fn client_ns() -> String {
    format!("{PREFIX}-client")
}

pub fn core_ns() -> String {
    format!("{PREFIX}-core")
}

pub fn pin_path(region: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/{PREFIX}-{}", sanitize(region)))
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect()
}

fn network24(addr: Ipv4Addr) -> Ipv4Addr {
    let [a, b, c, _] = addr.octets();
    Ipv4Addr::new(a, b, c, 0)
}

fn host24(net: Ipv4Addr, host: u8) -> Ipv4Addr {
    let [a, b, c, _] = net.octets();
    Ipv4Addr::new(a, b, c, host)
}

/// What the lab changes in every region config on top of the fixed lab overrides.
#[derive(Debug, Clone)]
pub struct Overrides {
    /// `ebpf.mode`: auto, required or off.
    pub ebpf_mode: String,
    /// Set `vip.manage = false` and let the lab add the VIP instead of the router.
    pub unmanaged_vip: bool,
    /// Settings merged over everything else, table by table (`soak`'s timeouts and
    /// checks); empty for `lab`.
    pub settings: Table,
}

/// Builds the plan for the given example configs (one region each).
pub fn plan(configs: &[PathBuf], overrides: &Overrides) -> Result<Vec<RegionPlan>> {
    if configs.len() < 2 {
        bail!("the lab needs at least two region configs to show cross-region routing");
    }
    let mut regions: Vec<RegionPlan> = Vec::new();
    for (i, path) in configs.iter().enumerate() {
        // The second region sends identity to the first by default (the seed's
        // identity-in-RegionOne setup), so the lab's routers have different defaults.
        let identity_default = (i == 1).then(|| regions[0].name.clone());
        let region = region_plan(path, i + 1, overrides, identity_default.as_deref())
            .with_context(|| format!("planning the lab region for {}", path.display()))?;
        if let Some(other) = regions
            .iter()
            .find(|r: &&RegionPlan| r.network() == region.network() || r.name == region.name)
        {
            bail!(
                "{} and {} share a region name or a /24 (VIP {} vs {}); the lab gives each \
                 region its own segment",
                other.source_config.display(),
                path.display(),
                other.vip,
                region.vip
            );
        }
        regions.push(region);
    }
    Ok(regions)
}

fn region_plan(
    path: &Path,
    index: usize,
    overrides: &Overrides,
    identity_default: Option<&str>,
) -> Result<RegionPlan> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut table: Table = text
        .parse()
        .with_context(|| format!("{} is not valid TOML", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new("."));

    let name = str_key(&table, "region", path)?.to_owned();
    let backend: Ipv4Addr = str_key(&table, "backend", path)?.parse().with_context(|| {
        format!(
            "{}: the lab supports an IPv4 `backend` only",
            path.display()
        )
    })?;
    let catalogs: Vec<PathBuf> = table
        .get("catalog")
        .and_then(Value::as_array)
        .with_context(|| format!("{}: `catalog` must be an array of paths", path.display()))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(|p| absolute(dir, p))
                .with_context(|| format!("{}: `catalog` entries must be strings", path.display()))
        })
        .collect::<Result<_>>()?;

    let mut services = Vec::new();
    for catalog in &catalogs {
        services.extend(region_services(catalog, &name)?);
    }
    if services.is_empty() {
        bail!("no catalog entry for region {name} in {}", path.display());
    }

    let configured_vip = table
        .get("vip")
        .and_then(|v| v.get("address"))
        .and_then(Value::as_str)
        .map(str::to_owned);
    let manage_in_config = table
        .get("vip")
        .and_then(|v| v.get("manage"))
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let router_manages_vip =
        configured_vip.is_some() && manage_in_config && !overrides.unmanaged_vip;
    let vip: Ipv4Addr = match configured_vip {
        Some(addr) => addr.parse().with_context(|| {
            format!(
                "{}: the lab supports an IPv4 `vip.address` only",
                path.display()
            )
        })?,
        None => services
            .iter()
            .find_map(|s| s.host.parse().ok())
            .with_context(|| format!("no IPv4 host in region {name}'s catalog URLs"))?,
    };
    let net = network24(vip);
    if network24(backend) != net {
        bail!(
            "{}: backend {backend} is not in the VIP's /24 ({net}/24); the lab puts the \
             services next to the router on one segment",
            path.display()
        );
    }
    let gateway = host24(net, 1);
    let router_addr = (10..=254)
        .map(|h| host24(net, h))
        .find(|a| *a != vip && *a != backend)
        .context("no free address for the router on its /24")?;
    if vip == gateway || backend == gateway {
        bail!(
            "{}: the lab uses {gateway} as the segment's gateway",
            path.display()
        );
    }

    let mut ports: Vec<u16> = Vec::new();
    for s in &services {
        if !ports.contains(&s.port) {
            ports.push(s.port);
        }
    }

    rewrite_config(&mut table, &catalogs, &name, router_addr, overrides);
    let identity_note = match identity_default.and_then(|r| set_identity_default(&mut table, r)) {
        Some(r) => {
            format!("\n# [scope.defaults] identity = \"{r}\" (the regions' defaults differ).")
        }
        None => String::new(),
    };
    let config = format!(
        "# Generated by `cargo xtask lab` from {}; lab-only overrides:\n\
         # absolute catalog paths, interface {VIP_INTERFACE}, a lab pin path, no passthrough,\n\
         # no per-port backend overrides.{identity_note}\n{}",
        path.display(),
        toml::to_string(&table).context("serialising the lab config")?
    );

    Ok(RegionPlan {
        name,
        index,
        vip,
        backend,
        router_addr,
        gateway,
        ports,
        services,
        router_manages_vip,
        source_config: path.to_path_buf(),
        config,
        backup_role: false,
        ca_file: None,
    })
}

/// `--ha`: the second router of a region, next to the first on its segment.
pub struct Backup {
    /// Its namespace (`<router_ns>-b`).
    pub ns: String,
    /// Its own address on eth2.
    pub addr: Ipv4Addr,
    /// Its pin path (each router has its own eBPF state).
    pub pin_path: PathBuf,
}

/// The VRRP priorities of the two routers: the first is master while it lives.
pub const HA_PRIORITIES: [u8; 2] = [150, 100];

impl RegionPlan {
    /// `--ha`: the backup router's place.
    pub fn backup(&self) -> Result<Backup> {
        let net = self.network();
        let addr = (self.router_addr.octets()[3].saturating_add(1)..=254)
            .map(|h| host24(net, h))
            .find(|a| *a != self.vip && *a != self.backend)
            .context("no free address for the backup router on its /24")?;
        Ok(Backup {
            ns: format!("{PREFIX}-{}-b", sanitize(&self.name)),
            addr,
            pin_path: PathBuf::from(format!("{}-b", self.pin_path().display())),
        })
    }

    /// `--ha`: the region as its backup router serves it (namespace, admin address).
    pub fn as_backup(&self) -> Result<RegionPlan> {
        let mut plan = self.clone();
        plan.router_addr = self.backup()?.addr;
        plan.backup_role = true;
        Ok(plan)
    }

    /// `--ha`: the configs of the two routers sharing the VIP over VRRP (VRID 50 + the
    /// region's index, 1 s adverts), each with its own VIP state directory under
    /// `state_dir`, pin path and admin address.
    pub fn ha_configs(&self, state_dir: &Path) -> Result<[String; 2]> {
        let backup = self.backup()?;
        let mut out = Vec::new();
        for (n, priority) in HA_PRIORITIES.into_iter().enumerate() {
            let mut table: Table = self.config.parse().context("re-reading the lab config")?;
            let (addr, pins, tag) = match n {
                0 => (self.router_addr, self.pin_path(), "a"),
                _ => (backup.addr, backup.pin_path.clone(), "b"),
            };
            let run = state_dir.join(format!("{}-{tag}-run", sanitize(&self.name)));
            if let Some(Value::Table(vip)) = table.get_mut("vip") {
                vip.insert(
                    "state_dir".into(),
                    run.to_string_lossy().into_owned().into(),
                );
            }
            if let Some(Value::Table(ebpf)) = table.get_mut("ebpf") {
                ebpf.insert(
                    "pin_path".into(),
                    pins.to_string_lossy().into_owned().into(),
                );
            }
            if let Some(Value::Table(admin)) = table.get_mut("admin") {
                admin.insert(
                    "bind".into(),
                    Value::Array(vec![
                        format!("127.0.0.1:{ADMIN_PORT}").into(),
                        format!("{addr}:{ADMIN_PORT}").into(),
                    ]),
                );
            }
            let mut vrrp = Table::new();
            vrrp.insert("vrid".into(), (50 + self.index as i64).into());
            vrrp.insert("priority".into(), i64::from(priority).into());
            vrrp.insert("advert_int".into(), "1s".into());
            vrrp.insert("auth_pass".into(), "lab-vrrp".into());
            table.insert("vrrp".into(), Value::Table(vrrp));
            out.push(format!(
                "# `cargo xtask lab --ha`: router {tag} of {}, VRRP priority {priority}\n{}",
                self.name,
                toml::to_string(&table).context("serialising the HA lab config")?
            ));
        }
        Ok([out.remove(0), out.remove(0)])
    }
}

/// Sets `[scope.defaults] identity = region` unless the config already sets it; returns
/// the region when it did.
fn set_identity_default<'r>(table: &mut Table, region: &'r str) -> Option<&'r str> {
    let scope = table
        .entry("scope")
        .or_insert_with(|| Value::Table(Table::new()))
        .as_table_mut()?;
    let defaults = scope
        .entry("defaults")
        .or_insert_with(|| Value::Table(Table::new()))
        .as_table_mut()?;
    if defaults.contains_key("identity") {
        return None;
    }
    defaults.insert("identity".into(), region.into());
    Some(region)
}

fn str_key<'a>(table: &'a Table, key: &str, path: &Path) -> Result<&'a str> {
    table
        .get(key)
        .and_then(Value::as_str)
        .with_context(|| format!("{}: missing string key `{key}`", path.display()))
}

fn absolute(dir: &Path, path: &str) -> PathBuf {
    let joined = dir.join(path);
    // Canonical when it exists, so the generated config in /tmp still finds it.
    joined.canonicalize().unwrap_or(joined)
}

/// Lab overrides on top of the example config. Passthrough listeners and per-port
/// backends point at services the lab does not run, so they go; health checks run
/// faster so the failover step shows within seconds; everything else (timeouts, scope
/// defaults, VIP address) is exercised as written.
fn rewrite_config(
    table: &mut Table,
    catalogs: &[PathBuf],
    region: &str,
    router_addr: Ipv4Addr,
    overrides: &Overrides,
) {
    table.insert(
        "catalog".into(),
        Value::Array(
            catalogs
                .iter()
                .map(|p| Value::String(p.to_string_lossy().into_owned()))
                .collect(),
        ),
    );
    table.remove("passthrough");
    if let Some(Value::Table(ports)) = table.get_mut("ports") {
        for (_, port) in ports.iter_mut() {
            if let Value::Table(settings) = port {
                settings.remove("backend");
            }
        }
    }
    if let Some(Value::Table(vip)) = table.get_mut("vip") {
        vip.insert("interface".into(), VIP_INTERFACE.into());
        if overrides.unmanaged_vip {
            vip.insert("manage".into(), false.into());
        }
    }
    // Checks fast enough for the failover step to show within seconds (the example
    // configs keep the seed's 2 s / fall 5).
    let health = table
        .entry("health")
        .or_insert_with(|| Value::Table(Table::new()));
    if let Value::Table(health) = health {
        health.insert("inter".into(), "500ms".into());
        health.insert("rise".into(), 2.into());
        health.insert("fall".into(), 2.into());
        health.insert("timeout".into(), "1s".into());
    }
    // The admin listener on loopback (for `status` in the router's namespace) and on the
    // router's own eth2 address, so the client namespace can load the page and scrape.
    let admin = table
        .entry("admin")
        .or_insert_with(|| Value::Table(Table::new()));
    if let Value::Table(admin) = admin {
        admin.insert(
            "bind".into(),
            Value::Array(vec![
                format!("127.0.0.1:{ADMIN_PORT}").into(),
                format!("{router_addr}:{ADMIN_PORT}").into(),
            ]),
        );
    }
    let ebpf = table
        .entry("ebpf")
        .or_insert_with(|| Value::Table(Table::new()));
    if let Value::Table(ebpf) = ebpf {
        ebpf.insert("mode".into(), overrides.ebpf_mode.as_str().into());
        ebpf.insert("interface".into(), VIP_INTERFACE.into());
        ebpf.insert(
            "pin_path".into(),
            pin_path(region).to_string_lossy().into_owned().into(),
        );
    }
    merge(table, &overrides.settings);
}

/// Copies `over` into `base`: tables merge key by key, any other value replaces.
fn merge(base: &mut Table, over: &Table) {
    for (key, value) in over {
        match (base.get_mut(key), value) {
            (Some(Value::Table(inner)), Value::Table(more)) => merge(inner, more),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

/// The entries of `region` in an `openstack endpoint list -f json` catalog file.
pub fn region_services(catalog: &Path, region: &str) -> Result<Vec<Service>> {
    let text = std::fs::read_to_string(catalog)
        .with_context(|| format!("reading catalog {}", catalog.display()))?;
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON array", catalog.display()))?;
    let mut services = Vec::new();
    for entry in entries {
        if entry["Region"] != region {
            continue;
        }
        let field = |key: &str| {
            entry[key]
                .as_str()
                .map(str::to_owned)
                .with_context(|| format!("{}: an entry has no string `{key}`", catalog.display()))
        };
        let url = field("URL")?;
        let (host, port) = host_port(&url)
            .with_context(|| format!("{}: cannot read host:port from {url}", catalog.display()))?;
        services.push(Service {
            service_type: field("Service Type")?,
            interface: field("Interface")?,
            host,
            port,
            path: url_path(&url),
        });
    }
    Ok(services)
}

/// `http://h:8774/v2.1/%(tenant_id)s` -> `/v2.1/`: the path the router matches prefixes
/// on, cut at the first placeholder (docs/ARCHITECTURE.md §2).
fn url_path(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = rest.find('/').map_or("", |i| &rest[i..]);
    let cut = ["%(", "$("]
        .iter()
        .filter_map(|p| path.find(p))
        .min()
        .unwrap_or(path.len());
    match &path[..cut] {
        "" => "/".to_owned(),
        p => p.to_owned(),
    }
}

/// `http://h:8774/v2/%(tenant_id)s` -> (`h`, 8774); scheme default ports as in docs/ARCHITECTURE.md §2.
fn host_port(url: &str) -> Option<(String, u16)> {
    let (default_port, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (443, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (80, rest)
    } else {
        (80, url)
    };
    let authority = rest.split('/').next()?;
    match authority.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() => Some((host.to_owned(), port.parse().ok()?)),
        Some(_) => None,
        None if authority.is_empty() => None,
        None => Some((authority.to_owned(), default_port)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CATALOG: &str = r#"[
      {"Region": "RegionOne", "Service Type": "identity", "Interface": "public", "URL": "http://192.168.142.244:5000"},
      {"Region": "RegionOne", "Service Type": "image", "Interface": "admin", "URL": "http://192.168.142.244:9293"},
      {"Region": "RegionOne", "Service Type": "image", "Interface": "public", "URL": "http://192.168.142.244:9292"},
      {"Region": "RegionOne", "Service Type": "compute", "Interface": "public", "URL": "http://192.168.142.244:8774/v2.1/%(tenant_id)s"},
      {"Region": "RegionOne", "Service Type": "compute_legacy", "Interface": "public", "URL": "http://192.168.142.244:8774/v2/%(tenant_id)s"},
      {"Region": "RegionTwo", "Service Type": "image", "Interface": "public", "URL": "http://192.168.144.244:9292"}
    ]"#;

    fn auto() -> Overrides {
        Overrides {
            ebpf_mode: "auto".into(),
            unmanaged_vip: false,
            settings: Table::new(),
        }
    }

    #[test]
    fn unmanaged_vip_is_added_by_the_lab() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "catalog.json", CATALOG);
        let one = write(
            dir.path(),
            "a.toml",
            &region_config("RegionOne", "192.168.142.244", "192.168.142.245"),
        );
        let overrides = Overrides {
            ebpf_mode: "off".into(),
            unmanaged_vip: true,
            settings: Table::new(),
        };
        let region = region_plan(&one, 1, &overrides, None).expect("plan");
        assert!(!region.router_manages_vip);
        let generated: Table = region.config.parse().expect("TOML");
        assert_eq!(generated["vip"]["manage"].as_bool(), Some(false));
        assert_eq!(generated["ebpf"]["mode"].as_str(), Some("off"));

        let by_config = write(
            dir.path(),
            "b.toml",
            &region_config("RegionOne", "192.168.142.244", "192.168.142.245").replace(
                "interface = \"ens3\"",
                "interface = \"ens3\"\nmanage = false",
            ),
        );
        let region = region_plan(&by_config, 1, &auto(), None).expect("plan");
        assert!(!region.router_manages_vip, "manage = false in the config");
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).expect("write test file");
        path
    }

    fn region_config(region: &str, vip: &str, backend: &str) -> String {
        format!(
            r#"region = "{region}"
catalog = ["catalog.json"]
backend = "{backend}"

[vip]
address = "{vip}"
interface = "ens3"

[ports.9292]
idle = "6h"
backend = "10.0.0.9:9292"

[[passthrough]]
name = "mariadb"
bind = "{vip}:3306"
backend = "{backend}:3306"
mode = "tcp"
"#
        )
    }

    #[test]
    fn settings_merge_over_the_lab_overrides_table_by_table() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "catalog.json", CATALOG);
        let one = write(
            dir.path(),
            "a.toml",
            &region_config("RegionOne", "192.168.142.244", "192.168.142.245"),
        );
        let mut overrides = auto();
        overrides.settings = r#"
            health.http_path = "/healthcheck"
            timeouts.response_head = "5s"
            ports.9292.request_body = "5s"
        "#
        .parse()
        .expect("TOML");
        let region = region_plan(&one, 1, &overrides, None).expect("plan");
        let generated: Table = region.config.parse().expect("TOML");
        assert_eq!(
            generated["health"]["http_path"].as_str(),
            Some("/healthcheck")
        );
        // The lab's own health settings and the config's port settings stay.
        assert_eq!(generated["health"]["inter"].as_str(), Some("500ms"));
        assert_eq!(generated["ports"]["9292"]["idle"].as_str(), Some("6h"));
        assert_eq!(
            generated["ports"]["9292"]["request_body"].as_str(),
            Some("5s")
        );
        assert_eq!(generated["timeouts"]["response_head"].as_str(), Some("5s"));
        let [a, _] = region.ha_configs(dir.path()).expect("HA configs");
        let a: Table = a.parse().expect("TOML");
        assert_eq!(a["timeouts"]["response_head"].as_str(), Some("5s"));
    }

    #[test]
    fn urls_reduce_to_host_and_port() {
        assert_eq!(
            host_port("http://192.168.142.244:8774/v2.1/%(tenant_id)s"),
            Some(("192.168.142.244".into(), 8774))
        );
        assert_eq!(
            host_port("https://keystone.example"),
            Some(("keystone.example".into(), 443))
        );
        assert_eq!(host_port("http://h/x"), Some(("h".into(), 80)));
        assert_eq!(host_port("http://:99"), None);
        assert_eq!(host_port("http://h:notaport"), None);
        assert_eq!(
            url_path("http://192.168.142.244:8774/v2.1/%(tenant_id)s"),
            "/v2.1/"
        );
        assert_eq!(url_path("http://192.168.142.244:5000"), "/");
        assert_eq!(url_path("http://h:9696/networking"), "/networking");
        assert_eq!(url_path("h:1/x/$(project_id)s/y"), "/x/");
    }

    #[test]
    fn ha_gives_each_region_two_routers_with_their_own_state_and_one_vrid() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "catalog.json", CATALOG);
        let one = write(
            dir.path(),
            "RegionOne.toml",
            &region_config("RegionOne", "192.168.142.244", "192.168.142.245"),
        );
        let two = write(
            dir.path(),
            "RegionTwo.toml",
            &region_config("RegionTwo", "192.168.144.244", "192.168.144.245"),
        );
        let regions = plan(&[one, two], &auto()).expect("plan");
        let r1 = &regions[0];
        let backup = r1.backup().expect("backup");
        assert_eq!(backup.ns, "srlab-RegionOne-b");
        assert_eq!(backup.addr, Ipv4Addr::new(192, 168, 142, 11));
        assert_eq!(
            r1.as_backup().expect("as backup").router_ns(),
            "srlab-RegionOne-b"
        );
        let [a, b] = r1.ha_configs(dir.path()).expect("configs");
        let (a, b): (Table, Table) = (a.parse().expect("TOML"), b.parse().expect("TOML"));
        for (t, priority) in [(&a, 150), (&b, 100)] {
            assert_eq!(t["vrrp"]["vrid"].as_integer(), Some(51));
            assert_eq!(t["vrrp"]["priority"].as_integer(), Some(priority));
        }
        for key in [("vip", "state_dir"), ("ebpf", "pin_path")] {
            assert_ne!(a[key.0][key.1], b[key.0][key.1], "{key:?} shared");
        }
        assert_eq!(
            b["admin"]["bind"][1].as_str(),
            Some("192.168.142.11:9101"),
            "{b}"
        );
    }

    #[test]
    fn plan_derives_addresses_ports_and_lab_config() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "catalog.json", CATALOG);
        let one = write(
            dir.path(),
            "RegionOne.toml",
            &region_config("RegionOne", "192.168.142.244", "192.168.142.245"),
        );
        let two = write(
            dir.path(),
            "RegionTwo.toml",
            &region_config("RegionTwo", "192.168.144.244", "192.168.144.245"),
        );
        let regions = plan(&[one, two], &auto()).expect("plan");
        let r1 = &regions[0];
        assert_eq!(r1.vip, Ipv4Addr::new(192, 168, 142, 244));
        assert_eq!(r1.gateway, Ipv4Addr::new(192, 168, 142, 1));
        assert_eq!(r1.router_addr, Ipv4Addr::new(192, 168, 142, 10));
        assert_eq!(r1.ports, vec![5000, 9293, 9292, 8774]);
        assert_eq!(r1.port_of("image"), Some(9292), "public interface wins");
        assert_eq!(r1.port_of("network"), None);
        assert_eq!(r1.router_ns(), "srlab-RegionOne");
        assert!(r1.router_manages_vip);
        assert_eq!(regions[1].ports, vec![9292]);

        let generated: Table = r1.config.parse().expect("generated config is TOML");
        let catalog = generated["catalog"][0].as_str().expect("catalog path");
        assert!(Path::new(catalog).is_absolute(), "{catalog}");
        assert_eq!(generated["vip"]["interface"].as_str(), Some("eth2"));
        assert_eq!(
            generated["vip"]["address"].as_str(),
            Some("192.168.142.244")
        );
        assert_eq!(generated["ebpf"]["mode"].as_str(), Some("auto"));
        assert_eq!(
            generated["ebpf"]["pin_path"].as_str(),
            Some("/sys/fs/bpf/srlab-RegionOne")
        );
        assert!(generated.get("passthrough").is_none());
        assert_eq!(
            generated["admin"]["bind"],
            Value::Array(vec!["127.0.0.1:9101".into(), "192.168.142.10:9101".into()])
        );
        assert_eq!(r1.admin_url(), "http://192.168.142.10:9101");
        assert_eq!(generated["ports"]["9292"]["idle"].as_str(), Some("6h"));
        assert!(generated["ports"]["9292"].get("backend").is_none());
        // The first region keeps its defaults; the second sends identity to the first.
        assert!(generated.get("scope").is_none());
        let two: Table = regions[1].config.parse().expect("generated config is TOML");
        assert_eq!(
            two["scope"]["defaults"]["identity"].as_str(),
            Some("RegionOne")
        );
    }

    #[test]
    fn vip_comes_from_catalog_when_config_has_none() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "catalog.json", CATALOG);
        let text =
            "region = \"RegionOne\"\ncatalog = [\"catalog.json\"]\nbackend = \"192.168.142.245\"\n";
        let one = write(dir.path(), "one.toml", text);
        let region = region_plan(&one, 1, &auto(), None).expect("plan");
        assert_eq!(region.vip, Ipv4Addr::new(192, 168, 142, 244));
        assert!(!region.router_manages_vip);
        let generated: Table = region.config.parse().expect("TOML");
        assert!(
            generated.get("vip").is_none(),
            "the lab must not invent a [vip]"
        );
    }

    #[test]
    fn regions_must_not_share_a_segment() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "catalog.json", CATALOG);
        let one = write(
            dir.path(),
            "a.toml",
            &region_config("RegionOne", "192.168.142.244", "192.168.142.245"),
        );
        let two = write(
            dir.path(),
            "b.toml",
            &region_config("RegionTwo", "192.168.142.200", "192.168.142.245"),
        );
        let err = plan(&[one, two], &auto()).expect_err("same /24 must be refused");
        assert!(err.to_string().contains("share"), "{err}");
    }

    #[test]
    fn backend_outside_the_vip_segment_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        write(dir.path(), "catalog.json", CATALOG);
        let one = write(
            dir.path(),
            "a.toml",
            &region_config("RegionOne", "192.168.142.244", "10.1.2.3"),
        );
        let err = region_plan(&one, 1, &auto(), None).expect_err("backend elsewhere");
        assert!(
            format!("{err:#}").contains("not in the VIP's /24"),
            "{err:#}"
        );
    }
}
