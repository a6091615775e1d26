//! Two in-process routers (RegionOne on 127.0.0.1, RegionTwo on 127.0.0.2)
//! with echo backends, catalogs and configs generated in a tempdir from the
//! fixture shape. Every port is bound here first (port 0) and the sockets
//! handed to the routers, so there are no fixed ports and no bind races.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use scope_router::config::Config;
use scope_router::proxy::{RouterHandle, StartOptions, start};
use serde_json::json;
use tempfile::TempDir;

use crate::echo::{EchoBackend, TcpEcho};

/// Fixture ports and the services behind them: (service type, interfaces, fixture port, URL path).
const ENDPOINTS: &[(&str, &[&str], u16, &str)] = &[
    ("identity", &["public", "internal"], 5000, ""),
    ("identity", &["admin"], 35357, ""),
    ("image", &["public", "internal", "admin"], 9292, ""),
    (
        "compute",
        &["public", "internal", "admin"],
        8774,
        "/v2.1/%(tenant_id)s",
    ),
    (
        "compute_legacy",
        &["public", "internal", "admin"],
        8774,
        "/v2/%(tenant_id)s",
    ),
    ("network", &["public", "internal", "admin"], 9696, ""),
    ("placement", &["public", "internal", "admin"], 8780, ""),
];

/// The fixture's distinct listener ports.
pub const PORTS: [u16; 6] = [5000, 35357, 9292, 8774, 9696, 8780];

/// What to vary between suites.
#[derive(Debug, Clone, Default)]
pub struct LabOptions {
    /// Extra TOML appended to RegionOne's config (e.g. a `[timeouts]` table).
    pub one_extra_toml: String,
    /// Extra TOML appended to RegionTwo's config.
    pub two_extra_toml: String,
    /// Hand RegionOne one more socket whose address no catalog entry names.
    pub stray_listener: bool,
    /// Let the routers bind their addresses directly instead of adopting
    /// sockets bound by the harness.
    pub bind_direct: bool,
    /// Leave RegionOne's compute backend unstarted: its port refuses connections.
    pub one_compute_down: bool,
    /// Add a `tcp` and an `http` passthrough listener to RegionOne.
    pub passthrough: bool,
    /// With `passthrough`: the `backend` values (TOML) of the `tcp` and the `http`
    /// listener instead of the lab's own echo servers, plus extra lines for each.
    pub passthrough_backends: Option<[String; 2]>,
    /// Extra lines for RegionOne's `[ports.N]` section of a fixture port (a `backend`
    /// line here replaces the lab's own echo backend for that port).
    pub one_port_toml: BTreeMap<u16, String>,
    /// The same for RegionTwo.
    pub two_port_toml: BTreeMap<u16, String>,
    /// `https://` catalogs: each router terminates TLS with a certificate for its VIP
    /// from the lab's CA ([`Lab::ca`]), and trusts that CA on the hop to the other.
    pub tls: bool,
    /// With `tls`: extra lines for both routers' `[tls]` section (e.g. `profile`).
    pub tls_toml: String,
    /// One `[[redirect]]` listener of RegionOne per entry, with these extra lines (e.g.
    /// `https_port`); its socket is bound here and handed in ([`Lab::redirect`]).
    pub redirect: Vec<String>,
}

/// One region: its router, VIP ports and echo backends.
#[derive(Debug)]
pub struct Region {
    pub name: &'static str,
    pub vip: IpAddr,
    /// fixture port → real port on the VIP.
    pub ports: BTreeMap<u16, u16>,
    /// fixture port → echo backend (absent when deliberately down).
    pub backends: BTreeMap<u16, EchoBackend>,
    pub config_path: PathBuf,
    pub handle: Option<RouterHandle>,
}

impl Region {
    /// The VIP address serving what the fixture has on `fixture_port`.
    pub fn addr(&self, fixture_port: u16) -> SocketAddr {
        SocketAddr::new(self.vip, self.ports[&fixture_port])
    }

    /// Name the echo backend reports for `fixture_port`.
    pub fn backend_name(&self, fixture_port: u16) -> String {
        format!("{}-{}", self.name, fixture_port)
    }

    /// Starts an admin listener for this region's router on a free loopback port (the
    /// default `127.0.0.1:9101` would collide between tests).
    pub async fn start_admin(&self) -> Result<scope_router::admin::AdminHandle, BoxError> {
        let handle = self.handle.as_ref().ok_or("the router is stopped")?;
        let config = Config::load(&self.config_path)?;
        let settings = scope_router::admin::AdminSettings {
            bind: vec![SocketAddr::from(([127, 0, 0, 1], 0))],
            ..Default::default()
        };
        let view =
            scope_router::admin::AdminView::new(&config, handle, std::time::SystemTime::now());
        Ok(scope_router::admin::start(&settings, view).await?)
    }

    /// Stops this region's router (graceful) and returns how it drained.
    pub async fn stop(&mut self) -> Option<scope_router::shutdown::Drained> {
        match self.handle.take() {
            Some(h) => Some(h.shutdown().await),
            None => None,
        }
    }
}

/// Passthrough listeners of RegionOne and their backends.
#[derive(Debug)]
pub struct PassthroughLab {
    pub tcp_addr: SocketAddr,
    pub http_addr: SocketAddr,
    pub tcp_backend: TcpEcho,
    pub http_backend: EchoBackend,
}

#[derive(Debug)]
pub struct Lab {
    pub dir: TempDir,
    pub one: Region,
    pub two: Region,
    pub passthrough: Option<PassthroughLab>,
    /// The stray socket's address (see [`LabOptions::stray_listener`]).
    pub stray_addr: Option<SocketAddr>,
    /// With [`LabOptions::tls`]: the CA every certificate of the lab chains to.
    pub ca: Option<test_support::pki::Ca>,
    /// The addresses of [`LabOptions::redirect`]'s listeners, in its order.
    pub redirect: Vec<SocketAddr>,
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn bind_port0(ip: IpAddr) -> Result<std::net::TcpListener, BoxError> {
    Ok(std::net::TcpListener::bind(SocketAddr::new(ip, 0))?)
}

/// A listener on a port below the kernel's ephemeral range, for an address the router
/// binds again itself once the reservation is dropped ([`LabOptions::bind_direct`]). A
/// port from the ephemeral range could be taken in that window as the local port of any
/// test's outgoing connection (an `EADDRINUSE` seen in CI); below it, connect() never
/// picks one.
fn bind_below_ephemeral(ip: IpAddr) -> Result<std::net::TcpListener, BoxError> {
    use std::hash::BuildHasher;
    let first_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let low = 10_000u16;
    if first_ephemeral <= low + 1000 {
        return bind_port0(ip);
    }
    let random = std::collections::hash_map::RandomState::new();
    for attempt in 0..200u32 {
        let port = low + (random.hash_one(attempt) % u64::from(first_ephemeral - low)) as u16;
        if let Ok(listener) = std::net::TcpListener::bind(SocketAddr::new(ip, port)) {
            return Ok(listener);
        }
    }
    bind_port0(ip)
}

/// RegionTwo publishes compute under a different prefix so remote forwarding
/// must rewrite the path (docs/ARCHITECTURE.md §3.5).
pub const TWO_COMPUTE_PREFIX: &str = "/two";

impl Lab {
    pub async fn start(opts: LabOptions) -> Result<Lab, BoxError> {
        let dir = tempfile::tempdir()?;
        let one_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1));
        let two_ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
        // The sockets of listeners the routers are given, or bind again themselves.
        let reserve = if opts.bind_direct {
            bind_below_ephemeral
        } else {
            bind_port0
        };

        let mut sockets: BTreeMap<&str, Vec<std::net::TcpListener>> = BTreeMap::new();
        let mut regions = Vec::new();
        for (name, ip) in [("RegionOne", one_ip), ("RegionTwo", two_ip)] {
            let mut ports = BTreeMap::new();
            let mut socks = Vec::new();
            for p in PORTS {
                let s = reserve(ip)?;
                ports.insert(p, s.local_addr()?.port());
                socks.push(s);
            }
            let mut backends = BTreeMap::new();
            for p in PORTS {
                if name == "RegionOne" && p == 8774 && opts.one_compute_down {
                    continue;
                }
                let b =
                    EchoBackend::start(SocketAddr::new(one_ip, 0), &format!("{name}-{p}")).await?;
                backends.insert(p, b);
            }
            sockets.insert(name, socks);
            regions.push(Region {
                name,
                vip: ip,
                ports,
                backends,
                config_path: dir.path().join(format!("{name}.toml")),
                handle: None,
            });
        }
        let (one, two) = {
            let mut it = regions.into_iter();
            match (it.next(), it.next()) {
                (Some(a), Some(b)) => (a, b),
                _ => return Err("regions".into()),
            }
        };

        let scheme = if opts.tls { "https" } else { "http" };
        let ca = opts
            .tls
            .then(|| test_support::pki::Ca::new(dir.path(), "lab"));
        for region in [&one, &two] {
            let prefix = if region.name == "RegionTwo" {
                TWO_COMPUTE_PREFIX
            } else {
                ""
            };
            let mut entries = Vec::new();
            for (service, interfaces, port, path) in ENDPOINTS {
                let path = if path.is_empty() {
                    String::new()
                } else {
                    format!("{prefix}{path}")
                };
                for iface in *interfaces {
                    entries.push(json!({
                        "Region": region.name,
                        "Service Type": service,
                        "Interface": iface,
                        "URL": format!("{scheme}://{}{}", region.addr(*port), path),
                    }));
                }
            }
            std::fs::write(
                dir.path()
                    .join(format!("endpoint-list-{}.json", region.name)),
                serde_json::to_string_pretty(&entries)?,
            )?;
        }

        // A closed port for a dead backend: bind, note, drop.
        let dead = bind_port0(one_ip)?.local_addr()?;

        let mut passthrough = None;
        let mut pt_socks = Vec::new();
        let mut pt_toml = String::new();
        if opts.passthrough {
            let tcp_backend = TcpEcho::start(SocketAddr::new(one_ip, 0)).await?;
            let http_backend = EchoBackend::start(SocketAddr::new(one_ip, 0), "horizon").await?;
            let tcp_sock = reserve(one_ip)?;
            let http_sock = reserve(one_ip)?;
            let tcp_addr = tcp_sock.local_addr()?;
            let http_addr = http_sock.local_addr()?;
            let [tcp_value, http_value] = opts.passthrough_backends.clone().unwrap_or([
                format!("\"{}\"", tcp_backend.addr),
                format!("\"{}\"", http_backend.addr),
            ]);
            pt_toml = format!(
                "\n[[passthrough]]\nname = \"mariadb\"\nbind = \"{tcp_addr}\"\nbackend = {tcp_value}\nmode = \"tcp\"\n\
                 \n[[passthrough]]\nname = \"horizon\"\nbind = \"{http_addr}\"\nbackend = {http_value}\nmode = \"http\"\n",
            );
            pt_socks.push(tcp_sock);
            pt_socks.push(http_sock);
            passthrough = Some(PassthroughLab {
                tcp_addr,
                http_addr,
                tcp_backend,
                http_backend,
            });
        }

        let mut redirect = Vec::new();
        for extra in &opts.redirect {
            let s = reserve(one_ip)?;
            let addr = s.local_addr()?;
            pt_toml.push_str(&format!("\n[[redirect]]\nbind = \"{addr}\"\n{extra}\n"));
            redirect.push(addr);
            pt_socks.push(s);
        }

        let mut stray_addr = None;
        if opts.stray_listener {
            let s = reserve(one_ip)?;
            stray_addr = Some(s.local_addr()?);
            pt_socks.push(s);
        }

        let mut lab = Lab {
            dir,
            one,
            two,
            passthrough,
            stray_addr,
            ca,
            redirect,
        };
        for region in [&mut lab.one, &mut lab.two] {
            let is_one = region.name == "RegionOne";
            let mut toml = format!(
                "region = \"{}\"\ncatalog = [\"endpoint-list-RegionOne.json\", \"endpoint-list-RegionTwo.json\"]\n\
                 backend = \"127.0.0.1\"\n",
                region.name
            );
            toml.push_str(if is_one {
                &opts.one_extra_toml
            } else {
                &opts.two_extra_toml
            });
            toml.push('\n');
            toml.push_str("[ebpf]\nmode = \"off\"\n");
            if let Some(ca) = &lab.ca {
                let leaf = ca.leaf(region.name, &[&region.vip.to_string()], 30);
                toml.push_str(&format!(
                    "[tls]\ncertificate = {:?}\nkey = {:?}\nca_file = {:?}\n{}\n",
                    leaf.certificate, leaf.key, ca.cert_path, opts.tls_toml
                ));
            }
            let port_toml = if is_one {
                &opts.one_port_toml
            } else {
                &opts.two_port_toml
            };
            for p in PORTS {
                let backend = match region.backends.get(&p) {
                    Some(b) => b.addr,
                    None => dead,
                };
                let extra = port_toml.get(&p).map_or("", String::as_str);
                toml.push_str(&format!("\n[ports.{}]\n", region.ports[&p]));
                if !extra.lines().any(|l| l.trim_start().starts_with("backend")) {
                    toml.push_str(&format!("backend = \"{backend}\"\n"));
                }
                toml.push_str(extra);
                toml.push('\n');
            }
            if is_one {
                toml.push_str(&pt_toml);
            }
            std::fs::write(&region.config_path, toml)?;
            let config = Config::load(&region.config_path)?;
            let mut handed_in = sockets.remove(region.name).unwrap_or_default();
            if is_one {
                handed_in.append(&mut pt_socks);
            }
            if opts.bind_direct {
                // The router binds every address itself; free the reserved
                // ports just before (a tiny window another process could use).
                handed_in.clear();
            }
            let handle = start(
                config,
                StartOptions {
                    handed_in,
                    bind_scoped: opts.bind_direct,
                    bind_passthrough: opts.bind_direct,
                    ..StartOptions::default()
                },
            )
            .await?;
            region.handle = Some(handle);
        }
        Ok(lab)
    }
}
