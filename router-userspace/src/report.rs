//! Human-readable output of `scope-router check` (routing table) and `scope-router explain`.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};

use http::header::{HOST, HeaderName, HeaderValue};

use crate::catalog::split_host_port;
use crate::config::{Config, PassthroughMode, Timeouts};
use crate::decision::RequestHead;
use crate::routing::Router;

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
        "request_header {}, connect {}, idle {}",
        humantime::format_duration(t.request_header),
        humantime::format_duration(t.connect),
        humantime::format_duration(t.idle)
    )
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

    let _ = writeln!(out, "\nscoped listeners ({}):", router.listeners().len());
    for (i, l) in router.listeners().iter().enumerate() {
        let routes = router.listener_routes(i);
        let _ = writeln!(
            out,
            "  {}  (local backend {}; {})",
            l.addr,
            l.local_backend,
            fmt_timeouts(&l.timeouts)
        );
        for route in &routes.routes {
            let shown = if route.path.is_empty() {
                "/"
            } else {
                &route.path
            };
            let _ = writeln!(
                out,
                "    {}/{}  path {shown}",
                route.service_type, route.interface
            );
            for t in &route.targets {
                let (addr, note) = match &t.remote {
                    None => (format!("{}", t.upstream), " (local)".to_owned()),
                    Some(remote) => (format!("{}{}", t.upstream, remote.path), String::new()),
                };
                let _ = writeln!(out, "      {} -> {addr}{note}", t.backend_name);
            }
        }
        let _ = writeln!(
            out,
            "    (no match)  {} -> {} (forwarded unchanged)",
            routes.transparent_name, routes.local_upstream
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
    }
    out
}

/// Explains how the router would handle `METHOD url` with `headers` sent by
/// [`EXAMPLE_PEER`]. A request the router would refuse is explained too (`Ok`);
/// `Err` means the hypothetical request itself could not be built.
pub fn explain(
    router: &Router,
    method: &str,
    url: &str,
    headers: &[(String, String)],
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
    let listener = match router.listener(local) {
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
        Ok(plan) => plan,
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
    match (&plan.service_type, &plan.interface) {
        (Some(st), Some(i)) => {
            let _ = writeln!(out, "service:   {st}/{i}");
        }
        _ => {
            let _ = writeln!(
                out,
                "service:   none matched: transparent fallback, forwarded unchanged"
            );
        }
    }
    let _ = writeln!(out, "scope:     {}", plan.scope_source.as_str());
    let _ = writeln!(out, "region:    {}", plan.region);
    let _ = writeln!(out, "backend:   {}", plan.backend_name);
    let _ = writeln!(out, "upstream:  {}", plan.upstream);
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

    #[test]
    fn print() {
        let (c, r) = example("RegionOne");
        println!("{}", check(&r, &c));
        println!(
            "{}",
            explain(
                &r,
                "GET",
                "http://192.168.142.244:8774/v2.1/servers?x=1",
                &[(
                    "X-Auth-Token".into(),
                    "abc!SCOPE!{\"compute\":\"RegionTwo\"}".into()
                )]
            )
            .unwrap()
        );
    }
}
