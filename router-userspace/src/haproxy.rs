//! HAProxy 2.6 configuration equivalent to the routing table (`scope-router haproxy-config`).
//!
//! Two variants, both generated from the same [`Router`] so they serve exactly the
//! listeners, backends and rewrites scope-router would:
//!
//! - **Lua** (the seed's approach): one `listen` per scoped listener whose
//!   `http-request lua.scope_route` action runs the Lua interpreter in
//!   `haproxy/scope.lua` (docs/ARCHITECTURE.md §3 in full: longest-prefix service lookup on
//!   dst addr:port then `Host`, `X-Scope` / `X-Auth-Token` / `X-Subject-Token`
//!   sources, percent-decoding, defaults, token stripping, `X-Identity-*`, `Via`
//!   loop detection, OpenStack-shaped 400/508), then
//!   `use_backend %[lua.interpret_scope]`.
//! - **Native** (no Lua): the scope is read with `req.fhdr` + `json_query` and the
//!   decision is a chain of ACLs. What it does *not* do, unlike scope-router and
//!   the Lua variant: it never answers 400 for a malformed scope (invalid JSON, a
//!   non-object, non-string values: `json_query` finds nothing and the service's
//!   default region is used), it does not percent-decode a scope, it does not try
//!   the `Host` header when the destination address matches no catalog entry, and
//!   its loop detection is a substring match on `Via`. The scope header order
//!   (`X-Scope`, then the text after `!SCOPE!` in `X-Auth-Token`, then in
//!   `X-Subject-Token`), defaults, unknown-region 400s, token stripping and
//!   `X-Identity-*` are the same.
//!
//! Both strip `!SCOPE!` from the tokens only on the hop to a local backend, as
//! scope-router does, so a remote region's router reads the same scope. Neither pins
//! in `X-Scope` what it took from its own defaults on a remote hop (HAProxy cannot build
//! JSON without more Lua per request): behind them, the next router applies its own
//! defaults to service types the client's scope does not name.
//!
//! Backends are named `Region_Type_Interface`; remote-region backends set `Host` to
//! the target's `host:port` and rewrite the matched path prefix. Passthrough
//! listeners become plain `listen` blocks (`mode tcp` / `mode http`).
//!
//! Every backend, and each `listen` block's transparent fallback, lists all the servers
//! of its backend (`<name>_1`, `_2`… in configuration order) with `check inter rise fall`
//! (`[health]`), `weight`, `backup` and `maxconn`, and carries `balance
//! roundrobin|source`, `retries`, `option redispatch 1` (`option allbackups` with several
//! backups), `timeout queue`, `timeout check` and, on a port with an HTTP check, `option httpchk GET <path>` expecting
//! 2xx/3xx. Where HAProxy then still behaves differently from scope-router
//! (docs/ARCHITECTURE.md §3.8):
//!
//! - A remote region's backend gets a TCP check of that region's frontend: HAProxy
//!   cannot ask the far router whether the service behind it is up (`GET
//!   /.scope-router/health`), so it keeps sending to a region whose service is down
//!   where scope-router answers 503 at once.
//! - HAProxy checks a server once per section listing it (the transparent fallback and
//!   every backend of the port), scope-router once per listener: more check traffic,
//!   and sections may disagree about a server for a check interval.
//! - A `weight 0` server never gets HAProxy's balanced traffic and does not keep the
//!   backups idle; scope-router uses it when every weighted server of its kind is down
//!   or on redispatch, and uses no backup while it is up.
//! - HAProxy's `timeout check` bounds the wait for the answer once connected (the
//!   connect has `min(inter, timeout connect)`); scope-router's bounds the whole check.
//! - `retries` is capped at the servers one request can reach, since scope-router never
//!   tries a server twice for one request.
//! - A server's `maxconn` is HAProxy's per section listing the server, so a local server
//!   listed by several backends of a port (and its transparent fallback) may take
//!   `maxconn` in each; scope-router counts one set of slots per server and listener,
//!   shared by every service of the port. `timeout queue` is the same setting.
//! - A passthrough `listen` block lists only its first server (`maxconn` included), as
//!   before limits existed.
//!
//! TLS follows the catalog as scope-router does: an `https://` listener becomes `bind …
//! ssl crt <certificate> [crt <sni certificate>…] alpn http/1.1` and sets
//! `X-Forwarded-Proto: https` (replacing any the client sent); a server reached over TLS
//! (a remote `https://` target, a `backend_tls` local server) gets `ssl verify required
//! ca-file <ca_file|@system-ca>` and, its checks, `check-ssl`; `[tls] profile` becomes
//! `ssl-default-bind-options`/`ssl-default-server-options ssl-min-ver` with the cipher
//! suites rustls offers; a `[[redirect]]` listener answers 301 with `http-request
//! redirect location` (`redirect scheme` would keep the cleartext port), 400 to a request
//! without `Host`, and relays its exempt paths to their backend. HAProxy 2.6 reads a certificate's key from the `crt`
//! file or from `<crt>.key` beside it; any other key file needs a bundle (chain then key,
//! mode 0600) that `emit` writes under `--out DIR/tls/` (regenerate after renewing). Two
//! differences remain:
//!
//! - A hop whose name is an IP address is verified for its chain only: HAProxy 2.6
//!   checks `verifyhost`/SNI names against DNS names and the CN, never IP addresses, so
//!   naming the IP would refuse every certificate that lists it as an IP SAN.
//!   scope-router checks the IP SAN.
//! - HAProxy picks among all `crt` certificates by SNI; scope-router serves the `[tls]
//!   sni` certificate valid for the name asked, else the listener's default: the same
//!   answer unless the default's names overlap an SNI certificate's.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::balance::{Balance, Balancer};
use crate::config::{Config, PassthroughMode, Redirect, Timeouts};
use crate::health::CheckSettings;
use crate::routing::{Listener, Route, Router};
use crate::tls::{CertificateFiles, Profile};

/// Interpreter half of the Lua script; the generated routing table is prepended.
const INTERPRETER: &str = include_str!("haproxy/scope.lua");

/// Which flavour of configuration to emit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaproxyMode {
    /// Lua scope interpreter (full docs/ARCHITECTURE.md §3 semantics).
    Lua,
    /// `json_query` + ACLs, no Lua (fewer semantics, see the module docs).
    Native,
}

/// Generation options.
#[derive(Debug, Clone)]
pub struct HaproxyOptions {
    pub mode: HaproxyMode,
    /// Path `lua-load` reads the Lua script from (Lua mode only).
    pub lua_path: String,
    /// `nbthread` in `global` (benchmarks pin HAProxy to one thread); `None` leaves
    /// HAProxy's default (one per CPU).
    pub nbthread: Option<u16>,
    /// Global `maxconn`; `None` leaves HAProxy's default (derived from `ulimit -n`).
    pub maxconn: Option<u32>,
    /// Where `crt` bundles go (a certificate whose key HAProxy cannot find by itself).
    pub bundle_dir: PathBuf,
}

impl HaproxyOptions {
    /// Defaults for `mode`: Lua script at `/etc/haproxy/scope-router.lua`.
    pub fn new(mode: HaproxyMode) -> HaproxyOptions {
        HaproxyOptions {
            mode,
            lua_path: "/etc/haproxy/scope-router.lua".to_owned(),
            nbthread: None,
            maxconn: None,
            bundle_dir: PathBuf::from("/etc/haproxy/scope-router-tls"),
        }
    }
}

/// The generated files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HaproxyConfig {
    /// `haproxy.cfg`.
    pub cfg: String,
    /// The Lua script to install at [`HaproxyOptions::lua_path`]; `None` in native mode.
    pub lua: Option<String>,
    /// Certificate bundles `cfg` names, to write before HAProxy starts ([`emit`] does).
    pub bundles: Vec<Bundle>,
}

/// A `crt` file HAProxy needs that the operator's files are not: the chain of
/// `files.certificate` followed by the key of `files.key`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bundle {
    pub path: PathBuf,
    pub files: CertificateFiles,
}

impl Bundle {
    /// The bundle's text: the chain, then the key.
    pub fn contents(&self) -> Result<String, HaproxyError> {
        let read = |path: &Path| {
            std::fs::read_to_string(path).map_err(|source| HaproxyError::Read {
                path: path.to_owned(),
                source,
            })
        };
        let mut pem = read(&self.files.certificate)?;
        if !pem.ends_with('\n') {
            pem.push('\n');
        }
        pem.push_str(&read(&self.files.key)?);
        Ok(pem)
    }
}

/// The `crt` argument serving `files`: the certificate itself when HAProxy 2.6 finds the
/// key on its own (in the same file, or in `<certificate>.key`: `ssl-load-extra-files`
/// defaults to all), else a bundle in `bundles` (added once).
fn crt_file(files: &CertificateFiles, dir: &Path, bundles: &mut Vec<Bundle>) -> PathBuf {
    let beside = {
        let mut p = files.certificate.clone().into_os_string();
        p.push(".key");
        PathBuf::from(p)
    };
    if files.key == files.certificate || files.key == beside {
        return files.certificate.clone();
    }
    if let Some(b) = bundles.iter().find(|b| b.files == *files) {
        return b.path.clone();
    }
    let stem = files
        .certificate
        .file_stem()
        .map_or_else(|| "certificate".to_owned(), |s| ident(&s.to_string_lossy()));
    let path = dir.join(format!("{}-{stem}.pem", bundles.len() + 1));
    bundles.push(Bundle {
        path: path.clone(),
        files: files.clone(),
    });
    path
}

/// How HAProxy reaches a server over TLS: the name verified and sent as SNI, and the CA
/// file trusted (`None`: the system store).
struct ServerTls {
    name: String,
    /// The name is an IP address (HAProxy cannot verify those; see the module docs).
    ip: bool,
    ca_file: Option<PathBuf>,
}

/// One backend section.
struct Backend {
    name: String,
    pool: Pool,
    timeouts: Timeouts,
    /// Remote region: new `Host` and (matched prefix, target prefix).
    remote: Option<(String, Arc<str>, Arc<str>)>,
    /// Scoped route (not the transparent fallback): strip the scope from tokens.
    scoped: bool,
    identity: bool,
}

/// The servers of a backend section (or of a `listen` block's transparent fallback) and how
/// HAProxy balances, retries and checks them.
struct Pool {
    servers: Vec<PoolServer>,
    balance: Balance,
    retries: u32,
    check: CheckSettings,
    /// `Host` of an HTTP check: the listener's address, as scope-router's checker sends it.
    check_host: String,
}

struct PoolServer {
    name: String,
    addr: String,
    weight: u32,
    backup: bool,
    maxconn: Option<u32>,
    tls: Option<ServerTls>,
}

impl Pool {
    /// Every server of `balancer`, named `<name>_1`, `_2`… in configuration order (unique
    /// within the section, and stable when servers are appended); those reached over TLS
    /// trust `ca_file` (the system store when `None`).
    fn new(
        name: &str,
        balancer: &Balancer,
        retries: u32,
        (check, check_host): (CheckSettings, String),
        ca_file: Option<&Path>,
    ) -> Pool {
        let servers: Vec<PoolServer> = balancer
            .servers()
            .iter()
            .enumerate()
            .map(|(i, s)| PoolServer {
                name: ident(&format!("{name}_{}", i + 1)),
                addr: s.health.addr().to_owned(),
                weight: s.weight,
                backup: s.backup,
                maxconn: s.slots.as_ref().map(|s| s.max()),
                tls: s.tls.as_ref().map(|hop| ServerTls {
                    name: hop.name.to_str().into_owned(),
                    ip: matches!(hop.name, rustls::pki_types::ServerName::IpAddress(_)),
                    ca_file: ca_file.map(Path::to_owned),
                }),
            })
            .collect();
        // scope-router tries each server at most once per request, and sees the backups only
        // when every other server is down; HAProxy, once out of servers, would redispatch to
        // one it already tried. Capping `retries` at the largest set one request can see
        // keeps the attempts the same (one server: no retry at all, as in scope-router).
        let backups = servers.iter().filter(|s| s.backup).count();
        let reachable = backups.max(servers.len() - backups);
        let retries = retries.min(u32::try_from(reachable.saturating_sub(1)).unwrap_or(u32::MAX));
        Pool {
            servers,
            balance: balancer.balance(),
            retries,
            check,
            check_host,
        }
    }
}

/// Emits the HAProxy configuration (and Lua script) equivalent to `router`.
pub fn generate(router: &Router, config: &Config, opts: &HaproxyOptions) -> HaproxyConfig {
    let mut cfg = String::new();
    let region = router.region();
    let _ = writeln!(
        cfg,
        "# Generated by `scope-router haproxy-config` from {} (region {region}, {} mode).\n\
         # Equivalent to scope-router's routing table; regenerate instead of editing.",
        config.path.display(),
        match opts.mode {
            HaproxyMode::Lua => "Lua",
            HaproxyMode::Native => "native json_query",
        }
    );
    cfg.push_str("global\n");
    if opts.mode == HaproxyMode::Lua {
        let _ = writeln!(cfg, "    lua-load {}", quote(&opts.lua_path));
    }
    if let Some(n) = opts.nbthread {
        let _ = writeln!(cfg, "    nbthread {n}");
    }
    // HAProxy's global `maxconn` is what `[proxy] max_connections` mirrors; unset in
    // both, each derives it from its open-file limit.
    let maxconn = opts.maxconn.or_else(|| {
        config
            .proxy
            .max_connections
            .and_then(|n| u32::try_from(n).ok())
    });
    if let Some(n) = maxconn {
        let _ = writeln!(cfg, "    maxconn {n}");
    }
    let tls_used = router.listeners().iter().any(|l| l.tls().is_some())
        || router.listeners().iter().any(|l| {
            l.local().servers().iter().any(|s| s.tls.is_some())
                || l.routes().iter().any(|r| {
                    r.targets
                        .iter()
                        .any(|t| t.balancer.servers().iter().any(|s| s.tls.is_some()))
                })
        });
    if tls_used {
        write_tls_defaults(&mut cfg, config.tls.profile);
    }
    let mut bundles = Vec::new();
    let t = config.timeouts;
    let _ = writeln!(
        cfg,
        "\ndefaults\n    mode http\n    timeout http-request {}\n    \
         timeout connect {}\n    timeout client {}\n    timeout server {}\n    \
         timeout tunnel {}\n    timeout queue {}",
        ms(t.request_header),
        ms(t.connect),
        ms(t.idle),
        ms(t.idle),
        ms(t.idle),
        ms(t.queue)
    );

    let mut backends: Vec<Backend> = Vec::new();
    for l in router.listeners() {
        let (listener, routes) = (&l.spec, l.routes());
        let name = format!("{region}_{}", listener.addr.port());
        let _ = writeln!(cfg, "\nlisten {}", ident(&name));
        let _ = write!(cfg, "    bind {}", listener.addr);
        let port = listener.addr.port();
        let served = l
            .tls()
            .and(config.port_certificate(port))
            .map(|files| (files, config.tls.sni.clone()));
        if let Some((files, sni)) = &served {
            // The default certificate first: HAProxy serves it when no SNI matches.
            cfg.push_str(" ssl");
            for f in std::iter::once(files).chain(sni) {
                let crt = crt_file(f, &opts.bundle_dir, &mut bundles);
                let _ = write!(cfg, " crt {}", word(&crt.to_string_lossy()));
            }
            cfg.push_str(" alpn http/1.1");
        }
        cfg.push_str("\n    mode http\n    option forwardfor\n");
        if served.is_some() {
            // Kolla's rule: the backend learns the client spoke TLS, whatever it claimed.
            cfg.push_str("    http-request set-header X-Forwarded-Proto https if { ssl_fc }\n");
        }
        write_timeouts(&mut cfg, &listener.timeouts, true);
        match opts.mode {
            HaproxyMode::Lua => write_lua_rules(&mut cfg),
            HaproxyMode::Native => write_native_rules(&mut cfg, router, l),
        }
        // No catalog entry matched: the listener's own servers are the transparent fallback.
        let local_check = config.port_health(port);
        let check_host = listener.addr.to_string();
        let local_ca = config.port_backend_tls(port).flatten();
        write_pool(
            &mut cfg,
            &Pool::new(
                l.transparent_name(),
                l.local(),
                config.proxy.retries,
                (local_check.clone(), check_host.clone()),
                local_ca,
            ),
        );
        for route in routes {
            for target in &route.targets {
                let name = ident(&target.backend_name);
                if backends.iter().any(|b| b.name == name) {
                    continue;
                }
                // Another region's frontend is checked with a TCP connect on the `[health]`
                // timing: HAProxy cannot ask that region's router about the service the way
                // scope-router does (module docs).
                let (check, ca_file) = match target.remote {
                    None => (local_check.clone(), local_ca),
                    Some(_) => (
                        CheckSettings {
                            http_path: None,
                            ..config.health.clone()
                        },
                        config.tls.ca_file.as_deref(),
                    ),
                };
                backends.push(Backend {
                    pool: Pool::new(
                        &name,
                        &target.balancer,
                        config.proxy.retries,
                        (check, check_host.clone()),
                        ca_file,
                    ),
                    name,
                    timeouts: listener.timeouts,
                    remote: target.remote.as_ref().map(|r| {
                        (
                            String::from_utf8_lossy(r.host.as_bytes()).into_owned(),
                            Arc::clone(&route.path),
                            Arc::clone(&r.path),
                        )
                    }),
                    scoped: true,
                    identity: &*route.service_type == "identity",
                });
            }
        }
    }

    for b in &backends {
        write_backend(&mut cfg, b, opts.mode);
    }

    for p in &config.passthrough {
        let _ = writeln!(cfg, "\nlisten {}", ident(&p.name));
        let _ = writeln!(cfg, "    bind {}", p.bind);
        match p.mode {
            PassthroughMode::Tcp => cfg.push_str("    mode tcp\n"),
            PassthroughMode::Http => cfg.push_str("    mode http\n    option forwardfor\n"),
        }
        write_timeouts(&mut cfg, &p.timeouts, p.mode == PassthroughMode::Http);
        let _ = writeln!(cfg, "    timeout connect {}", ms(p.timeouts.connect));
        let _ = writeln!(cfg, "    timeout server {}", ms(p.timeouts.idle));
        let _ = write!(cfg, "    server {} {}", ident(&p.name), p.backend);
        if let Some(max) = p.servers.first().and_then(|s| s.maxconn).filter(|m| *m > 0) {
            let _ = write!(cfg, " maxconn {max}");
        }
        cfg.push('\n');
    }

    for r in &config.redirect {
        write_redirect(&mut cfg, r);
    }

    let lua = (opts.mode == HaproxyMode::Lua).then(|| {
        let mut lua = lua_table(router, config);
        lua.push('\n');
        lua.push_str(INTERPRETER);
        lua
    });
    HaproxyConfig { cfg, lua, bundles }
}

/// `[tls] profile` as HAProxy's defaults for every TLS bind and server: the versions,
/// and the cipher suites rustls (ring) offers, so both negotiate the same.
fn write_tls_defaults(cfg: &mut String, profile: Profile) {
    let min = match profile {
        Profile::Modern => "TLSv1.3",
        Profile::Intermediate => "TLSv1.2",
    };
    // rustls's TLS 1.3 suites, in its order of preference.
    let suites = "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256";
    // rustls's TLS 1.2 suites: ECDHE with AES-GCM or ChaCha20 only (Mozilla's
    // intermediate without DHE, which rustls never offers).
    let ciphers = "ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:\
                   ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384:\
                   ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305";
    for side in ["bind", "server"] {
        let _ = writeln!(cfg, "    ssl-default-{side}-options ssl-min-ver {min}");
        let _ = writeln!(cfg, "    ssl-default-{side}-ciphersuites {suites}");
        if profile == Profile::Intermediate {
            let _ = writeln!(cfg, "    ssl-default-{side}-ciphers {ciphers}");
        }
    }
}

/// A `[[redirect]]` listener: 301 to the same host and path over `https://` (the
/// request's port dropped, `https_port` added unless 443), exempt paths relayed.
fn write_redirect(cfg: &mut String, r: &Redirect) {
    let name = ident(&format!("redirect_{}", r.bind));
    let _ = writeln!(cfg, "\nfrontend {name}");
    let _ = writeln!(cfg, "    bind {}", r.bind);
    cfg.push_str("    mode http\n");
    let port = match r.https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    // `redirect scheme https` would keep the cleartext port of `Host` in the Location.
    let location = format!("https://%[req.hdr(host),regsub(:[0-9]+$,)]{port}%[pathq]");
    match (&r.exempt_backend, r.exempt.is_empty()) {
        (Some(backend), false) => {
            let prefixes: Vec<String> = r.exempt.iter().map(|p| word(p)).collect();
            let _ = writeln!(cfg, "    acl exempt path_beg {}", prefixes.join(" "));
            // Exempt paths are relayed whatever their Host; a redirect needs one.
            cfg.push_str(
                "    http-request deny deny_status 400 if !exempt !{ req.hdr(host) -m found }\n",
            );
            let _ = writeln!(
                cfg,
                "    http-request redirect location {location} code 301 unless exempt"
            );
            let _ = writeln!(cfg, "    use_backend {name}_exempt if exempt");
            let _ = writeln!(cfg, "\nbackend {name}_exempt");
            let _ = writeln!(cfg, "    server exempt {backend}");
        }
        _ => {
            // An HTTP/1.0 request without Host names no host to redirect to.
            cfg.push_str(
                "    http-request deny deny_status 400 unless { req.hdr(host) -m found }\n",
            );
            let _ = writeln!(
                cfg,
                "    http-request redirect location {location} code 301"
            );
        }
    }
}

/// Why `haproxy-config` could not produce its files.
#[derive(Debug, thiserror::Error)]
pub enum HaproxyError {
    #[error(transparent)]
    Routing(#[from] crate::routing::RoutingError),
    #[error(
        "the Lua variant is two files (haproxy.cfg and scope-router.lua): pass --out DIR, or \
         --native for a single configuration on stdout"
    )]
    LuaNeedsOut,
    #[error("cannot write {}: {source}; check that the --out directory exists and is writable", path.display())]
    Write {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error(
        "HAProxy 2.6 reads a certificate's key from the crt file or from `<crt>.key`, and \
         {} is neither: pass --out DIR to have a bundle of certificate and key written there, \
         or put the key beside the certificate as {}.key",
        key.display(),
        certificate.display()
    )]
    KeyApart {
        certificate: std::path::PathBuf,
        key: std::path::PathBuf,
    },
    #[error("cannot read {} for a certificate bundle: {source}; check the path in the config and that you may read it", path.display())]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// The `haproxy-config` command: with `out`, writes `haproxy.cfg` (and, in Lua mode,
/// `scope-router.lua`, referenced by its absolute path) into that directory and returns
/// a summary; without, returns the native configuration for stdout.
pub fn emit(
    config: &Config,
    mode: HaproxyMode,
    out: Option<&std::path::Path>,
) -> Result<String, HaproxyError> {
    let router = Router::from_config(config)?;
    let mut opts = HaproxyOptions::new(mode);
    let Some(dir) = out else {
        if mode == HaproxyMode::Lua {
            return Err(HaproxyError::LuaNeedsOut);
        }
        let files = generate(&router, config, &opts);
        if let Some(b) = files.bundles.first() {
            return Err(HaproxyError::KeyApart {
                certificate: b.files.certificate.clone(),
                key: b.files.key.clone(),
            });
        }
        return Ok(files.cfg);
    };
    let dir = std::path::absolute(dir).map_err(|source| HaproxyError::Write {
        path: dir.to_owned(),
        source,
    })?;
    // As `mkdir -p`: `--out /etc/haproxy/scope` on a fresh host just works.
    std::fs::create_dir_all(&dir).map_err(|source| HaproxyError::Write {
        path: dir.clone(),
        source,
    })?;
    let lua_path = dir.join("scope-router.lua");
    opts.lua_path = lua_path.display().to_string();
    opts.bundle_dir = dir.join("tls");
    let files = generate(&router, config, &opts);
    let cfg_path = dir.join("haproxy.cfg");
    let write = |path: &std::path::Path, text: &str| {
        std::fs::write(path, text).map_err(|source| HaproxyError::Write {
            path: path.to_owned(),
            source,
        })
    };
    write_bundles(&files.bundles, &opts.bundle_dir)?;
    write(&cfg_path, &files.cfg)?;
    let mut summary = format!("wrote {}", cfg_path.display());
    if !files.bundles.is_empty() {
        summary.push_str(&format!(
            ", {} certificate bundle(s) in {} (write them again after renewing a certificate)",
            files.bundles.len(),
            opts.bundle_dir.display()
        ));
    }
    if let Some(lua) = &files.lua {
        write(&lua_path, lua)?;
        summary.push_str(&format!(" and {}", lua_path.display()));
    }
    summary.push_str(&format!(
        "; check with: haproxy -c -f {}\n",
        cfg_path.display()
    ));
    Ok(summary)
}

/// Writes each bundle readable by its owner only: it holds a private key.
fn write_bundles(bundles: &[Bundle], dir: &Path) -> Result<(), HaproxyError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if bundles.is_empty() {
        return Ok(());
    }
    let failed = |path: &Path| {
        let path = path.to_owned();
        move |source| HaproxyError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(failed(dir))?;
    for b in bundles {
        let pem = b.contents()?;
        // Replaced, not truncated in place: the new file is created with 0600 even when
        // an older bundle had a wider mode.
        let _ = std::fs::remove_file(&b.path);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&b.path)
            .and_then(|mut f| f.write_all(pem.as_bytes()))
            .map_err(failed(&b.path))?;
    }
    Ok(())
}

/// A `listen` block's timeouts: the client side, and `timeout queue` for the servers it
/// lists itself (the transparent fallback, or a passthrough's server).
fn write_timeouts(cfg: &mut String, t: &Timeouts, http: bool) {
    if http {
        let _ = writeln!(cfg, "    timeout http-request {}", ms(t.request_header));
    }
    let _ = writeln!(cfg, "    timeout client {}", ms(t.idle));
    let _ = writeln!(cfg, "    timeout queue {}", ms(t.queue));
}

fn write_lua_rules(cfg: &mut String) {
    cfg.push_str(
        "    http-request lua.scope_route\n    \
         http-request return status 400 content-type application/json lf-string \
         \"%[var(txn.scope_error)]\" if { var(txn.scope_status) -m int 400 }\n    \
         http-request return status 508 content-type application/json lf-string \
         \"%[var(txn.scope_error)]\" if { var(txn.scope_status) -m int 508 }\n    \
         use_backend %[lua.interpret_scope] if { lua.interpret_scope -m found }\n",
    );
}

/// ACL chain: pick the route (first matching prefix), read the scope, pick the region.
fn write_native_rules(cfg: &mut String, router: &Router, listener: &Listener) {
    // A route whose prefix an earlier route already has can never match (first wins):
    // leave it out so HAProxy evaluates fewer rules per request.
    let all = listener.routes();
    let routes: Vec<&Route> = all
        .iter()
        .enumerate()
        .filter(|(i, r)| !all[..*i].iter().any(|e| e.path == r.path))
        .map(|(_, r)| r)
        .collect();
    let via_name = format!("scope-router-{}", router.region());
    let _ = writeln!(
        cfg,
        "    http-request return status 508 content-type application/json string {} if {{ \
         req.hdr(via) -m sub -i {} }}",
        quote(&problem_json(
            508,
            "Loop Detected",
            &format!(
                "The request already went through {via_name} (see its Via header): the \
                 regions' scope defaults disagree. Give the service type an explicit region in \
                 the scope, or align [scope.defaults] in the routers' configurations."
            )
        )),
        ident(&via_name)
    );
    let _ = writeln!(
        cfg,
        "    http-request add-header Via {}",
        quote(&format!("1.1 {via_name}"))
    );
    // Scope sources in docs/ARCHITECTURE.md §3.2 order; req.fhdr keeps the commas of the JSON.
    cfg.push_str(
        "    http-request set-var(txn.scope) req.fhdr(x-scope) if { req.fhdr(x-scope) -m found }\n    \
         http-request set-var(txn.scope) req.fhdr(x-auth-token),regsub('^.*?!SCOPE!','') if \
         !{ var(txn.scope) -m found } { req.fhdr(x-auth-token) -m sub !SCOPE! }\n    \
         http-request set-var(txn.scope) req.fhdr(x-subject-token),regsub('^.*?!SCOPE!','') if \
         !{ var(txn.scope) -m found } { req.fhdr(x-subject-token) -m sub !SCOPE! }\n",
    );
    for (n, route) in routes.iter().enumerate() {
        let p = &*route.path;
        let acl = format!("route{n}");
        if p.is_empty() {
            let _ = writeln!(cfg, "    acl {acl} always_true");
        } else if p.ends_with('/') {
            let _ = writeln!(cfg, "    acl {acl} path_beg {}", quote(p));
        } else {
            let _ = writeln!(cfg, "    acl {acl} path {}", quote(p));
            let _ = writeln!(cfg, "    acl {acl} path_beg {}", quote(&format!("{p}/")));
        }
        let _ = writeln!(
            cfg,
            "    http-request set-var(txn.route) int({n}) if !{{ var(txn.route) -m found }} {acl}"
        );
    }
    let regions = router.regions();
    for (n, route) in routes.iter().enumerate() {
        let st = &*route.service_type;
        let is = format!("{{ var(txn.route) -m int {n} }}");
        let _ = writeln!(
            cfg,
            "    http-request set-var(txn.region) var(txn.scope),json_query({}) if {is}",
            quote(&format!("$.{st}"))
        );
        let _ = writeln!(
            cfg,
            "    http-request set-var(txn.region) str({}) if {is} !{{ var(txn.region) -m found }}",
            ident(router.default_region(st))
        );
        let offering: Vec<&str> = route.targets.iter().map(|t| &*t.region).collect();
        let _ = writeln!(
            cfg,
            "    http-request return status 400 content-type application/json string {} if {is} \
             !{{ var(txn.region) -m str {} }}",
            quote(&problem_json(
                400,
                "Bad Request",
                &format!(
                    "The scope sends service type '{st}' to a region that is not in the catalog \
                     or has no '{st}' endpoint with interface '{}'. Scope '{st}' to a region \
                     that offers it: {} (known regions: {}).",
                    route.interface,
                    offering.join(", "),
                    join(regions)
                )
            )),
            offering
                .iter()
                .map(|r| ident(r))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    // X-Identity-* from scope["identity"], for every scoped request.
    if !routes.is_empty() {
        let scoped = "{ var(txn.route) -m found }";
        let _ = writeln!(
            cfg,
            "    http-request set-var(txn.identity) var(txn.scope),json_query('$.identity') if {scoped}"
        );
        let _ = writeln!(
            cfg,
            "    http-request set-var(txn.identity) str({}) if {scoped} !{{ var(txn.identity) -m found }}",
            ident(router.default_region("identity"))
        );
        let _ = writeln!(
            cfg,
            "    http-request return status 400 content-type application/json string {} if \
             {scoped} !{{ var(txn.identity) -m str {} }}",
            quote(&problem_json(
                400,
                "Bad Request",
                &format!(
                    "The scope sends service type 'identity' to a region that is not in the \
                     catalog. Known regions: {}.",
                    join(regions)
                )
            )),
            regions
                .iter()
                .map(|r| ident(r))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let _ = writeln!(
            cfg,
            "    http-request del-header X-Identity-Region if {scoped}\n    \
             http-request del-header X-Identity-Url if {scoped}"
        );
        for (r, url) in identity_urls(router) {
            let when = format!("if {scoped} {{ var(txn.identity) -m str {} }}", ident(&r));
            let _ = writeln!(
                cfg,
                "    http-request set-header X-Identity-Region {} {when}",
                quote(&r)
            );
            let _ = writeln!(
                cfg,
                "    http-request set-header X-Identity-Url {} {when}",
                quote(&url)
            );
        }
    }
    for (n, route) in routes.iter().enumerate() {
        for t in &route.targets {
            let _ = writeln!(
                cfg,
                "    use_backend {} if {{ var(txn.route) -m int {n} }} {{ var(txn.region) -m str {} }}",
                ident(&t.backend_name),
                ident(&t.region)
            );
        }
    }
}

fn write_backend(cfg: &mut String, b: &Backend, mode: HaproxyMode) {
    let _ = writeln!(cfg, "\nbackend {}", b.name);
    let _ = writeln!(cfg, "    timeout connect {}", ms(b.timeouts.connect));
    let _ = writeln!(cfg, "    timeout server {}", ms(b.timeouts.idle));
    let _ = writeln!(cfg, "    timeout queue {}", ms(b.timeouts.queue));
    // The Lua action already stripped the tokens; the native variant does it here. Only
    // on the hop to the local backend: a remote region's router must read the same scope.
    if mode == HaproxyMode::Native && b.scoped && b.remote.is_none() {
        cfg.push_str("    http-request replace-header X-Subject-Token '^(.*?)!SCOPE!.*$' '\\1'\n");
        if b.identity {
            cfg.push_str("    http-request replace-header X-Auth-Token '^(.*?)!SCOPE!.*$' '\\1'\n");
        }
    }
    if let Some((host, from, to)) = &b.remote {
        let _ = writeln!(cfg, "    http-request set-header Host {}", quote(host));
        if let Some((re, with)) = path_rewrite(from, to) {
            let _ = writeln!(
                cfg,
                "    http-request replace-path {} {}",
                single(&re),
                single(&with)
            );
        }
    }
    write_pool(cfg, &b.pool);
}

/// `balance`, `retries`, redispatch, the check settings and one `server` line per server.
fn write_pool(cfg: &mut String, pool: &Pool) {
    let balance = match pool.balance {
        Balance::Roundrobin => "roundrobin",
        Balance::Source => "source",
    };
    let _ = writeln!(cfg, "    balance {balance}");
    let _ = writeln!(cfg, "    retries {}", pool.retries);
    // scope-router moves to another server after every failed connect; HAProxy's default
    // (-1) would retry the same server and redispatch only on the last retry.
    cfg.push_str("    option redispatch 1\n");
    if pool.servers.iter().filter(|s| s.backup).count() > 1 {
        // scope-router balances over its backups; HAProxy would use only the first one.
        cfg.push_str("    option allbackups\n");
    }
    let check = &pool.check;
    let _ = writeln!(cfg, "    timeout check {}", ms(check.timeout));
    if let Some(path) = &check.http_path {
        // The request scope-router's checker sends: HTTP/1.1 with the listener as `Host`,
        // healthy on 2xx/3xx.
        let _ = writeln!(cfg, "    option httpchk GET {} HTTP/1.1", word(path));
        let _ = writeln!(
            cfg,
            "    http-check send hdr Host {}",
            word(&pool.check_host)
        );
        cfg.push_str("    http-check expect status 200-399\n");
    }
    for s in &pool.servers {
        // HAProxy refuses `rise 0`/`fall 0`; scope-router counts them as 1.
        let _ = write!(
            cfg,
            "    server {} {} check inter {} rise {} fall {}",
            s.name,
            s.addr,
            ms(check.inter),
            check.rise.max(1),
            check.fall.max(1)
        );
        if s.weight != 1 {
            let _ = write!(cfg, " weight {}", s.weight);
        }
        if s.backup {
            cfg.push_str(" backup");
        }
        if let Some(max) = s.maxconn {
            let _ = write!(cfg, " maxconn {max}");
        }
        if let Some(tls) = &s.tls {
            let ca = tls
                .ca_file
                .as_ref()
                .map_or_else(|| "@system-ca".to_owned(), |p| word(&p.to_string_lossy()));
            let _ = write!(cfg, " ssl verify required ca-file {ca} alpn http/1.1");
            if !tls.ip {
                // The name is sent as SNI and checked against the certificate, on requests
                // and (`check-sni`, `check-ssl`) on health checks alike.
                let name = word(&tls.name);
                let _ = write!(cfg, " sni str({name}) check-sni {name} verifyhost {name}");
            }
            cfg.push_str(" check-ssl");
        }
        cfg.push('\n');
    }
}

/// `replace-path` regex and replacement turning prefix `from` into `to`, joined with one
/// `/` like scope-router does; `None` when the prefixes are equal.
fn path_rewrite(from: &str, to: &str) -> Option<(String, String)> {
    if from == to {
        return None;
    }
    let to_fmt = to.replace('%', "%%");
    if from.ends_with('/') {
        // The rest never starts with '/'. (A `to` without a trailing slash gains one
        // even when the rest is empty, where scope-router keeps `to` as is.)
        let sep = if to.ends_with('/') { "" } else { "/" };
        Some((
            format!("^{}(.*)$", regex_escape(from)),
            format!("{to_fmt}{sep}\\1"),
        ))
    } else if to.ends_with('/') || to.is_empty() {
        // The rest is "" or starts with '/': drop that slash and let `to` (or "/") provide it.
        let lead = if to.is_empty() { "/" } else { "" };
        Some((
            format!("^{}/?(.*)$", regex_escape(from)),
            format!("{lead}{to_fmt}\\1"),
        ))
    } else {
        Some((
            format!("^{}(.*)$", regex_escape(from)),
            format!("{to_fmt}\\1"),
        ))
    }
}

/// The identity URL per region, as scope-router sends it in `X-Identity-Url`.
fn identity_urls(router: &Router) -> Vec<(String, String)> {
    let catalog = router.catalog();
    router
        .regions()
        .iter()
        .filter_map(|r| {
            // Same choice as the router: keystonemiddleware wants admin, else public.
            let e = catalog
                .find(r, "identity", "admin")
                .or_else(|| catalog.find(r, "identity", "public"))?;
            Some((r.to_string(), e.absolute_url()))
        })
        .collect()
}

/// The routing table as a Lua chunk defining `local T`.
fn lua_table(router: &Router, config: &Config) -> String {
    let mut s =
        String::from("-- Routing table generated by `scope-router haproxy-config`.\nlocal T = {\n");
    let region = router.region();
    let _ = writeln!(s, "  region = {},", lua_str(region));
    let _ = writeln!(
        s,
        "  via_name = {},",
        lua_str(&format!("scope-router-{region}"))
    );
    let _ = writeln!(
        s,
        "  regions = {{ {} }},",
        lua_list(router.regions().iter().map(|r| &**r))
    );
    s.push_str("  defaults = {");
    for (st, r) in &config.scope_defaults {
        let _ = write!(s, " [{}] = {},", lua_str(st), lua_str(r));
    }
    s.push_str(" },\n  identity = {");
    for (r, url) in identity_urls(router) {
        let _ = write!(s, " [{}] = {},", lua_str(&r), lua_str(&url));
    }
    s.push_str(" },\n  listeners = {\n");
    for listener in router.listeners() {
        let l = &listener.spec;
        // Keyed like `txn.f:dst() .. ":" .. txn.f:dst_port()` (no IPv6 brackets).
        let _ = writeln!(
            s,
            "    [{}] = {{ routes = {{",
            lua_str(&format!("{}:{}", l.addr.ip(), l.addr.port()))
        );
        for route in listener.routes() {
            let _ = write!(
                s,
                "      {{ service_type = {}, interface = {}, path = {}, targets = {{",
                lua_str(&route.service_type),
                lua_str(&route.interface),
                lua_str(&route.path)
            );
            for t in &route.targets {
                let _ = write!(
                    s,
                    " [{}] = {},",
                    lua_str(&t.region),
                    lua_str(&ident(&t.backend_name))
                );
            }
            let _ = writeln!(
                s,
                " }}, offering = {{ {} }} }},",
                lua_list(route.targets.iter().map(|t| &*t.region))
            );
        }
        s.push_str("    } },\n");
    }
    s.push_str("  },\n}\n");
    s
}

fn lua_list<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.map(lua_str).collect::<Vec<_>>().join(", ")
}

/// A Lua string literal.
fn lua_str(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            c if c.is_control() => {
                let _ = write!(out, "\\{}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// An HAProxy double-quoted word (backslash escapes apply inside).
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if matches!(c, '"' | '\\' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// An HAProxy word: as is when it has nothing the config tokenizer would read specially
/// (spaces, quotes, backslashes, `$`, `#`), else double-quoted.
fn word(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '\\' | '$' | '#'));
    if plain { s.to_owned() } else { quote(s) }
}

/// An HAProxy single-quoted word (no escapes at all inside, so `'` cannot appear).
fn single(s: &str) -> String {
    format!("'{}'", s.replace('\'', "%27"))
}

/// A name safe as an HAProxy section/server/ACL-value word.
fn ident(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn ms(d: Duration) -> String {
    // The config refuses zero durations; a sub-millisecond one must not become HAProxy's
    // `0` (no timeout, or an invalid `inter`).
    format!("{}ms", d.as_millis().max(1))
}

fn join(items: &[Arc<str>]) -> String {
    items.iter().map(|r| &**r).collect::<Vec<_>>().join(", ")
}

/// The OpenStack-shaped error body scope-router sends.
fn problem_json(code: u16, title: &str, message: &str) -> String {
    serde_json::json!({ "error": { "code": code, "title": title, "message": message } }).to_string()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::path::Path;

    const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config");

    fn seed(region: &str, extra: &str) -> (Router, Config) {
        seed_backend(region, "\"192.168.142.245\"", extra)
    }

    /// The seed catalogs with `backend = <backend>`.
    fn seed_backend(region: &str, backend: &str, extra: &str) -> (Router, Config) {
        let text = format!(
            "region = \"{region}\"\ncatalog = [\"endpoint-list-RegionOne.json\", \
             \"endpoint-list-RegionTwo.json\"]\nbackend = {backend}\n{extra}"
        );
        let config = Config::from_str(&text, &Path::new(FIXTURES).join("router.toml")).unwrap();
        (Router::from_config(&config).unwrap(), config)
    }

    fn with_mariadb() -> (Router, Config) {
        seed("RegionOne", mariadb_toml())
    }

    fn mariadb_toml() -> &'static str {
        "[[passthrough]]\nname = \"mariadb\"\nbind = \"192.168.142.244:3306\"\n\
             backend = \"192.168.142.245:3306\"\nmode = \"tcp\"\n\
             [[passthrough]]\nname = \"horizon\"\nbind = \"192.168.142.244:80\"\n\
             backend = \"192.168.142.245:80\"\nmode = \"http\"\nmaxconn_per_server = 32\n\
             queue = \"30s\"\n"
    }

    /// The lines of the section that starts with `header`.
    fn section<'a>(cfg: &'a str, header: &str) -> Vec<&'a str> {
        let start = cfg
            .lines()
            .position(|l| l == header)
            .unwrap_or_else(|| panic!("no `{header}` in\n{cfg}"));
        cfg.lines()
            .skip(start + 1)
            .take_while(|l| l.starts_with("    "))
            .map(str::trim)
            .collect()
    }

    #[test]
    fn max_connections_becomes_the_global_maxconn() {
        let (router, mut config) = with_mariadb();
        let opts = HaproxyOptions::new(HaproxyMode::Native);
        assert!(
            !section(&generate(&router, &config, &opts).cfg, "global")
                .iter()
                .any(|l| l.starts_with("maxconn"))
        );
        config.proxy.max_connections = Some(40000);
        let global = section(&generate(&router, &config, &opts).cfg, "global").join("\n");
        assert_eq!(global, "maxconn 40000");
    }

    #[test]
    fn lua_variant_has_one_listen_per_scoped_listener() {
        let (router, config) = with_mariadb();
        let mut opts = HaproxyOptions::new(HaproxyMode::Lua);
        opts.lua_path = "/srv/scope.lua".to_owned();
        opts.nbthread = Some(1);
        opts.maxconn = Some(20000);
        let out = generate(&router, &config, &opts);
        let global = section(&out.cfg, "global");
        assert_eq!(
            global,
            vec!["lua-load \"/srv/scope.lua\"", "nbthread 1", "maxconn 20000"]
        );
        let listens = out.cfg.lines().filter(|l| l.starts_with("listen ")).count();
        assert_eq!(listens, router.listeners().len() + 2);
        let compute = section(&out.cfg, "listen RegionOne_8774");
        assert!(compute.contains(&"bind 192.168.142.244:8774"));
        assert!(compute.contains(&"http-request lua.scope_route"));
        assert!(
            compute.contains(
                &"use_backend %[lua.interpret_scope] if { lua.interpret_scope -m found }"
            )
        );
        assert!(compute.contains(
            &"server RegionOne_transparent_8774_1 192.168.142.245:8774 check inter 2000ms rise 2 fall 5"
        ));
        let lua = out.lua.unwrap();
        assert!(lua.starts_with("-- Routing table"));
        assert!(lua.contains("[\"192.168.142.244:8774\"] = { routes = {"));
        assert!(lua.contains("path = \"/v2.1/\", targets = { [\"RegionOne\"] = \"RegionOne_compute_public\", [\"RegionTwo\"] = \"RegionTwo_compute_public\","));
        assert!(lua.contains("core.register_fetches(\"interpret_scope\""));
    }

    #[test]
    fn backends_are_named_region_type_interface_and_remote_ones_set_host() {
        let (router, config) = with_mariadb();
        let out = generate(&router, &config, &HaproxyOptions::new(HaproxyMode::Lua));
        let local = section(&out.cfg, "backend RegionOne_compute_public");
        assert_eq!(
            local.last(),
            Some(
                &"server RegionOne_compute_public_1 192.168.142.245:8774 check inter 2000ms rise 2 fall 5"
            )
        );
        assert!(!local.iter().any(|l| l.contains("Host")));
        let remote = section(&out.cfg, "backend RegionTwo_compute_public");
        assert!(remote.contains(&"http-request set-header Host \"192.168.144.244:8774\""));
        // Same /v2.1/ prefix in both regions: no path rewrite.
        assert!(!remote.iter().any(|l| l.contains("replace-path")));
        assert_eq!(
            remote.last(),
            Some(
                &"server RegionTwo_compute_public_1 192.168.144.244:8774 check inter 2000ms rise 2 fall 5"
            )
        );
        // Lua strips tokens itself; backends do not.
        assert!(!out.cfg.contains("replace-header"));
    }

    /// Several servers with weights, backups and limits, `balance = "source"` on the image
    /// port and an HTTP check on the identity port, as the router would run them.
    fn with_servers() -> (Router, Config) {
        seed_backend(
            "RegionOne",
            "[\"10.0.0.1\", { address = \"10.0.0.2\", weight = 3, maxconn = 16 }, \
             { address = \"10.0.0.3\", weight = 0 }, { address = \"10.0.0.4\", backup = true }, \
             { address = \"10.0.0.5\", backup = true, weight = 2 }]",
            "[proxy]\nretries = 2\nbalance = \"roundrobin\"\nmaxconn_per_server = 64\n\
             [health]\ninter = \"3s\"\nrise = 3\nfall = 0\ntimeout = \"1500ms\"\n\
             [ports.9292]\nbalance = \"source\"\nmaxconn_per_server = 8\nqueue = \"2m\"\n\
             [ports.5000]\nhealth_path = \"/v3\"\n\
             [ports.8774]\nbackend = \"10.0.1.1:18774\"\n",
        )
    }

    #[test]
    fn local_backends_list_every_server_with_checks_weights_and_backups() {
        let (router, config) = with_servers();
        for mode in [HaproxyMode::Lua, HaproxyMode::Native] {
            let out = generate(&router, &config, &HaproxyOptions::new(mode));
            // `fall = 0` counts as 1 (HAProxy refuses 0); 3 non-backup servers: 2 retries.
            // Port 9292's servers take its `maxconn_per_server`, but for the one with its own.
            let servers = |name: &str, port: u16| {
                vec![
                    format!(
                        "server {name}_1 10.0.0.1:{port} check inter 3000ms rise 3 fall 1 maxconn 8"
                    ),
                    format!(
                        "server {name}_2 10.0.0.2:{port} check inter 3000ms rise 3 fall 1 weight 3 maxconn 16"
                    ),
                    format!(
                        "server {name}_3 10.0.0.3:{port} check inter 3000ms rise 3 fall 1 weight 0 maxconn 8"
                    ),
                    format!(
                        "server {name}_4 10.0.0.4:{port} check inter 3000ms rise 3 fall 1 backup maxconn 8"
                    ),
                    format!(
                        "server {name}_5 10.0.0.5:{port} check inter 3000ms rise 3 fall 1 weight 2 backup maxconn 8"
                    ),
                ]
            };
            let mut want = vec![
                "timeout connect 10000ms".to_owned(),
                "timeout server 60000ms".to_owned(),
                "timeout queue 120000ms".to_owned(),
                "balance source".to_owned(),
                "retries 2".to_owned(),
                "option redispatch 1".to_owned(),
                "option allbackups".to_owned(),
                "timeout check 1500ms".to_owned(),
            ];
            want.extend(servers("RegionOne_image_public", 9292));
            if mode == HaproxyMode::Native {
                want.insert(
                    3,
                    "http-request replace-header X-Subject-Token '^(.*?)!SCOPE!.*$' '\\1'"
                        .to_owned(),
                );
            }
            assert_eq!(
                section(&out.cfg, "backend RegionOne_image_public"),
                want,
                "{mode:?}"
            );

            // The transparent fallback balances over the same servers the same way.
            let listen = section(&out.cfg, "listen RegionOne_9292");
            let mut want: Vec<String> = [
                "balance source",
                "retries 2",
                "option redispatch 1",
                "option allbackups",
                "timeout check 1500ms",
            ]
            .map(str::to_owned)
            .to_vec();
            want.extend(servers("RegionOne_transparent_9292", 9292));
            assert_eq!(&listen[listen.len() - want.len()..], want, "{mode:?}");
            assert!(listen.contains(&"timeout queue 120000ms"), "{listen:?}");
            assert!(!listen.iter().any(|l| l.contains("httpchk")), "{listen:?}");

            // The HTTP check of port 5000 is the request scope-router's checker sends.
            let keystone = section(&out.cfg, "backend RegionOne_identity_public");
            for line in [
                "balance roundrobin",
                "option httpchk GET /v3 HTTP/1.1",
                "http-check send hdr Host 192.168.142.244:5000",
                "http-check expect status 200-399",
                "server RegionOne_identity_public_1 10.0.0.1:5000 check inter 3000ms rise 3 fall 1 maxconn 64",
                "server RegionOne_identity_public_2 10.0.0.2:5000 check inter 3000ms rise 3 fall 1 weight 3 maxconn 16",
                "timeout queue 60000ms",
            ] {
                assert!(keystone.contains(&line), "{mode:?}: {line} in {keystone:?}");
            }

            // One server: nothing to redispatch to, so no retry (scope-router tries it once).
            let nova = section(&out.cfg, "backend RegionOne_compute_public");
            assert!(nova.contains(&"retries 0"), "{nova:?}");
            assert!(!nova.contains(&"option allbackups"), "{nova:?}");
            assert_eq!(
                nova.last(),
                Some(
                    &"server RegionOne_compute_public_1 10.0.1.1:18774 check inter 3000ms rise 3 fall 1 maxconn 64"
                )
            );
        }
    }

    #[test]
    fn remote_backends_get_one_tcp_checked_server() {
        let (router, config) = with_servers();
        let out = generate(&router, &config, &HaproxyOptions::new(HaproxyMode::Native));
        // Port 5000's HTTP check is for the local servers; another region's frontend gets
        // the `[health]` timing over TCP, and no `maxconn`: its router limits its own servers.
        let remote = section(&out.cfg, "backend RegionTwo_identity_public");
        assert_eq!(
            remote[3..],
            [
                "http-request set-header Host \"192.168.144.244:5000\"",
                "balance roundrobin",
                "retries 0",
                "option redispatch 1",
                "timeout check 1500ms",
                "server RegionTwo_identity_public_1 192.168.144.244:5000 check inter 3000ms rise 3 fall 1",
            ]
        );
        // Server names are unique within every section, and valid identifiers.
        let mut seen: Vec<&str> = Vec::new();
        for line in out.cfg.lines() {
            if !line.starts_with("    ") {
                seen.clear();
            } else if let Some(rest) = line.trim().strip_prefix("server ") {
                let name = rest.split(' ').next().unwrap();
                assert!(!seen.contains(&name), "duplicate server {name}");
                assert_eq!(ident(name), name);
                seen.push(name);
            }
        }
    }

    #[test]
    fn passthrough_listeners_are_plain_listen_blocks() {
        let (router, config) = with_mariadb();
        let (_, with_default) = seed(
            "RegionOne",
            &format!("{}[proxy]\nmaxconn_per_server = 100\n", mariadb_toml()),
        );
        assert_eq!(config.passthrough, with_default.passthrough);
        let out = generate(&router, &config, &HaproxyOptions::new(HaproxyMode::Native));
        let db = section(&out.cfg, "listen mariadb");
        assert!(db.contains(&"mode tcp"));
        assert!(
            !db.iter()
                .any(|l| l.contains("forwardfor") || l.contains("http-request"))
        );
        // `[proxy] maxconn_per_server` is for scoped listeners: the database pool is not
        // limited unless its passthrough says so.
        assert_eq!(db.last(), Some(&"server mariadb 192.168.142.245:3306"));
        let web = section(&out.cfg, "listen horizon");
        assert!(web.contains(&"mode http"));
        assert!(web.contains(&"option forwardfor"));
        assert!(web.contains(&"timeout queue 30000ms"), "{web:?}");
        assert_eq!(
            web.last(),
            Some(&"server horizon 192.168.142.245:80 maxconn 32")
        );
    }

    #[test]
    fn native_variant_reads_scope_with_json_query_and_has_no_lua() {
        let (router, config) = seed("RegionOne", "[scope.defaults]\nidentity = \"RegionTwo\"\n");
        let out = generate(&router, &config, &HaproxyOptions::new(HaproxyMode::Native));
        assert_eq!(out.lua, None);
        assert!(!out.cfg.contains("lua"));
        let compute = section(&out.cfg, "listen RegionOne_8774");
        assert!(compute.contains(
            &"http-request set-var(txn.region) var(txn.scope),json_query(\"\\$.compute\") if { var(txn.route) -m int 0 }"
        ));
        assert!(compute.contains(
            &"use_backend RegionTwo_compute_public if { var(txn.route) -m int 0 } { var(txn.region) -m str RegionTwo }"
        ));
        // public/internal/admin share /v2.1/: only the first (public) can match.
        assert!(!compute.iter().any(|l| l.contains("compute_internal")));
        // [scope.defaults] decides the identity region when the scope does not.
        assert!(compute.contains(
            &"http-request set-var(txn.identity) str(RegionTwo) if { var(txn.route) -m found } !{ var(txn.identity) -m found }"
        ));
        // Local backends lose the scope from the tokens ...
        let keystone = section(&out.cfg, "backend RegionOne_identity_public");
        assert!(
            keystone
                .iter()
                .any(|l| l.starts_with("http-request replace-header X-Auth-Token"))
        );
        let nova = section(&out.cfg, "backend RegionOne_compute_public");
        assert!(!nova.iter().any(|l| l.contains("X-Auth-Token")));
        assert!(
            nova.iter()
                .any(|l| l.starts_with("http-request replace-header X-Subject-Token"))
        );
        // ... remote regions' routers get it whole, to reach the same decision.
        for remote in [
            "backend RegionTwo_identity_public",
            "backend RegionTwo_compute_public",
        ] {
            let section = section(&out.cfg, remote);
            assert!(
                !section.iter().any(|l| l.contains("replace-header")),
                "{remote}: {section:?}"
            );
        }
    }

    #[test]
    fn path_rewrites_join_prefixes_like_the_router() {
        let cases = [
            ("/v2.1/", "/v2.1/", None),
            (
                "/v2.1/",
                "/compute/v2.1/",
                Some(("^/v2\\.1/(.*)$", "/compute/v2.1/\\1")),
            ),
            (
                "/v2.1/",
                "/compute",
                Some(("^/v2\\.1/(.*)$", "/compute/\\1")),
            ),
            ("/v2.1/", "", Some(("^/v2\\.1/(.*)$", "/\\1"))),
            ("/identity", "", Some(("^/identity/?(.*)$", "/\\1"))),
            ("/identity", "/id/", Some(("^/identity/?(.*)$", "/id/\\1"))),
            ("", "/identity", Some(("^(.*)$", "/identity\\1"))),
            ("/a%b", "/c%d", Some(("^/a%b(.*)$", "/c%%d\\1"))),
        ];
        for (from, to, want) in cases {
            let got = path_rewrite(from, to);
            let want = want.map(|(a, b)| (a.to_owned(), b.to_owned()));
            assert_eq!(got, want, "{from} -> {to}");
        }
    }

    #[test]
    fn emit_writes_both_files_and_refuses_lua_on_stdout() {
        let (_, config) = seed("RegionOne", "");
        assert!(matches!(
            emit(&config, HaproxyMode::Lua, None),
            Err(HaproxyError::LuaNeedsOut)
        ));
        assert!(
            emit(&config, HaproxyMode::Native, None)
                .unwrap()
                .starts_with("# Generated")
        );
        let dir = tempfile::tempdir().unwrap();
        let summary = emit(&config, HaproxyMode::Lua, Some(dir.path())).unwrap();
        assert!(summary.contains("haproxy -c -f"));
        let cfg = std::fs::read_to_string(dir.path().join("haproxy.cfg")).unwrap();
        let lua = dir.path().join("scope-router.lua");
        assert!(cfg.contains(&format!("lua-load \"{}\"", lua.display())));
        assert!(
            std::fs::read_to_string(lua)
                .unwrap()
                .contains("local T = {")
        );
    }

    /// RegionOne terminating TLS on identity (its own certificate for port 5000, an SNI
    /// one besides) and reaching RegionTwo over TLS: identity by DNS name, compute by IP;
    /// compute's local servers over TLS with their own CA. Keys beside (`<crt>.key`), in
    /// the certificate file, and elsewhere (a bundle).
    fn with_tls(profile: &str) -> (Router, Config, crate::tls::testing::Pki) {
        let pki = crate::tls::testing::Pki::new("haproxy");
        let default = pki.leaf("api", &["192.0.2.10"], 30);
        // `<crt>.key`: HAProxy's own naming.
        let beside = pki.dir.path().join("api.pem.key");
        std::fs::rename(&default.key, &beside).unwrap();
        pki.leaf("sni", &["api.one.example"], 30);
        let port = pki.leaf("identity", &["192.0.2.10"], 30);
        pki.write(
            "combined.pem",
            &(std::fs::read_to_string(&port.certificate).unwrap()
                + &std::fs::read_to_string(&port.key).unwrap()),
        );
        pki.write(
            "catalog.json",
            r#"[
              {"Region": "RegionOne", "Service Type": "identity", "Interface": "public", "URL": "https://192.0.2.10:5000"},
              {"Region": "RegionOne", "Service Type": "compute", "Interface": "public", "URL": "http://192.0.2.10:8774/v2.1/%(tenant_id)s"},
              {"Region": "RegionTwo", "Service Type": "identity", "Interface": "public", "URL": "https://api.two.example:5000"},
              {"Region": "RegionTwo", "Service Type": "compute", "Interface": "public", "URL": "https://192.0.2.20:8774/v2.1/%(tenant_id)s"}
            ]"#,
        );
        let text = format!(
            "region = \"RegionOne\"\ncatalog = [\"catalog.json\"]\nbackend = \"192.0.2.11\"\n\
             [tls]\ncertificate = \"api.pem\"\nkey = \"api.pem.key\"\nca_file = \"{ca}\"\n\
             profile = \"{profile}\"\n[[tls.sni]]\ncertificate = \"sni.pem\"\nkey = \"sni.key\"\n\
             [ports.5000]\ncertificate = \"combined.pem\"\nkey = \"combined.pem\"\n\
             [ports.8774]\nbackend_tls = true\nca_file = \"backends-ca.pem\"\n\
             [[redirect]]\nbind = \"192.0.2.10:80\"\nhttps_port = 5000\n\
             exempt = [\"/.well-known/acme-challenge/\"]\nexempt_backend = \"127.0.0.1:8080\"\n\
             [[redirect]]\nbind = \"192.0.2.10:81\"\n",
            ca = pki.ca.cert_path.display(),
        );
        std::fs::copy(&pki.ca.cert_path, pki.dir.path().join("backends-ca.pem")).unwrap();
        let config = Config::from_str(&text, &pki.dir.path().join("router.toml")).unwrap();
        (Router::from_config(&config).unwrap(), config, pki)
    }

    #[test]
    fn tls_listeners_bind_ssl_with_their_certificates_and_set_forwarded_proto() {
        let (router, config, pki) = with_tls("modern");
        let dir = pki.dir.path().display().to_string();
        for mode in [HaproxyMode::Lua, HaproxyMode::Native] {
            let out = generate(&router, &config, &HaproxyOptions::new(mode));
            let identity = section(&out.cfg, "listen RegionOne_5000");
            // The port's own certificate (key inside) first, then the SNI one, bundled.
            let bind = format!(
                "bind 192.0.2.10:5000 ssl crt {dir}/combined.pem \
                 crt /etc/haproxy/scope-router-tls/1-sni.pem alpn http/1.1"
            );
            assert_eq!(identity[0], bind, "{mode:?}");
            assert!(
                identity.contains(&"http-request set-header X-Forwarded-Proto https if { ssl_fc }")
            );
            assert_eq!(
                out.bundles,
                vec![Bundle {
                    path: "/etc/haproxy/scope-router-tls/1-sni.pem".into(),
                    files: CertificateFiles {
                        certificate: pki.dir.path().join("sni.pem"),
                        key: pki.dir.path().join("sni.key"),
                    },
                }]
            );
            // Cleartext stays cleartext.
            let compute = section(&out.cfg, "listen RegionOne_8774");
            assert_eq!(compute[0], "bind 192.0.2.10:8774");
            assert!(!compute.iter().any(|l| l.contains("X-Forwarded-Proto")));
            let global = section(&out.cfg, "global");
            for line in [
                "ssl-default-bind-options ssl-min-ver TLSv1.3",
                "ssl-default-server-options ssl-min-ver TLSv1.3",
                "ssl-default-bind-ciphersuites TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256",
            ] {
                assert!(global.contains(&line), "{line} in {global:?}");
            }
            assert!(
                !global.iter().any(|l| l.contains("-ciphers ")),
                "{global:?}"
            );
        }
        // `<crt>.key` is found by HAProxy itself: the default certificate is named as is.
        let (_, mut config, keep) = with_tls("modern");
        config.ports.get_mut(&5000).unwrap().certificate = None;
        config.ports.get_mut(&5000).unwrap().key = None;
        let router = Router::from_config(&config).unwrap();
        let out = generate(&router, &config, &HaproxyOptions::new(HaproxyMode::Native));
        let identity = section(&out.cfg, "listen RegionOne_5000");
        assert!(
            identity[0].starts_with(&format!(
                "bind 192.0.2.10:5000 ssl crt {}/api.pem crt",
                keep.dir.path().display()
            )),
            "{identity:?}"
        );
    }

    #[test]
    fn intermediate_allows_tls12_with_rustls_ciphers_and_cleartext_configs_have_no_tls() {
        let (router, config, _pki) = with_tls("intermediate");
        let out = generate(&router, &config, &HaproxyOptions::new(HaproxyMode::Native));
        let global = section(&out.cfg, "global");
        assert!(global.contains(&"ssl-default-bind-options ssl-min-ver TLSv1.2"));
        assert!(global.iter().any(|l| l.starts_with(
            "ssl-default-server-ciphers ECDHE-ECDSA-AES256-GCM-SHA384:ECDHE-ECDSA-AES128-GCM-SHA256:"
        )));
        let (router, config) = with_mariadb();
        let out = generate(&router, &config, &HaproxyOptions::new(HaproxyMode::Lua));
        assert!(!out.cfg.contains("ssl"), "{}", out.cfg);
        assert!(out.bundles.is_empty());
    }

    #[test]
    fn tls_servers_are_verified_by_name_or_chain() {
        let (router, config, pki) = with_tls("modern");
        let ca = pki.ca.cert_path.display().to_string();
        let backends_ca = pki.dir.path().join("backends-ca.pem").display().to_string();
        let out = generate(&router, &config, &HaproxyOptions::new(HaproxyMode::Native));
        // A DNS name: SNI, the name checked on requests and checks.
        let remote = section(&out.cfg, "backend RegionTwo_identity_public");
        assert_eq!(
            remote.last().unwrap(),
            &format!(
                "server RegionTwo_identity_public_1 api.two.example:5000 check inter 2000ms \
                 rise 2 fall 5 ssl verify required ca-file {ca} alpn http/1.1 \
                 sni str(api.two.example) check-sni api.two.example verifyhost \
                 api.two.example check-ssl"
            )
        );
        // An IP address: the chain only (HAProxy 2.6 cannot match IP SANs).
        let remote = section(&out.cfg, "backend RegionTwo_compute_public");
        assert_eq!(
            remote.last().unwrap(),
            &format!(
                "server RegionTwo_compute_public_1 192.0.2.20:8774 check inter 2000ms rise 2 \
                 fall 5 ssl verify required ca-file {ca} alpn http/1.1 check-ssl"
            )
        );
        // backend_tls: the port's own CA, for the local backend and the fallback alike.
        let local = section(&out.cfg, "backend RegionOne_compute_public");
        let fallback = section(&out.cfg, "listen RegionOne_8774");
        for (lines, name) in [
            (&local, "RegionOne_compute_public_1"),
            (&fallback, "RegionOne_transparent_8774_1"),
        ] {
            assert_eq!(
                lines.last().unwrap(),
                &format!(
                    "server {name} 192.0.2.11:8774 check inter 2000ms rise 2 fall 5 ssl verify \
                     required ca-file {backends_ca} alpn http/1.1 check-ssl"
                )
            );
        }
        // Identity's local servers are cleartext.
        let local = section(&out.cfg, "backend RegionOne_identity_public");
        assert!(!local.last().unwrap().contains("ssl"), "{local:?}");
        // Without ca_file: the system store.
        let (_, mut config, _pki) = with_tls("modern");
        config.tls.ca_file = None;
        config.ports.get_mut(&8774).unwrap().ca_file = None;
        if let Ok(router) = Router::from_config(&config) {
            let out = generate(&router, &config, &HaproxyOptions::new(HaproxyMode::Native));
            let remote = section(&out.cfg, "backend RegionTwo_compute_public");
            assert!(
                remote.last().unwrap().contains("ca-file @system-ca"),
                "{remote:?}"
            );
        }
    }

    #[test]
    fn redirect_listeners_answer_301_to_https_and_relay_exempt_paths() {
        let (router, config, _pki) = with_tls("modern");
        let out = generate(&router, &config, &HaproxyOptions::new(HaproxyMode::Native));
        assert_eq!(
            section(&out.cfg, "frontend redirect_192.0.2.10:80"),
            [
                "bind 192.0.2.10:80",
                "mode http",
                "acl exempt path_beg /.well-known/acme-challenge/",
                "http-request deny deny_status 400 if !exempt !{ req.hdr(host) -m found }",
                "http-request redirect location https://%[req.hdr(host),regsub(:[0-9]+$,)]:5000%[pathq] code 301 unless exempt",
                "use_backend redirect_192.0.2.10:80_exempt if exempt",
            ]
        );
        assert_eq!(
            section(&out.cfg, "backend redirect_192.0.2.10:80_exempt"),
            ["server exempt 127.0.0.1:8080"]
        );
        // 443 is the URL's default port: left out.
        assert_eq!(
            section(&out.cfg, "frontend redirect_192.0.2.10:81")[3],
            "http-request redirect location https://%[req.hdr(host),regsub(:[0-9]+$,)]%[pathq] code 301"
        );
    }

    #[test]
    fn emit_bundles_keys_haproxy_cannot_find_or_says_how() {
        let (_, config, pki) = with_tls("modern");
        let err = emit(&config, HaproxyMode::Native, None).unwrap_err();
        assert!(
            matches!(&err, HaproxyError::KeyApart { key, .. } if key.ends_with("sni.key")),
            "{err}"
        );
        assert!(err.to_string().contains("--out"), "{err}");
        let out = pki.dir.path().join("out");
        let summary = emit(&config, HaproxyMode::Native, Some(&out)).unwrap();
        assert!(summary.contains("1 certificate bundle"), "{summary}");
        let bundle = out.join("tls/1-sni.pem");
        let text = std::fs::read_to_string(&bundle).unwrap();
        let chain = std::fs::read_to_string(pki.dir.path().join("sni.pem")).unwrap();
        let key = std::fs::read_to_string(pki.dir.path().join("sni.key")).unwrap();
        assert_eq!(text, format!("{chain}{key}"));
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&bundle).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let cfg = std::fs::read_to_string(out.join("haproxy.cfg")).unwrap();
        assert!(cfg.contains(&format!("crt {}", bundle.display())), "{cfg}");
    }

    #[test]
    fn words_are_escaped_for_haproxy_and_lua() {
        assert_eq!(quote("a \"b\" $c\\"), "\"a \\\"b\\\" \\$c\\\\\"");
        assert_eq!(lua_str("a\"b\\\n"), "\"a\\\"b\\\\\\10\"");
        assert_eq!(ident("Region One/x"), "Region_One_x");
        assert_eq!(word("/healthcheck?a=b"), "/healthcheck?a=b");
        assert_eq!(word("/a b#c"), "\"/a b#c\"");
        assert_eq!(word(""), "\"\"");
    }
}
