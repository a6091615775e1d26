//! Human-readable output of `scope-router check` (routing table) and `scope-router explain`.
//!
//! `explain` is health-aware: with the running router's published state
//! ([`crate::health_state`]) it says which server would serve the request now, or that the
//! router would answer 503 at once; without it, it says the health is unknown.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use http::header::{HOST, HeaderName, HeaderValue};

use crate::catalog::split_host_port;
use crate::config::{Config, PassthroughMode, ServerSpec, Timeouts};
use crate::decision::{PlanKind, RequestHead};
use crate::health_state::{self, HealthFile, ServerIndex, Unavailable};
use crate::routing::Router;
use crate::tls::TlsHop;

/// The client address `explain` pretends the request came from (TEST-NET-3).
pub const EXAMPLE_PEER: SocketAddr =
    SocketAddr::new(IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 10)), 40000);

/// Why `explain` could not build the hypothetical request.
#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("invalid method `{0}`; use e.g. GET, POST, PUT, DELETE")]
    Method(String),
    #[error(
        "invalid URL `{url}`: {reason}; give an absolute URL like \
         http://192.168.142.244:8774/v2.1/servers"
    )]
    Url { url: String, reason: String },
    #[error("invalid header `{name}: {value}`; write headers as `Name: value` in visible ASCII")]
    Header { name: String, value: String },
}

fn fmt_timeouts(t: &Timeouts) -> String {
    format!(
        "request_header {}, connect {}, idle {}, response_head {}, request_body {}, queue {}",
        humantime::format_duration(t.request_header),
        humantime::format_duration(t.connect),
        humantime::format_duration(t.idle),
        humantime::format_duration(t.response_head),
        humantime::format_duration(t.request_body),
        humantime::format_duration(t.queue)
    )
}

/// `10.0.0.1:8774 (backup, weight 2, maxconn 64)`: a server as `check` lists it, its
/// notes only where they differ from the defaults.
fn fmt_server(s: &ServerSpec<SocketAddr>) -> String {
    let mut notes = Vec::new();
    if s.backup {
        notes.push("backup".to_owned());
    }
    if s.weight != 1 {
        notes.push(format!("weight {}", s.weight));
    }
    if let Some(max) = s.maxconn.filter(|m| *m > 0) {
        notes.push(format!("maxconn {max}"));
    }
    if notes.is_empty() {
        s.address.to_string()
    } else {
        format!("{} ({})", s.address, notes.join(", "))
    }
}

/// ` over TLS (name region2.example, trusting /etc/ca.pem)`: how a hop is reached, empty
/// for cleartext.
fn fmt_hop(hop: Option<&TlsHop>) -> String {
    hop.map(|h| {
        format!(
            " over TLS (certificate verified for {}, trusting {})",
            h.name.to_str(),
            h.trust
        )
    })
    .unwrap_or_default()
}

/// The routing table: every listener → service type/interface → backend per region → address,
/// then the passthrough listeners.
pub fn check(router: &Router, config: &Config) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "config:  {}", config.path.display());
    let _ = writeln!(out, "region:  {}", router.region());
    for c in &config.catalog {
        let _ = writeln!(out, "catalog: {}", c.display());
    }
    let regions: Vec<&str> = router.regions().iter().map(|r| &**r).collect();
    let _ = writeln!(out, "regions: {}", regions.join(", "));
    let _ = write!(
        out,
        "scope defaults: every service type -> {}",
        router.region()
    );
    for (st, r) in &config.scope_defaults {
        let _ = write!(out, ", {st} -> {r}");
    }
    out.push('\n');
    match &config.vip {
        Some(v) => {
            let managed = if v.manage { "managed" } else { "not managed" };
            let _ = writeln!(out, "vip:     {} on {} ({managed})", v.address, v.interface);
            // Owning an address no scoped listener uses is almost always a typo.
            if !router
                .listeners()
                .iter()
                .any(|l| l.spec.addr.ip() == v.address)
            {
                let _ = writeln!(
                    out,
                    "warning: [vip] address {} is the host of no scoped listener; the catalog's \
                     {} URLs use other addresses",
                    v.address,
                    router.region()
                );
            }
        }
        None => {
            let _ = writeln!(
                out,
                "vip:     none (no [vip] section: the address is managed elsewhere)"
            );
        }
    }
    if let (Some(vrrp), Some(vip)) = (&config.vrrp, &config.vip) {
        let to = if vrrp.peers.is_empty() {
            format!("multicast {}", crate::vrrp::MULTICAST_GROUP)
        } else {
            let peers: Vec<String> = vrrp.peers.iter().map(ToString::to_string).collect();
            format!("unicast to {}", peers.join(", "))
        };
        let auth = if vrrp.auth_pass.is_some() {
            ", auth PASS"
        } else {
            ""
        };
        let preempt = if vrrp.preempt { "preempt" } else { "nopreempt" };
        let _ = writeln!(
            out,
            "vrrp:    v{} vrid {} priority {} every {} on {} ({to}{auth}, {preempt}, own health: out after {} failed checks, back after {} passed)",
            vrrp.version,
            vrrp.vrid,
            vrrp.priority,
            humantime::format_duration(vrrp.advert_int),
            vrrp.interface(vip),
            vrrp.track_fall,
            vrrp.track_rise,
        );
        for note in vrrp.notes() {
            let _ = writeln!(out, "note: {note}");
        }
    }
    let deny: Vec<String> = config.ebpf.deny.iter().map(ToString::to_string).collect();
    let _ = writeln!(
        out,
        "ebpf:    mode {}, pins {}, XDP on {}, deny [{}]",
        config.ebpf.mode,
        config.ebpf.pin_path.display(),
        config.ebpf.interface(config.vip.as_ref()),
        deny.join(", ")
    );
    let admin = &config.admin;
    if admin.bind.is_empty() {
        let _ = writeln!(out, "admin:   off ([admin] bind = [])");
    } else {
        let binds: Vec<String> = admin.bind.iter().map(ToString::to_string).collect();
        let metrics = if admin.metrics { "on" } else { "off" };
        let _ = write!(
            out,
            "admin:   {} (/metrics, /status, /healthz, status page /; request metrics {metrics})",
            binds.join(", ")
        );
        // Anyone who reaches the API can then read the status page: say so. A wildcard
        // address listens on the VIP too.
        if let Some(v) = &config.vip
            && admin
                .bind
                .iter()
                .any(|a| a.ip() == v.address || a.ip().is_unspecified())
        {
            let _ = write!(out, "; on the VIP, reachable by every API client");
        }
        out.push('\n');
    }
    let log = match config.log.format {
        crate::access_log::LogFormat::Text => "text",
        crate::access_log::LogFormat::Json => "json",
    };
    let _ = writeln!(out, "log:     {log} lines on stderr");
    if let Some(user) = &config.process.user {
        let _ = writeln!(
            out,
            "process: runs as {user} after setup, keeping CAP_NET_ADMIN, CAP_NET_RAW, \
             CAP_NET_BIND_SERVICE"
        );
    }

    let _ = writeln!(out, "\nscoped listeners ({}):", router.listeners().len());
    for listener in router.listeners() {
        let (l, routes) = (&listener.spec, listener.routes());
        let _ = writeln!(
            out,
            "  {}  (local backend {}; {})",
            l.addr,
            l.local_backend,
            fmt_timeouts(&l.timeouts)
        );
        let tls = match (listener.tls(), config.port_certificate(l.addr.port())) {
            (Some(_), Some(files)) => format!(
                "terminated here (https:// in the catalog): certificate {}, profile {}",
                files.certificate.display(),
                router.tls().profile().as_str()
            ),
            (Some(_), None) => "terminated here (https:// in the catalog)".to_owned(),
            (None, _) => "none (http:// in the catalog)".to_owned(),
        };
        let _ = writeln!(out, "    tls: {tls}");
        let servers: Vec<String> = config
            .port_backend(l.addr.port())
            .iter()
            .map(fmt_server)
            .collect();
        // Every local server of a port shares its `backend_tls` and trust; each is
        // verified for its own address.
        let local_tls = listener
            .local()
            .servers()
            .iter()
            .find_map(|s| s.tls.as_deref())
            .map(|h| {
                format!(
                    "; over TLS (backend_tls: each verified for its address, trusting {})",
                    h.trust
                )
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "    servers ({}): {}{local_tls}",
            health_state::balance_name(config.port_balance(l.addr.port())),
            servers.join(", ")
        );
        for (n, route) in routes.iter().enumerate() {
            let shown = if route.path.is_empty() {
                "/"
            } else {
                &route.path
            };
            // Equal URLs tie; the first in catalog order wins, the others only show up here.
            let shadow = routes[..n]
                .iter()
                .find(|r| r.path == route.path)
                .map(|r| {
                    format!(
                        "  (same URL as {}/{}, which wins)",
                        r.service_type, r.interface
                    )
                })
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "    {}/{}  path {shown}{shadow}",
                route.service_type, route.interface
            );
            for t in &route.targets {
                let (addr, note) = match &t.remote {
                    None => (format!("{}", t.upstream), " (local)".to_owned()),
                    Some(remote) => {
                        let hop = t.balancer.servers().first().and_then(|s| s.tls.as_deref());
                        (format!("{}{}", t.upstream, remote.path), fmt_hop(hop))
                    }
                };
                let _ = writeln!(out, "      {} -> {addr}{note}", t.backend_name);
            }
        }
        let _ = writeln!(
            out,
            "    (no match)  {} -> {} (forwarded unchanged)",
            listener.transparent_name(),
            listener.local_upstream()
        );
    }

    let _ = writeln!(
        out,
        "\npassthrough listeners ({}):",
        config.passthrough.len()
    );
    for p in &config.passthrough {
        let mode = match p.mode {
            PassthroughMode::Tcp => "tcp",
            PassthroughMode::Http => "http",
        };
        let _ = writeln!(
            out,
            "  {}  {mode}  {} -> {}  ({})",
            p.name,
            p.bind,
            p.backend,
            fmt_timeouts(&p.timeouts)
        );
        let servers: Vec<String> = p.servers.iter().map(fmt_server).collect();
        let _ = writeln!(
            out,
            "    servers ({}): {}",
            health_state::balance_name(p.balance),
            servers.join(", ")
        );
    }
    if !config.redirect.is_empty() {
        let _ = writeln!(out, "\nredirect listeners ({}):", config.redirect.len());
    }
    for r in &config.redirect {
        let port = if r.https_port == 443 {
            String::new()
        } else {
            format!(":{}", r.https_port)
        };
        let _ = write!(out, "  {}  301 to https://<host>{port}<path>", r.bind);
        if let Some(backend) = r.exempt_backend {
            let _ = write!(out, ", except {} -> {backend}", r.exempt.join(" "));
        }
        out.push('\n');
    }
    out
}

/// Explains how the router would handle `METHOD url` with `headers` sent by
/// [`EXAMPLE_PEER`], with the servers' health from the running router's state (`health`,
/// as [`health_state::read`] returns it). A request the router would refuse is explained
/// too (`Ok`); `Err` means the hypothetical request itself could not be built.
pub fn explain(
    router: &Router,
    method: &str,
    url: &str,
    headers: &[(String, String)],
    health: &Result<HealthFile, Unavailable>,
) -> Result<String, ExplainError> {
    let method = http::Method::from_bytes(method.as_bytes())
        .map_err(|_| ExplainError::Method(method.to_owned()))?;
    let url_err = |reason: &str| ExplainError::Url {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = url.parse().map_err(|_| url_err("not a URL"))?;
    let default_port = match uri.scheme_str() {
        Some("http") => 80,
        Some("https") => 443,
        _ => return Err(url_err("the scheme must be http:// or https://")),
    };
    let authority = uri.authority().ok_or_else(|| url_err("no host"))?;
    let (host, port) =
        split_host_port(authority.as_str()).map_err(|_| url_err("bad host or port"))?;
    let ip: IpAddr = host
        .parse()
        .map_err(|_| url_err("the host must be an IP address (the VIP the client connects to)"))?;
    let local = SocketAddr::new(ip, port.unwrap_or(default_port));

    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        let bad = || ExplainError::Header {
            name: name.clone(),
            value: value.clone(),
        };
        let n = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| bad())?;
        let v = HeaderValue::from_str(value.trim()).map_err(|_| bad())?;
        map.append(n, v);
    }
    if !map.contains_key(HOST) {
        let v = HeaderValue::from_str(authority.as_str()).map_err(|_| url_err("bad host"))?;
        map.insert(HOST, v);
    }
    let origin: http::Uri = uri
        .path_and_query()
        .map_or("/", |pq| pq.as_str())
        .parse()
        .map_err(|_| url_err("bad path"))?;

    let mut out = String::new();
    let _ = writeln!(out, "request:   {method} {url}");
    let _ = writeln!(out, "client:    {} (example)", EXAMPLE_PEER.ip());
    let terminates = router
        .listeners()
        .iter()
        .any(|l| l.spec.addr == local && l.tls().is_some());
    let listener = match router.listener(local) {
        Some(l) if terminates => format!(
            "{} (scoped, terminates TLS, local backend {})",
            l.addr, l.local_backend
        ),
        Some(l) => format!("{} (scoped, local backend {})", l.addr, l.local_backend),
        None => format!("{local} (no scoped listener; only the Host header can match)"),
    };
    let _ = writeln!(out, "listener:  {listener}");

    let head = RequestHead {
        local,
        peer: EXAMPLE_PEER,
        method: &method,
        uri: &origin,
        headers: &map,
    };
    let plan = match router.decide(&head) {
        Ok(plan) => choose_alternative(&mut out, router, plan, health),
        Err(problem) => {
            let _ = writeln!(
                out,
                "answer:    {} {} (not forwarded)",
                problem.status.as_u16(),
                problem.title
            );
            let _ = writeln!(
                out,
                "body:      {}",
                String::from_utf8_lossy(&problem.to_json())
            );
            return Ok(out);
        }
    };
    match &plan.kind {
        PlanKind::Scoped(s) => {
            let _ = writeln!(out, "service:   {}/{}", s.service_type, s.interface);
        }
        PlanKind::Transparent => {
            let _ = writeln!(
                out,
                "service:   none matched: transparent fallback, forwarded unchanged"
            );
        }
    }
    let _ = writeln!(
        out,
        "scope:     {}",
        plan.scope_source()
            .map_or("none (not scoped)", |s| s.as_str())
    );
    let _ = writeln!(
        out,
        "hop:       {}",
        match &plan.kind {
            PlanKind::Transparent => "local backend, unchanged",
            PlanKind::Scoped(_) if plan.is_remote() =>
                "another region's router (the scope travels on, tokens unstripped)",
            PlanKind::Scoped(_) => "local backend (scope cut off the tokens)",
        }
    );
    let _ = writeln!(out, "region:    {}", plan.region);
    let _ = writeln!(out, "backend:   {}", plan.backend_name);
    let _ = writeln!(out, "upstream:  {}", plan.upstream());
    explain_servers(&mut out, router, &plan, health);
    let _ = writeln!(out, "timeouts:  {}", fmt_timeouts(&plan.timeouts));

    let mut parts = match http::Request::builder()
        .method(method.clone())
        .uri(origin.clone())
        .body(())
    {
        Ok(req) => req.into_parts().0,
        Err(_) => return Err(url_err("bad path")),
    };
    parts.headers = map;
    plan.apply_to(EXAMPLE_PEER, &mut parts);
    let _ = writeln!(out, "forwarded:");
    let _ = writeln!(out, "  {} {} HTTP/1.1", parts.method, parts.uri);
    for (name, value) in &parts.headers {
        let _ = writeln!(
            out,
            "  {name}: {}",
            String::from_utf8_lossy(value.as_bytes())
        );
    }
    Ok(out)
}

/// For an `A|B` scope, the `alternatives:` line (each alternative and whether it has an
/// up server by the running router's view) and the alternative that serves now, which the
/// rest of `explain` describes; any other plan unchanged.
fn choose_alternative(
    out: &mut String,
    router: &Router,
    plan: crate::decision::Plan,
    health: &Result<HealthFile, Unavailable>,
) -> crate::decision::Plan {
    if plan.fallback.is_none() {
        return plan;
    }
    if let Ok(file) = health {
        ServerIndex::new(router).mirror(file);
    }
    let mut notes = Vec::new();
    let mut current = plan;
    let chosen = loop {
        let up = current.balancer.any_up();
        match current.fallback.take() {
            Some(next) if !up => {
                notes.push(format!("{} (every server down: skipped)", current.region));
                current = *next;
            }
            rest => {
                let note = if up {
                    "serves now"
                } else {
                    "every server down"
                };
                notes.push(format!("{} ({note})", current.region));
                let mut later = rest.as_deref();
                while let Some(p) = later {
                    notes.push(format!("{} (not needed)", p.region));
                    later = p.fallback.as_deref();
                }
                current.fallback = rest;
                break current;
            }
        }
    };
    let _ = writeln!(out, "alternatives: {}", notes.join(" -> "));
    chosen
}

/// The `health:`, `servers:` and `serves:` lines: each server of the plan's target with the
/// running router's view of it, and the balancer's own pick over those states.
fn explain_servers(
    out: &mut String,
    router: &Router,
    plan: &crate::decision::Plan,
    health: &Result<HealthFile, Unavailable>,
) {
    let index = ServerIndex::new(router);
    let balance = health_state::balance_name(plan.balancer.balance());
    let servers = plan.balancer.servers();
    let state = match health {
        Ok(file) => {
            let age = std::time::SystemTime::now()
                .duration_since(file.written_at)
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "health:    from the running router (pid {}, written {} ago)",
                file.pid,
                crate::status::short_age(age)
            );
            // This process's copy of the table takes the recorded states, so the pick below
            // is the balancer's own.
            index.mirror(file);
            Some(file)
        }
        Err(why) => {
            let _ = writeln!(out, "health:    unknown: {why}");
            None
        }
    };
    for (n, server) in servers.iter().enumerate() {
        let mut line = server.health.addr().to_owned();
        line.push_str(&fmt_hop(server.tls.as_deref()));
        if server.backup {
            line.push_str(" (backup)");
        }
        if server.weight != 1 {
            let _ = write!(line, " (weight {})", server.weight);
        }
        if let Some(slots) = &server.slots {
            let _ = write!(line, " (maxconn {})", slots.max());
        }
        let placement = index.placement(&server.health);
        if let (Some(file), Some(p)) = (state, placement) {
            match file.find(p) {
                Some(r) => {
                    let _ = write!(
                        line,
                        "  {} since {}; last check {}",
                        if r.up { "up" } else { "DOWN" },
                        humantime::format_rfc3339_seconds(r.since),
                        r.last_result.as_deref().unwrap_or("not yet made")
                    );
                }
                None => line.push_str(
                    "  not in the running router (it started from an older configuration)",
                ),
            }
        }
        let label = if n == 0 { "servers:" } else { "" };
        let _ = writeln!(out, "{label:<10} {line}");
    }
    let pick = plan.balancer.candidates(EXAMPLE_PEER.ip()).next();
    let how = match plan.balancer.balance() {
        crate::balance::Balance::Source => format!(
            "{balance}: the server for client {} while it is up",
            EXAMPLE_PEER.ip()
        ),
        crate::balance::Balance::Roundrobin => format!(
            "{balance}: the first up server in the balance order; the running router rotates \
             over the up ones"
        ),
    };
    match (pick, state) {
        (Some(s), Some(_)) => {
            let _ = writeln!(out, "serves:    {} ({how})", s.health.addr());
        }
        (Some(s), None) => {
            let _ = writeln!(
                out,
                "serves:    {} if it is up ({balance}: the first in the balance order; the \
                 health is unknown)",
                s.health.addr()
            );
        }
        (None, _) => {
            let last = plan
                .balancer
                .last_failure()
                .map(|l| format!(" (last check: {l})"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "serves:    none: every server down: the router would answer 503 at once{last}"
            );
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn example(region: &str) -> (Config, Router) {
        let path = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../config"))
            .join(format!("{region}.toml"));
        let config = Config::load(&path).unwrap();
        let router = Router::from_config(&config).unwrap();
        (config, router)
    }

    fn h(n: &str, v: &str) -> (String, String) {
        (n.to_owned(), v.to_owned())
    }

    /// No router running: the health is unknown.
    fn unknown() -> Result<HealthFile, Unavailable> {
        Err(Unavailable::NoFile {
            path: PathBuf::from("/run/scope-router/health-RegionOne.json"),
        })
    }

    #[test]
    fn check_lists_every_listener_backend_and_passthrough() {
        let (c, r) = example("RegionOne");
        let out = check(&r, &c);
        let lines = [
            "region:  RegionOne",
            "regions: RegionOne, RegionTwo",
            "vip:     192.168.142.244 on eth2 (managed)\n",
            "ebpf:    mode auto, pins /sys/fs/bpf/scope-router, XDP on eth2, deny []\n",
            "admin:   127.0.0.1:9101 (/metrics, /status, /healthz, status page /; request metrics on)\n",
            "log:     text lines on stderr\n",
            "scoped listeners (6):",
            "  192.168.142.244:8774  (local backend 192.168.142.245:8774;",
            "    compute/public  path /v2.1/\n",
            "      RegionOne_compute_public -> 192.168.142.245:8774 (local)\n",
            "      RegionTwo_compute_public -> 192.168.144.244:8774/v2.1/\n",
            "    compute/internal  path /v2.1/  (same URL as compute/public, which wins)",
            "      RegionTwo_compute_legacy_admin -> 192.168.144.244:8774/v2/\n",
            "    (no match)  RegionOne_transparent_8774 -> 192.168.142.245:8774",
            "  192.168.142.244:9292  (local backend 192.168.142.245:9292; request_header 10s, connect 10s, idle 6h, response_head 1m, request_body 1m, queue 1m)",
            "      RegionTwo_identity_admin -> 192.168.144.244:35357\n",
            "passthrough listeners (6):",
            "  mariadb  tcp  192.168.142.244:3306 -> 192.168.142.245:3306",
            "  nova_novncproxy  http  192.168.142.244:6080 -> 192.168.142.245:6080",
            "  glance_registry  http  192.168.142.244:9191 -> 192.168.142.245:9191",
        ];
        for l in lines {
            assert!(out.contains(l), "{l:?} missing from:\n{out}");
        }
        assert!(!out.contains("warning"), "{out}");
        // Every catalog entry of every region appears as a backend.
        for e in r.catalog().entries() {
            assert!(
                out.contains(&format!("{} -> ", e.backend_name())),
                "{}",
                e.backend_name()
            );
        }
    }

    #[test]
    fn check_says_when_the_admin_listener_is_reachable_on_the_vip() {
        let on_vip = "; on the VIP, reachable by every API client";
        for (case, bind, reachable) in [
            ("the default, loopback", "127.0.0.1:9101", false),
            ("a management address", "192.168.142.10:9101", false),
            ("the VIP itself", "192.168.142.244:9101", true),
            ("every IPv4 address", "0.0.0.0:9101", true),
            ("every address", "[::]:9101", true),
        ] {
            let (mut c, r) = example("RegionOne");
            c.admin.bind = vec![bind.parse().unwrap()];
            let out = check(&r, &c);
            assert_eq!(out.contains(on_vip), reachable, "{case}: {out}");
        }
    }

    #[test]
    fn check_warns_about_a_vip_nobody_listens_on() {
        let (mut c, r) = example("RegionOne");
        if let Some(v) = c.vip.as_mut() {
            v.address = "192.168.142.250".parse().unwrap();
        }
        let out = check(&r, &c);
        assert!(
            out.contains("warning: [vip] address 192.168.142.250"),
            "{out}"
        );
    }

    #[test]
    fn check_shows_vrrp_and_its_notes() {
        let (mut c, r) = example("RegionOne");
        assert!(!check(&r, &c).contains("vrrp:"), "no [vrrp], no line");
        let mut kolla = crate::vrrp::VrrpSettings::new(51);
        kolla.auth_pass = Some("kollapassword".into());
        kolla.preempt = false;
        c.vrrp = Some(kolla.clone());
        let out = check(&r, &c);
        let lines = [
            "vrrp:    v2 vrid 51 priority 100 every 1s on eth2 (multicast 224.0.0.18, auth PASS, nopreempt, own health: out after 2 failed checks, back after 10 passed)\n",
            "note: [vrrp] auth_pass is 13 bytes; only its first 8 are sent and compared",
        ];
        for l in lines {
            assert!(out.contains(l), "{l:?} missing from:\n{out}");
        }
        assert!(!out.contains("kollapas"), "the password leaked:\n{out}");
        kolla.version = crate::vrrp::Version::V3;
        kolla.auth_pass = None;
        kolla.advert_int = std::time::Duration::from_millis(500);
        kolla.peers = vec![
            "192.168.142.2".parse().unwrap(),
            "192.168.142.3".parse().unwrap(),
        ];
        kolla.interface = Some("bond0".into());
        c.vrrp = Some(kolla);
        let out = check(&r, &c);
        let line = "vrrp:    v3 vrid 51 priority 100 every 500ms on bond0 (unicast to 192.168.142.2, 192.168.142.3, nopreempt, own health: out after 2 failed checks, back after 10 passed)\n";
        assert!(out.contains(line), "{line:?} missing from:\n{out}");
        assert!(!out.contains("note:"), "{out}");
    }

    #[test]
    fn explain_remote_request() {
        let (_, r) = example("RegionOne");
        let out = explain(
            &r,
            "GET",
            "http://192.168.142.244:8774/v2.1/servers?limit=1",
            &[
                h("X-Auth-Token", r#"abc!SCOPE!{"compute":"RegionTwo"}"#),
                h("Via", "1.0 edge"),
            ],
            &unknown(),
        )
        .unwrap();
        let lines = [
            "service:   compute/public\n",
            "scope:     X-Auth-Token\n",
            "region:    RegionTwo\n",
            "backend:   RegionTwo_compute_public\n",
            "upstream:  192.168.144.244:8774\n",
            "  GET /v2.1/servers?limit=1 HTTP/1.1\n",
            "  host: 192.168.144.244:8774\n",
            "  x-identity-region: RegionOne\n",
            "  x-identity-url: http://192.168.142.244:35357\n",
            "  x-forwarded-for: 203.0.113.10\n",
            "  via: 1.0 edge, 1.1 scope-router-RegionOne (compute=RegionTwo from X-Auth-Token)\n",
            "  x-auth-token: abc!SCOPE!{\"compute\":\"RegionTwo\"}\n",
            // Identity came from RegionOne's defaults: pinned for the next router.
            "  x-scope: {\"compute\":\"RegionTwo\",\"identity\":\"RegionOne\"}\n",
            "hop:       another region's router (the scope travels on, tokens unstripped)\n",
        ];
        for l in lines {
            assert!(out.contains(l), "{l:?} missing from:\n{out}");
        }
    }

    #[test]
    fn explain_local_transparent_and_refused() {
        let (_, r) = example("RegionTwo");
        let out = explain(&r, "GET", "http://192.168.144.244:8774/", &[], &unknown()).unwrap();
        assert!(out.contains("transparent fallback"), "{out}");
        assert!(
            out.contains("backend:   RegionTwo_transparent_8774\n"),
            "{out}"
        );
        assert!(out.contains("upstream:  192.168.144.245:8774\n"), "{out}");
        assert!(out.contains("  host: 192.168.144.244:8774\n"), "{out}");

        let scope = [h("X-Scope", "{\"compute\": \"Nowhere\"}")];
        let out = explain(
            &r,
            "POST",
            "http://192.168.144.244:8774/v2.1/servers",
            &scope,
            &unknown(),
        )
        .unwrap();
        assert!(
            out.contains("answer:    400 Bad Request (not forwarded)"),
            "{out}"
        );
        assert!(out.contains("Nowhere"), "{out}");
        assert!(!out.contains("forwarded:"), "{out}");
    }

    #[test]
    fn explain_rejects_bad_input() {
        let (_, r) = example("RegionOne");
        type Case = (&'static str, &'static str, Vec<(String, String)>);
        let cases: [Case; 5] = [
            ("GE T", "http://192.168.142.244:8774/", vec![]),
            ("GET", "/v2.1/servers", vec![]),
            ("GET", "ftp://192.168.142.244:8774/", vec![]),
            ("GET", "http://nova.example:8774/", vec![]),
            (
                "GET",
                "http://192.168.142.244:8774/",
                vec![h("Bad Name", "x")],
            ),
        ];
        for (m, u, hs) in cases {
            assert!(
                explain(&r, m, u, &hs, &unknown()).is_err(),
                "{m} {u} {hs:?}"
            );
        }
    }

    /// RegionOne with two compute servers (and `extra` config), and the state a running
    /// router would publish for it.
    fn two_servers(extra: &str) -> (Config, Router, HealthFile) {
        let text = format!(
            "region = \"RegionOne\"\ncatalog = [\"endpoint-list-RegionOne.json\", \
             \"endpoint-list-RegionTwo.json\"]\nbackend = \"192.168.142.245\"\n\
             [ports.8774]\nbackend = [\"10.0.0.1:8774\", \"10.0.0.2:8774\", \
             {{ address = \"10.0.0.3:8774\", backup = true }}]\n{extra}"
        );
        let path =
            PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../config")).join("router.toml");
        let config = Config::from_str(&text, &path).unwrap();
        let router = Router::from_config(&config).unwrap();
        let file = ServerIndex::new(&router).snapshot(1, std::time::SystemTime::now());
        (config, router, file)
    }

    fn set_down(file: &mut HealthFile, addrs: &[&str]) {
        for s in &mut file.servers {
            if addrs.contains(&s.placement.addr.as_str()) {
                s.up = false;
                s.last_result = Some("connect: Connection refused (os error 111)".to_owned());
            }
        }
    }

    #[test]
    fn explain_names_the_server_that_would_serve_now() {
        const URL: &str = "http://192.168.142.244:8774/v2.1/servers";
        struct Case {
            name: &'static str,
            down: &'static [&'static str],
            want: &'static str,
        }
        let cases = [
            Case {
                name: "all up: the first of the balance",
                down: &[],
                want: "serves:    10.0.0.1:8774 (roundrobin: the first up server",
            },
            Case {
                name: "the first down: the next up one",
                down: &["10.0.0.1:8774"],
                want: "serves:    10.0.0.2:8774 (roundrobin",
            },
            Case {
                name: "every non-backup down: the backup",
                down: &["10.0.0.1:8774", "10.0.0.2:8774"],
                want: "serves:    10.0.0.3:8774 (roundrobin",
            },
            Case {
                name: "every server down: 503 at once",
                down: &["10.0.0.1:8774", "10.0.0.2:8774", "10.0.0.3:8774"],
                want: "serves:    none: every server down: the router would answer 503 at once \
                       (last check: connect: Connection refused (os error 111))",
            },
        ];
        for case in cases {
            let (_, router, mut file) = two_servers("");
            set_down(&mut file, case.down);
            let out = explain(&router, "GET", URL, &[], &Ok(file)).unwrap();
            assert!(out.contains(case.want), "{}: {out}", case.name);
            assert!(
                out.contains("health:    from the running router (pid 1, written "),
                "{}: {out}",
                case.name
            );
            assert!(
                out.contains("           10.0.0.3:8774 (backup)  "),
                "{}: {out}",
                case.name
            );
            for addr in case.down {
                assert!(
                    out.lines()
                        .any(|l| l.contains(&format!("{addr} ")) && l.contains("  DOWN since ")),
                    "{}: {addr} {out}",
                    case.name
                );
            }
        }
    }

    #[test]
    fn explain_says_when_the_health_is_unknown() {
        let (_, router, _) = two_servers("");
        let out = explain(
            &router,
            "GET",
            "http://192.168.142.244:8774/v2.1/servers",
            &[],
            &unknown(),
        )
        .unwrap();
        for line in [
            "health:    unknown: no router is running (no health state file \
             /run/scope-router/health-RegionOne.json)\n",
            "servers:   10.0.0.1:8774\n",
            "           10.0.0.3:8774 (backup)\n",
            "serves:    10.0.0.1:8774 if it is up (roundrobin",
        ] {
            assert!(out.contains(line), "{line:?} missing from:\n{out}");
        }
    }

    #[test]
    fn explain_follows_source_affinity_and_remote_health() {
        const URL: &str = "http://192.168.142.244:8774/v2.1/servers";
        let serves = |out: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix("serves:    "))
                .and_then(|l| l.split_once(' '))
                .map(|(addr, rest)| (addr.to_owned(), rest.to_owned()))
                .unwrap()
        };
        // `source`: the example client's own server; when it is down, the other one.
        let (_, router, file) = two_servers("[proxy]\nbalance = \"source\"\n");
        let out = explain(&router, "GET", URL, &[], &Ok(file.clone())).unwrap();
        let (home, how) = serves(&out);
        assert_eq!(
            how,
            "(source: the server for client 203.0.113.10 while it is up)"
        );
        assert!(
            ["10.0.0.1:8774", "10.0.0.2:8774"].contains(&home.as_str()),
            "{out}"
        );
        let mut file = file;
        set_down(&mut file, &[&home]);
        let (_, router, _) = two_servers("[proxy]\nbalance = \"source\"\n");
        let out = explain(&router, "GET", URL, &[], &Ok(file)).unwrap();
        let (other, _) = serves(&out);
        assert!(other != home && other != "10.0.0.3:8774", "{out}");

        // Another region's frontend down: the router answers 503 for that region at once.
        let (_, router, mut file) = two_servers("");
        set_down(&mut file, &["192.168.144.244:8774"]);
        let scope = [h("X-Scope", r#"{"compute": "RegionTwo"}"#)];
        let out = explain(&router, "GET", URL, &scope, &Ok(file)).unwrap();
        assert!(
            out.contains("servers:   192.168.144.244:8774  DOWN since "),
            "{out}"
        );
        assert!(
            out.contains("serves:    none: every server down: the router would answer 503"),
            "{out}"
        );
    }

    #[test]
    fn explain_says_which_alternative_serves_now() {
        const URL: &str = "http://192.168.142.244:8774/v2.1/servers";
        let scope = [h("X-Scope", r#"{"compute": "RegionTwo|RegionOne"}"#)];
        let (_, router, file) = two_servers("");
        let out = explain(&router, "GET", URL, &scope, &Ok(file)).unwrap();
        assert!(
            out.contains("alternatives: RegionTwo (serves now) -> RegionOne (not needed)\n"),
            "{out}"
        );
        assert!(out.contains("region:    RegionTwo\n"), "{out}");

        let (_, router, mut file) = two_servers("");
        set_down(&mut file, &["192.168.144.244:8774"]);
        let out = explain(&router, "GET", URL, &scope, &Ok(file)).unwrap();
        assert!(
            out.contains(
                "alternatives: RegionTwo (every server down: skipped) -> RegionOne (serves now)\n"
            ),
            "{out}"
        );
        assert!(out.contains("region:    RegionOne\n"), "{out}");
    }

    #[test]
    fn check_lists_each_listeners_servers() {
        let (config, router, _) = two_servers("");
        let out = check(&router, &config);
        assert!(
            out.contains(
                "    servers (roundrobin): 10.0.0.1:8774, 10.0.0.2:8774, 10.0.0.3:8774 (backup)\n"
            ),
            "{out}"
        );
    }

    #[test]
    fn check_and_explain_show_where_tls_is_spoken_and_with_what_trust() {
        let pki = crate::tls::testing::Pki::new("unit");
        let leaf = pki.leaf("vip", &["10.0.0.1"], 30);
        let catalog = r#"[
          {"Region": "RegionOne", "Service Type": "compute", "Interface": "public",
           "URL": "https://10.0.0.1:8774/v2.1"},
          {"Region": "RegionOne", "Service Type": "image", "Interface": "public",
           "URL": "http://10.0.0.1:9292"},
          {"Region": "RegionTwo", "Service Type": "compute", "Interface": "public",
           "URL": "https://region2.example:8774/v2.1"},
          {"Region": "RegionTwo", "Service Type": "image", "Interface": "public",
           "URL": "http://10.0.0.2:9292"}
        ]"#;
        pki.write("catalog.json", catalog);
        let ca = pki.ca.cert_path.display().to_string();
        let text = format!(
            "region = \"RegionOne\"\ncatalog = [\"catalog.json\"]\nbackend = \"127.0.0.1\"\n\
             [tls]\ncertificate = \"{}\"\nkey = \"{}\"\nca_file = \"{ca}\"\n\
             [ports.8774]\nbackend_tls = true\n",
            leaf.certificate.display(),
            leaf.key.display(),
        );
        let config = Config::from_str(&text, &pki.dir.path().join("router.toml")).unwrap();
        let router = Router::from_config(&config).unwrap();
        let out = check(&router, &config);
        for needle in [
            format!(
                "tls: terminated here (https:// in the catalog): certificate {}, profile modern",
                leaf.certificate.display()
            ),
            "tls: none (http:// in the catalog)".to_owned(),
            format!(
                "127.0.0.1:8774; over TLS (backend_tls: each verified for its address, \
                 trusting {ca})"
            ),
            format!(
                "RegionTwo_compute_public -> region2.example:8774/v2.1 over TLS (certificate \
                 verified for region2.example, trusting {ca})"
            ),
            "RegionTwo_image_public -> 10.0.0.2:9292\n".to_owned(),
        ] {
            assert!(out.contains(&needle), "{needle}:\n{out}");
        }
        assert_eq!(out.matches("over TLS").count(), 2, "{out}");

        let scope = h("X-Scope", r#"{"compute": "RegionTwo"}"#);
        let url = "https://10.0.0.1:8774/v2.1/servers";
        let out = explain(&router, "GET", url, &[scope], &unknown()).unwrap();
        for needle in [
            "listener:  10.0.0.1:8774 (scoped, terminates TLS,".to_owned(),
            format!(
                "servers:   region2.example:8774 over TLS (certificate verified for \
                 region2.example, trusting {ca})"
            ),
        ] {
            assert!(out.contains(&needle), "{needle}:\n{out}");
        }
        let out = explain(&router, "GET", url, &[], &unknown()).unwrap();
        assert!(
            out.contains("servers:   127.0.0.1:8774 over TLS (certificate verified for 127.0.0.1"),
            "{out}"
        );
    }
}
