//! The soak's good traffic: one request shape per region entered, listener, service
//! type, scope kind and scope source, sent in rotation by a few client threads in the
//! client namespace over keep-alive connections. Every request is recorded with when it
//! was sent and what came back; judging it against the faults is `classify`'s job.

use std::collections::HashMap;
use std::net::{SocketAddr, SocketAddrV4};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::Value;

use super::classify::{Outcome, Record};
use super::http::{self, Conn, Transport};
use crate::lab::plan::RegionPlan;

/// Longer than every router timeout of the soak's configs (connect 2 s, response head
/// 5 s, twice for a request crossing two routers): a client timeout always means that
/// no router answered within its own bounds.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(15);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a request keeps being retried after connection-level failures (backoff
/// 250 ms doubling to 2 s): longer than a VRRP takeover (Master_Down_Interval 3.6 s
/// with 1 s adverts) and the gratuitous ARP after it.
const RETRY_LIMIT: Duration = Duration::from_secs(12);
/// Requests per connection before the client opens a new one, so new connections keep
/// arriving all along, not only keep-alive traffic.
const MAX_REUSE: u32 = 100;
/// A keep-alive connection unused this long is closed instead of reused: well below the
/// router's `request_header` (10 s), which also bounds how long it keeps an idle client,
/// so the client never races the router's close (what HTTP client pools do with a
/// server's keep-alive timeout). A close seen on a reused connection is then the router's
/// doing for another reason (a drain, a crash), which is what the soak watches for.
const CLIENT_IDLE_MAX: Duration = Duration::from_secs(4);
/// The body of the POSTs (keystone's token requests are about this size).
const POST_BODY_LEN: usize = 512;

/// Where a scope sends the request, from the region it enters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ScopeKind {
    /// No scope: the entry router's `[scope.defaults]`, else its own region.
    Defaults,
    /// The region entered.
    Local,
    /// The other region.
    Remote,
    /// `Other|Entered`.
    RemoteFirst,
    /// `Entered|Other`.
    LocalFirst,
}

impl ScopeKind {
    pub fn label(self) -> &'static str {
        match self {
            ScopeKind::Defaults => "defaults (no scope)",
            ScopeKind::Local => "local",
            ScopeKind::Remote => "remote",
            ScopeKind::RemoteFirst => "A|B remote first",
            ScopeKind::LocalFirst => "A|B local first",
        }
    }
}

/// Where the scope travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Source {
    None,
    XScope,
    /// `X-Auth-Token: token!SCOPE!{…}`.
    Token,
}

impl Source {
    pub fn label(self) -> &'static str {
        match self {
            Source::None => "-",
            Source::XScope => "X-Scope",
            Source::Token => "token",
        }
    }
}

/// One request shape of the good traffic.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Index of the region whose VIP the request enters.
    pub entry: usize,
    pub addr: SocketAddrV4,
    pub service_type: String,
    pub kind: ScopeKind,
    pub source: Source,
    /// Regions that may serve it, in the scope's order (one unless `A|B`).
    pub targets: Vec<usize>,
    /// The echo backend name of each target (`Region:port`), as it answers.
    pub names: Vec<String>,
    pub post: bool,
    /// The whole request, head and body.
    pub request: Vec<u8>,
}

impl Spec {
    /// `RegionOne → RegionTwo|RegionOne`: the entry and the scope's regions.
    pub fn route(&self, regions: &[String]) -> String {
        let targets: Vec<&str> = self.targets.iter().map(|t| regions[*t].as_str()).collect();
        format!("{} → {}", regions[self.entry], targets.join("|"))
    }
}

/// Every request shape for the lab's regions: per region entered and distinct (listener
/// port, service type) of its catalog, the defaults, and each scope kind naming the next
/// region both in `X-Scope` and in the token; identity's public port sends POSTs (token
/// requests), everything else GETs.
pub fn specs(regions: &[RegionPlan]) -> Result<Vec<Spec>> {
    let names: Vec<&str> = regions.iter().map(|r| r.name.as_str()).collect();
    let mut out = Vec::new();
    for (entry, region) in regions.iter().enumerate() {
        let other = (entry + 1) % regions.len();
        let defaults = scope_defaults(region)?;
        let mut seen: Vec<(u16, &str)> = Vec::new();
        for service in &region.services {
            let key = (service.port, service.service_type.as_str());
            if seen.contains(&key) {
                continue;
            }
            seen.push(key);
            let remote_serves = regions[other].services.iter().any(|s| {
                s.service_type == service.service_type && s.interface == service.interface
            });
            let default_target = defaults
                .get(&service.service_type)
                .and_then(|name| names.iter().position(|n| n == name))
                .unwrap_or(entry);
            let mut shapes = vec![(ScopeKind::Defaults, Source::None, vec![default_target])];
            if remote_serves {
                for source in [Source::XScope, Source::Token] {
                    shapes.push((ScopeKind::Local, source, vec![entry]));
                    shapes.push((ScopeKind::Remote, source, vec![other]));
                    shapes.push((ScopeKind::RemoteFirst, source, vec![other, entry]));
                    shapes.push((ScopeKind::LocalFirst, source, vec![entry, other]));
                }
            } else {
                for source in [Source::XScope, Source::Token] {
                    shapes.push((ScopeKind::Local, source, vec![entry]));
                }
            }
            let addr = SocketAddrV4::new(region.vip, service.port);
            let post = service.service_type == "identity" && service.interface == "public";
            for (kind, source, targets) in shapes {
                let scope = (source != Source::None).then(|| {
                    let regions: Vec<&str> = targets.iter().map(|t| names[*t]).collect();
                    format!(r#"{{"{}":"{}"}}"#, service.service_type, regions.join("|"))
                });
                let path = request_path(&service.path, "soak");
                out.push(Spec {
                    entry,
                    addr,
                    service_type: service.service_type.clone(),
                    kind,
                    source,
                    names: targets
                        .iter()
                        .map(|t| regions[*t].backend_name(service.port))
                        .collect(),
                    targets,
                    post,
                    request: request(addr, &path, source, scope.as_deref(), post),
                });
            }
        }
    }
    Ok(out)
}

/// `[scope.defaults]` of the generated config: service type → region name.
fn scope_defaults(region: &RegionPlan) -> Result<HashMap<String, String>> {
    let table: toml::Table = region
        .config
        .parse()
        .with_context(|| format!("re-reading {}'s lab config", region.name))?;
    Ok(table
        .get("scope")
        .and_then(|s| s.get("defaults"))
        .and_then(toml::Value::as_table)
        .map(|d| {
            d.iter()
                .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default())
}

/// `leaf` under the catalog path `prefix`, on a segment boundary, so the router routes
/// it as the catalog's service (not by the transparent fallback).
pub fn request_path(prefix: &str, leaf: &str) -> String {
    if prefix.ends_with('/') {
        format!("{prefix}{leaf}")
    } else {
        format!("{prefix}/{leaf}")
    }
}

fn request(
    addr: SocketAddrV4,
    path: &str,
    source: Source,
    scope: Option<&str>,
    post: bool,
) -> Vec<u8> {
    let mut head = format!(
        "{} {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: scope-router-soak\r\nAccept: application/json\r\n",
        if post { "POST" } else { "GET" }
    );
    match (source, scope) {
        (Source::XScope, Some(scope)) => head.push_str(&format!("X-Scope: {scope}\r\n")),
        (Source::Token, Some(scope)) => {
            head.push_str(&format!("X-Auth-Token: soak-token!SCOPE!{scope}\r\n"));
        }
        _ => {}
    }
    if post {
        head.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {POST_BODY_LEN}\r\n\r\n"
        ));
        // `{"auth":{"soak":"` and `"}}` take 20 bytes of the length.
        head.push_str(&format!(
            r#"{{"auth":{{"soak":"{}"}}}}"#,
            "x".repeat(POST_BODY_LEN - 20)
        ));
        head.into_bytes()
    } else {
        head.push_str("\r\n");
        head.into_bytes()
    }
}

/// What the answer to `spec` says: served by which target, refused by a router, or
/// something else.
pub fn judge(spec: &Spec, response: &http::Response) -> Outcome {
    let json: Option<Value> = serde_json::from_slice(&response.body).ok();
    let backend = json
        .as_ref()
        .and_then(|j| j.get("backend"))
        .and_then(Value::as_str);
    if let Some(name) = backend {
        let body_ok = !spec.post
            || json
                .as_ref()
                .and_then(|j| j.get("body_len"))
                .and_then(Value::as_u64)
                == Some(POST_BODY_LEN as u64);
        return match spec.names.iter().position(|n| n == name) {
            Some(i) if response.status == 200 && body_ok => Outcome::Served {
                region: spec.targets[i],
            },
            _ => Outcome::Misrouted {
                answered_by: name.to_owned(),
                status: response.status,
            },
        };
    }
    if let Some(error) = json.as_ref().and_then(|j| j.get("error")) {
        return Outcome::RouterError {
            status: response.status,
            down: response.header("x-scope-router-health") == Some("down"),
            message: error
                .get("message")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned(),
        };
    }
    Outcome::Other {
        status: response.status,
        detail: String::from_utf8_lossy(&response.body[..response.body.len().min(80)]).into_owned(),
    }
}

/// What the client threads share with the soak's driver.
#[derive(Default)]
pub struct Control {
    /// Finish the request in hand and return the records.
    pub stop: AtomicBool,
    /// Close every connection and send nothing (baseline measurements).
    pub paused: AtomicBool,
}

/// One client thread's loop: `specs` in rotation from `first`, `pace` apart, until
/// stopped. Runs inside the client namespace (see `netns::spawn_in`).
pub fn client(
    control: Arc<Control>,
    specs: Arc<Vec<Spec>>,
    first: usize,
    pace: Duration,
    t0: Instant,
) -> Vec<Record> {
    let mut records = Vec::new();
    let mut conns: HashMap<SocketAddr, (Conn, Instant)> = HashMap::new();
    let mut next = first;
    while !control.stop.load(Ordering::Relaxed) {
        if control.paused.load(Ordering::Relaxed) {
            conns.clear();
            std::thread::sleep(Duration::from_millis(50));
            continue;
        }
        let index = next % specs.len();
        next += 1;
        records.push(send(index, &specs[index], &mut conns, t0));
        std::thread::sleep(pace);
    }
    records
}

/// Sends one request, retrying as an HTTP client library would: at once on a fresh
/// connection when a reused one turns out closed before any byte of the answer (GET
/// only: RFC 9112 §9.3.1), and with backoff while connecting fails (nothing was sent,
/// any method) or, for a GET, while fresh connections close unanswered. Whether a retry
/// was acceptable is for the classifier to say.
pub fn send(
    index: usize,
    spec: &Spec,
    conns: &mut HashMap<SocketAddr, (Conn, Instant)>,
    t0: Instant,
) -> Record {
    let addr = SocketAddr::V4(spec.addr);
    let sent = t0.elapsed();
    let begun = Instant::now();
    let mut failures = Vec::new();
    let mut backoff = Duration::from_millis(250);
    loop {
        if conns
            .get(&addr)
            .is_some_and(|(c, used)| used.elapsed() > CLIENT_IDLE_MAX || c.closed_by_peer())
        {
            conns.remove(&addr);
        }
        let reused = conns.get(&addr).is_some_and(|(c, _)| c.exchanges > 0);
        let result = match conns.entry(addr) {
            std::collections::hash_map::Entry::Occupied(e) => Ok(e.into_mut()),
            std::collections::hash_map::Entry::Vacant(e) => {
                http::connect(addr, CONNECT_TIMEOUT).map(|c| e.insert((c, Instant::now())))
            }
        }
        .and_then(|(conn, used)| {
            let response = conn.exchange(&spec.request, Instant::now() + CLIENT_TIMEOUT)?;
            *used = Instant::now();
            Ok((response, conn.exchanges))
        });
        let failure = match result {
            Ok((response, exchanges)) => {
                if response.closes() || exchanges >= MAX_REUSE {
                    conns.remove(&addr);
                }
                return Record {
                    spec: index,
                    sent,
                    took: begun.elapsed(),
                    outcome: judge(spec, &response),
                    failures,
                };
            }
            Err(failure) => failure,
        };
        conns.remove(&addr);
        let stale =
            reused && failures.is_empty() && failure.kind == Transport::ClosedBeforeResponse;
        let retry = match failure.kind {
            Transport::Connect => true,
            Transport::ClosedBeforeResponse | Transport::ClosedMidResponse => !spec.post,
            Transport::Timeout | Transport::Malformed => false,
        };
        failures.push((failure.kind, reused));
        if !retry || begun.elapsed() + backoff > RETRY_LIMIT {
            return Record {
                spec: index,
                sent,
                took: begun.elapsed(),
                outcome: Outcome::Transport(failure.kind),
                failures,
            };
        }
        if !stale {
            std::thread::sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use std::net::Ipv4Addr;
    use std::path::PathBuf;

    use super::*;
    use crate::lab::plan::Service;

    fn service(service_type: &str, interface: &str, port: u16, path: &str) -> Service {
        Service {
            service_type: service_type.into(),
            interface: interface.into(),
            host: String::new(),
            port,
            path: path.into(),
        }
    }

    pub(crate) fn region(name: &str, third: u8, config: &str) -> RegionPlan {
        let net = |h| Ipv4Addr::new(192, 168, third, h);
        RegionPlan {
            name: name.into(),
            index: 1,
            vip: net(244),
            backend: net(245),
            router_addr: net(10),
            gateway: net(1),
            ports: vec![5000, 8774],
            services: vec![
                service("identity", "public", 5000, "/"),
                service("identity", "internal", 5000, "/"),
                service("compute", "public", 8774, "/v2.1/"),
                service("compute_legacy", "public", 8774, "/v2/"),
            ],
            router_manages_vip: true,
            source_config: PathBuf::new(),
            config: config.into(),
            backup_role: false,
            ca_file: None,
        }
    }

    fn two() -> Vec<RegionPlan> {
        vec![
            region("RegionOne", 142, "region = \"RegionOne\"\n"),
            region(
                "RegionTwo",
                144,
                "region = \"RegionTwo\"\n[scope.defaults]\nidentity = \"RegionOne\"\n",
            ),
        ]
    }

    #[test]
    fn every_port_service_scope_kind_and_source_is_covered() {
        let specs = specs(&two()).expect("specs");
        // 2 regions × 3 (port, service type) × (defaults + 4 kinds × 2 sources).
        assert_eq!(specs.len(), 2 * 3 * 9);
        for kind in [
            ScopeKind::Local,
            ScopeKind::Remote,
            ScopeKind::RemoteFirst,
            ScopeKind::LocalFirst,
        ] {
            for source in [Source::XScope, Source::Token] {
                for entry in 0..2 {
                    assert!(
                        specs
                            .iter()
                            .any(|s| s.kind == kind && s.source == source && s.entry == entry),
                        "{kind:?} {source:?} {entry}"
                    );
                }
            }
        }
        let alt = specs
            .iter()
            .find(|s| s.entry == 0 && s.kind == ScopeKind::RemoteFirst && s.source == Source::Token)
            .expect("an A|B token spec");
        assert_eq!(alt.targets, [1, 0]);
        assert_eq!(alt.names, ["RegionTwo:5000", "RegionOne:5000"]);
        let text = String::from_utf8_lossy(&alt.request);
        assert!(text.starts_with("POST /soak HTTP/1.1\r\n"), "{text}");
        assert!(
            text.contains(
                "X-Auth-Token: soak-token!SCOPE!{\"identity\":\"RegionTwo|RegionOne\"}\r\n"
            ),
            "{text}"
        );
        let (head, body) = text.split_once("\r\n\r\n").expect("head and body");
        assert!(head.contains(&format!("Content-Length: {POST_BODY_LEN}")));
        assert_eq!(body.len(), POST_BODY_LEN);
    }

    #[test]
    fn defaults_follow_the_entry_routers_config() {
        let specs = specs(&two()).expect("specs");
        let default_of = |entry: usize, service: &str| {
            specs
                .iter()
                .find(|s| {
                    s.entry == entry && s.kind == ScopeKind::Defaults && s.service_type == service
                })
                .map(|s| s.targets.clone())
        };
        assert_eq!(default_of(0, "identity"), Some(vec![0]));
        assert_eq!(
            default_of(1, "identity"),
            Some(vec![0]),
            "RegionTwo sends identity to RegionOne"
        );
        assert_eq!(default_of(1, "compute"), Some(vec![1]));
        let compute = specs
            .iter()
            .find(|s| {
                s.service_type == "compute"
                    && s.kind == ScopeKind::Remote
                    && s.source == Source::XScope
                    && s.entry == 1
            })
            .expect("compute spec");
        let text = String::from_utf8_lossy(&compute.request);
        assert!(
            text.starts_with("GET /v2.1/soak HTTP/1.1\r\nHost: 192.168.144.244:8774\r\n"),
            "{text}"
        );
        assert!(
            text.contains("X-Scope: {\"compute\":\"RegionOne\"}\r\n"),
            "{text}"
        );
        assert!(text.ends_with("\r\n\r\n"));
    }

    fn response(status: u16, headers: &[(&str, &str)], body: &str) -> http::Response {
        http::Response {
            status,
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
                .collect(),
            body: body.as_bytes().to_vec(),
        }
    }

    #[test]
    fn answers_are_judged_by_backend_name_status_and_body() {
        let specs = specs(&two()).expect("specs");
        let get = specs
            .iter()
            .find(|s| s.entry == 0 && s.kind == ScopeKind::RemoteFirst && !s.post)
            .expect("a GET A|B spec");
        let echo = |name: &str| format!(r#"{{"backend":"{name}","body_len":0}}"#);
        assert_eq!(
            judge(get, &response(200, &[], &echo("RegionTwo:8774"))),
            Outcome::Served { region: 1 }
        );
        assert_eq!(
            judge(get, &response(200, &[], &echo("RegionOne:8774"))),
            Outcome::Served { region: 0 },
            "the second alternative is a target too"
        );
        assert!(matches!(
            judge(get, &response(200, &[], &echo("RegionOne:5000"))),
            Outcome::Misrouted { .. }
        ));
        assert!(matches!(
            judge(get, &response(500, &[], &echo("RegionTwo:8774"))),
            Outcome::Misrouted { status: 500, .. }
        ));
        let post = specs.iter().find(|s| s.post).expect("a POST spec");
        let name = &post.names[0];
        assert!(
            matches!(
                judge(
                    post,
                    &response(200, &[], &format!(r#"{{"backend":"{name}","body_len":3}}"#))
                ),
                Outcome::Misrouted { .. }
            ),
            "a truncated body is not served"
        );
        let refused = judge(
            get,
            &response(
                503,
                &[("x-scope-router-health", "down")],
                r#"{"error":{"code":503,"title":"Service Unavailable","message":"every server down"}}"#,
            ),
        );
        assert_eq!(
            refused,
            Outcome::RouterError {
                status: 503,
                down: true,
                message: "every server down".into()
            }
        );
        assert!(matches!(
            judge(get, &response(502, &[], "<html>bad gateway</html>")),
            Outcome::Other { status: 502, .. }
        ));
    }
}
