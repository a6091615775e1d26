//! Passthrough listeners (docs/ARCHITECTURE.md §4): no scope work. `tcp` copies bytes both
//! ways; `http` proxies every request, WebSocket-style upgrades included, to one backend.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::header::{HeaderValue, VIA};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::access_log::{AccessRecord, LoggedBody, QUEUE_TIMEOUT};
use crate::balance::{Balance, Balancer};
use crate::config::{Passthrough, ProxySettings};
use crate::decision::X_FORWARDED_FOR;
use crate::metrics::TrafficStats;
use crate::problem::{ConfigAt, Problem};
use crate::proxy::headers::{append_list, peer_value};
use crate::proxy::idle::IdleIo;
use crate::proxy::upstream::{self, UpstreamClient};
use crate::proxy::{
    RequestStart, ambiguous_framing_problem, check_head, forward, headers, problem_response,
    relay_response,
};
use crate::server_slots::{Picker, Slot, SlotBody};
use crate::shutdown::{Guard, Signals};

/// One configured passthrough listener with its upstream pool.
#[derive(Debug)]
pub struct PassthroughRuntime {
    pub spec: Passthrough,
    client: UpstreamClient,
    region: Arc<str>,
    /// The servers of `backend`, their health, and how to pick among them.
    balancer: Arc<Balancer>,
    /// Its traffic numbers (`None` with `[admin] metrics = false`).
    stats: Option<Arc<TrafficStats>>,
    /// `1.1 scope-router-<region>`, as scoped requests get it.
    via: HeaderValue,
    max_header_bytes: usize,
    /// `[proxy] retries`: further servers tried when connecting fails (`tcp` mode).
    retries: u32,
}

impl PassthroughRuntime {
    /// `servers`: the listener's servers and stats, from the routing table (which checks
    /// them).
    pub fn new(
        spec: Passthrough,
        region: &str,
        proxy: &ProxySettings,
        (balancer, stats): (Arc<Balancer>, Option<Arc<TrafficStats>>),
    ) -> Self {
        let client = upstream::client(spec.timeouts.connect, spec.timeouts.idle);
        // The router refuses at startup a region that is no valid header value.
        let via = HeaderValue::from_str(&format!("1.1 scope-router-{region}"))
            .unwrap_or_else(|_| HeaderValue::from_static("1.1 scope-router"));
        PassthroughRuntime {
            spec,
            client,
            region: Arc::from(region),
            balancer,
            stats,
            via,
            max_header_bytes: proxy.max_header_bytes,
            retries: proxy.retries,
        }
    }

    /// The servers a connection from `peer` may go to, with their `maxconn` slots.
    fn picker(
        &self,
        peer: SocketAddr,
        queue: std::time::Duration,
    ) -> Picker<'_, crate::balance::Candidates<'_>> {
        Picker::new(
            self.balancer.candidates(peer.ip()),
            self.balancer.balance() == Balance::Source,
            queue,
        )
    }

    /// Whether a connection accepted with local address `local` belongs here.
    pub fn serves(&self, local: SocketAddr) -> bool {
        bind_serves(self.spec.bind, local)
    }
}

/// Whether a connection accepted with local address `local` belongs to a listener bound
/// on `bind` (a `0.0.0.0:port` bind serves every address on that port).
pub fn bind_serves(bind: SocketAddr, local: SocketAddr) -> bool {
    bind == local || (bind.ip().is_unspecified() && bind.port() == local.port())
}

/// `mode = "tcp"`: splice the client and the backend until either side closes
/// or stays silent for the idle timeout.
pub async fn serve_tcp(rt: &PassthroughRuntime, client: TcpStream, peer: SocketAddr) {
    let started = Instant::now();
    let t = rt.spec.timeouts;
    // The first up server (with a free `maxconn` slot, waiting for one when every server
    // is full) that accepts a connection; nothing was sent to the others. The slot is held
    // for the connection's life.
    let mut servers = rt.picker(peer, t.queue);
    let mut connected = None;
    let mut last_error = String::from("every server is down");
    let mut attempts = 0;
    while attempts <= rt.retries {
        let (server, slot) = match servers.next().await {
            Ok(Some(next)) => next,
            Ok(None) => break,
            Err(timeout) => {
                last_error = format!("{QUEUE_TIMEOUT}: {timeout}");
                break;
            }
        };
        attempts += 1;
        let addr = server.health.addr();
        match tokio::time::timeout(t.connect, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => {
                connected = Some((s, server, slot));
                break;
            }
            Ok(Err(e)) => last_error = format!("cannot connect to {addr}: {e}"),
            Err(_) => last_error = format!("timed out connecting to {addr}"),
        }
        server.health.note_connect_failure(&last_error);
    }
    let Some((backend, server, _slot)) = connected else {
        tracing::warn!(passthrough = %rt.spec.name, %peer, "connection closed: {last_error}");
        return;
    };
    let _ = backend.set_nodelay(true);
    let mut down = IdleIo::new(client, t.idle);
    let mut up = IdleIo::new(backend, t.idle);
    let outcome = tokio::io::copy_bidirectional(&mut down, &mut up).await;
    let (sent, received, error) = match outcome {
        Ok((a, b)) => (a, b, String::new()),
        Err(e) => (0, 0, e.to_string()),
    };
    server.health.note_request();
    if let Some(stats) = &rt.stats {
        stats.observe_stream(sent, received);
    }
    tracing::info!(
        target: "access",
        passthrough = %rt.spec.name,
        mode = "tcp",
        %peer,
        backend = %server.health.addr(),
        duration_ms = %format_args!("{:.3}", started.elapsed().as_secs_f64() * 1000.0),
        queue_ms = %format_args!("{:.3}", servers.waited().as_secs_f64() * 1000.0),
        bytes_up = sent,
        bytes_down = received,
        error = %error,
    );
}

/// What an HTTP passthrough request needs to know about its connection.
#[derive(Debug, Clone)]
pub struct ConnCtx {
    pub local: SocketAddr,
    pub peer: SocketAddr,
    /// Keeps shutdown waiting for upgraded connections spliced from here.
    pub guard: Guard,
    pub signals: Signals,
}

/// `mode = "http"`: one request to the single backend, upgrades spliced.
pub async fn handle_http(
    rt: Arc<PassthroughRuntime>,
    ctx: ConnCtx,
    start: RequestStart,
    mut req: Request<Incoming>,
) -> Result<Response<LoggedBody>, Infallible> {
    let ConnCtx {
        local,
        peer,
        guard,
        signals,
    } = ctx;
    let mut record = AccessRecord::new(Instant::now(), local, peer, req.method(), req.uri());
    record.in_flight = Some(start.in_flight);
    record.backend = Some(Arc::from(rt.spec.name.as_str()));
    record.region = Some(rt.region.clone());
    record.stats.clone_from(&rt.stats);
    let upgrade = headers::wants_upgrade(req.headers()).then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    if start.ambiguous_framing {
        return Ok(problem_response(&ambiguous_framing_problem(), record, true));
    }
    if let Err(problem) = check_head(&mut parts, local, rt.max_header_bytes) {
        return Ok(problem_response(&problem, record, true));
    }
    headers::strip_hop_by_hop(&mut parts.headers, true);
    append_list(&mut parts.headers, &X_FORWARDED_FOR, &peer_value(peer));
    append_list(&mut parts.headers, &VIA, &rt.via);

    // HTTP passthrough sends through hyper's client, which consumes the body: the
    // server is chosen by health (and a free `maxconn` slot, waiting for one when every
    // server is full), and a refused connection is answered, not redispatched.
    let mut servers = rt.picker(peer, rt.spec.timeouts.queue);
    let picked = servers.next().await;
    record.queued = servers.waited();
    let (server, slot) = match picked {
        Ok(Some(picked)) => picked,
        Ok(None) => {
            let last = rt.balancer.last_failure();
            let problem = Problem::service_unavailable(&rt.spec.name, last.as_deref());
            return Ok(problem_response(&problem, record, false));
        }
        Err(timeout) => {
            tracing::warn!(passthrough = %rt.spec.name, "request not sent: {timeout}");
            record.outcome = Some(QUEUE_TIMEOUT);
            let at = ConfigAt::Passthrough(&rt.spec.name);
            let problem = Problem::queue_timeout(&rt.spec.name, at, timeout.queue);
            return Ok(problem_response(&problem, record, false));
        }
    };
    record.server = Some(server.health.upstream().clone());
    let mut resp = match forward(&rt.client, server.health.addr(), parts, body).await {
        Ok(resp) => {
            server.health.note_request();
            resp
        }
        Err(err) => {
            tracing::warn!(passthrough = %rt.spec.name, side = ?err.side, "upstream request failed: {err}");
            return Ok(problem_response(
                &err.to_problem(&rt.spec.name, ConfigAt::Passthrough(&rt.spec.name)),
                record,
                false,
            ));
        }
    };
    if resp.status() == StatusCode::SWITCHING_PROTOCOLS
        && let Some(downstream) = upgrade
    {
        let upstream = hyper::upgrade::on(&mut resp);
        let name = rt.spec.name.clone();
        // The upgraded connection is the exchange now: it holds the slot.
        tokio::spawn(splice_upgraded(
            name, downstream, upstream, guard, signals, slot,
        ));
        return Ok(relay_response(resp, record, true));
    }
    // Held until the response body is relayed.
    let resp = resp.map(|body| SlotBody::new(body, slot));
    Ok(relay_response(resp, record, true))
}

/// Copies bytes between the two upgraded connections until one closes, the
/// idle timeout (inherited from both streams) fires, or shutdown aborts.
async fn splice_upgraded(
    name: String,
    downstream: hyper::upgrade::OnUpgrade,
    upstream: hyper::upgrade::OnUpgrade,
    guard: Guard,
    mut signals: Signals,
    slot: Option<Slot>,
) {
    let _held = (guard, slot);
    let work = async {
        let (down, up) = tokio::try_join!(downstream, upstream)?;
        let mut down = TokioIo::new(down);
        let mut up = TokioIo::new(up);
        tokio::io::copy_bidirectional(&mut down, &mut up)
            .await
            .map_err(hyper_io_error)?;
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    };
    tokio::select! {
        r = work => if let Err(e) = r {
            tracing::debug!(passthrough = %name, "upgraded connection ended: {e}");
        },
        _ = signals.aborting() => tracing::info!(passthrough = %name, "upgraded connection cut at end of shutdown grace"),
    }
}

fn hyper_io_error(e: std::io::Error) -> Box<dyn std::error::Error + Send + Sync> {
    Box::new(e)
}
