//! Scoped requests, in Pingora-style phases: limits → decide (service, scope,
//! upstream) → rewrite → forward → log (when the response body ends).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Request, Response};
use hyper::body::Incoming;

use super::error::ErrorKind;
use super::upstream::{SendReport, Upstreams};
use super::{
    RequestStart, ambiguous_framing_problem, check_head, headers, health_response,
    problem_response, relay_response,
};
use crate::access_log::{AccessRecord, LoggedBody, QUEUE_TIMEOUT};
use crate::balance::{Balance, Server};
use crate::decision::{Plan, RequestHead};
use crate::health::{HEALTH_HEADER, HEALTH_PATH};
use crate::problem::{ConfigAt, Problem};
use crate::routing::{Router, SharedRouter};
use crate::server_slots::Picker;

/// State shared by every scoped connection of one router.
#[derive(Debug)]
pub struct ScopedShared {
    /// The current routing table; each request loads it once.
    pub router: SharedRouter,
    pub upstreams: Upstreams,
    pub max_header_bytes: usize,
    /// `[proxy] retries`: further servers tried when connecting fails.
    pub retries: u32,
}

/// The typed per-request context threaded through the phases.
struct RequestCtx {
    local: SocketAddr,
    peer: SocketAddr,
    record: AccessRecord,
}

impl RequestCtx {
    /// Records that an alternative of an `A|B` scope did not serve, and why.
    fn skipped(&mut self, plan: &Plan, why: &str, last_check: Option<&str>) {
        if let Some(stats) = &plan.stats {
            stats.failed_over();
        }
        self.record.alternative += 1;
        let note = self.record.failover.get_or_insert_with(String::new);
        if !note.is_empty() {
            note.push_str("; ");
        }
        note.push_str(&plan.region);
        note.push_str(" skipped: ");
        note.push_str(why);
        if let Some(last) = last_check {
            note.push_str(" (");
            note.push_str(last);
            note.push(')');
        }
        tracing::info!(backend = %plan.backend_name, "scope alternative {} skipped: {why}", plan.region);
    }

    fn note_plan(&mut self, plan: &Plan) {
        self.record.service_type = plan.service_type().cloned();
        self.record.region = Some(plan.region.clone());
        self.record.backend = Some(plan.backend_name.clone());
        self.record.scope_source = plan.scope_source();
        self.record.stats.clone_from(&plan.stats);
        if self.record.alternative == 0 && plan.fallback.is_some() {
            self.record.alternative = 1;
        }
    }

    /// Answers `problem` for a request that got no backend; counted on the listener.
    fn refuse(mut self, router: &Router, problem: &Problem, close: bool) -> Response<LoggedBody> {
        self.record.stats = router.refused_stats(self.local).cloned();
        problem_response(problem, self.record, close)
    }
}

/// Serves one request arriving on a scoped listener (`local` is the VIP:port).
pub async fn handle(
    shared: Arc<ScopedShared>,
    local: SocketAddr,
    peer: SocketAddr,
    start: RequestStart,
    req: Request<Incoming>,
) -> Result<Response<LoggedBody>, Infallible> {
    let started = Instant::now();
    let (mut parts, body) = req.into_parts();
    // The table this request is served by, whatever a reload swaps in meanwhile.
    let router = shared.router.load_full();
    let mut record = AccessRecord::new(started, local, peer, &parts.method, &parts.uri);
    record.in_flight = Some(start.in_flight);
    let mut ctx = RequestCtx {
        local,
        peer,
        record,
    };

    // Phase: request limits. The body was not read, so the connection closes.
    if start.ambiguous_framing {
        return Ok(ctx.refuse(&router, &ambiguous_framing_problem(), true));
    }
    if let Err(problem) = check_head(&mut parts, ctx.local, shared.max_header_bytes) {
        return Ok(ctx.refuse(&router, &problem, true));
    }

    // Another router asking about one of our services: answered from our own health
    // state, never forwarded (docs/ARCHITECTURE.md §3.8).
    if parts.uri.path() == HEALTH_PATH {
        let answer = router.health_answer(ctx.local, parts.uri.query());
        return Ok(health_response(answer));
    }

    // Phase: pick service, read scope, choose upstream (pure, in core logic).
    let decided = router.decide(&RequestHead {
        local: ctx.local,
        peer: ctx.peer,
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
    });
    let plan = match decided {
        Ok(plan) => plan,
        // A bodiless bad request leaves the connection reusable; hyper closes
        // it by itself when an unread body is left behind.
        Err(problem) => return Ok(ctx.refuse(&router, &problem, false)),
    };
    ctx.note_plan(&plan);

    // Phase: rewrite. Hop-by-hop first, so Plan's own headers survive.
    headers::strip_hop_by_hop(&mut parts.headers, false);
    if start.https {
        headers::mark_https(&mut parts.headers);
    }
    let mut plan = plan;
    let mut original = Some(parts);
    let mut body = Some(body);
    loop {
        // Phase: pick servers. When every server of the target is down, the next
        // alternative of an `A|B` scope serves, or the client hears so at once instead
        // of waiting out a connect timeout.
        let mut servers = plan.balancer.candidates(ctx.peer.ip()).peekable();
        if servers.peek().is_none() {
            let last = plan.balancer.last_failure();
            if let Some(next) = plan.fallback.take() {
                ctx.skipped(&plan, "every server down", last.as_deref());
                plan = *next;
                ctx.note_plan(&plan);
                continue;
            }
            let problem = Problem::service_unavailable(&plan.backend_name, last.as_deref());
            let mut resp = problem_response(&problem, ctx.record, false);
            // Marks the 503 as "nothing reached a service": a router that sent us this
            // request with another alternative left may still serve it elsewhere.
            resp.headers_mut()
                .insert(HEALTH_HEADER, HeaderValue::from_static("down"));
            return Ok(resp);
        }
        // The rewrites are the alternative's own: a copy when another may follow.
        // Only the last alternative takes the head itself, and it ends the loop.
        let Some(head) = original.take() else {
            let problem = Problem::internal("the request head was sent twice");
            return Ok(problem_response(&problem, ctx.record, true));
        };
        let mut outgoing = if plan.fallback.is_some() {
            let copy = copy_head(&head);
            original = Some(head);
            copy
        } else {
            head
        };
        plan.apply_to(ctx.peer, &mut outgoing);

        // Phase: forward (redispatched to the next server while connecting fails).
        let mut report = SendReport {
            stats: plan.stats.as_deref(),
            ..SendReport::default()
        };
        let keep_client = plan.balancer.balance() == Balance::Source;
        let sent = shared
            .upstreams
            .send_to_any(
                Picker::new(servers, keep_client, plan.timeouts.queue),
                shared.retries,
                &plan.timeouts,
                &outgoing,
                &mut body,
                |s: &Server, e| s.health.note_connect_failure(&e.to_string()),
                &mut report,
            )
            .await;
        ctx.record.note_send(&report);
        if let Ok((_, server)) = &sent {
            server.health.note_request();
            ctx.record.server = Some(server.health.upstream().clone());
        }
        match sent {
            // The next region's router had no up server either (or none with a free slot
            // in its queue time) and said so before anything reached a service; with no
            // request body sent, the next alternative may still serve (our own check of
            // it may lag behind).
            Ok((resp, _))
                if plan.fallback.is_some() && body.is_some() && declined(&resp).is_some() =>
            {
                let why = declined(&resp).unwrap_or_default();
                drop(resp);
                ctx.skipped(&plan, why, None);
                if let Some(next) = plan.fallback.take() {
                    plan = *next;
                    ctx.note_plan(&plan);
                }
            }
            Ok((resp, _)) => return Ok(relay_response(resp, ctx.record, false)),
            // No server of this alternative accepted a connection, or none freed a slot
            // within the queue time: nothing was sent, so the next alternative may have it.
            Err(err) if err.retry_safe && plan.fallback.is_some() => {
                let reason = match err.kind {
                    ErrorKind::QueueTimeout => format!("queue timeout: {}", err.kind_text()),
                    _ => format!("connect failed: {}", err.kind_text()),
                };
                ctx.skipped(&plan, &reason, None);
                if let Some(next) = plan.fallback.take() {
                    plan = *next;
                    ctx.note_plan(&plan);
                }
            }
            Err(err) => {
                tracing::warn!(
                    backend = %plan.backend_name,
                    side = ?err.side,
                    retry_safe = err.retry_safe,
                    "upstream request failed: {err}"
                );
                let queue_timeout = err.kind == ErrorKind::QueueTimeout;
                if queue_timeout {
                    ctx.record.outcome = Some(QUEUE_TIMEOUT);
                }
                let mut resp = problem_response(
                    &err.to_problem(&plan.backend_name, ConfigAt::Port(plan.port)),
                    ctx.record,
                    false,
                );
                // Nothing reached a service: a router that sent us this request may still
                // serve it from its next alternative. Every server refused: down, as with
                // the fast 503 (our checks, and so our health answers, lag behind a
                // backend's death).
                let marker = match err.kind {
                    ErrorKind::QueueTimeout => Some("full"),
                    ErrorKind::ConnectRefused => Some("down"),
                    _ => None,
                };
                if let Some(marker) = marker {
                    resp.headers_mut()
                        .insert(HEALTH_HEADER, HeaderValue::from_static(marker));
                }
                return Ok(resp);
            }
        }
    }
}

/// A remote router's fast 503, nothing sent anywhere: why its alternative did not serve
/// (every server down, or every one full for its queue time); `None` for any other answer.
fn declined<B>(resp: &http::Response<B>) -> Option<&'static str> {
    if resp.status() != http::StatusCode::SERVICE_UNAVAILABLE {
        return None;
    }
    match resp.headers().get(HEALTH_HEADER)?.as_bytes() {
        b"down" => Some("its router answered 503, every server down"),
        b"full" => Some("its router answered 503, every server full (queue timeout)"),
        _ => None,
    }
}

/// A copy of a request head (method, target, version, fields) for an alternative that
/// may not be the last: each one applies its own rewrites.
fn copy_head(head: &http::request::Parts) -> http::request::Parts {
    let mut req = http::Request::new(());
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = head.version;
    *req.headers_mut() = head.headers.clone();
    req.into_parts().0
}
