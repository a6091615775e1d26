//! Scoped requests, in Pingora-style phases: limits → decide (service, scope,
//! upstream) → rewrite → forward → log (when the response body ends).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{Request, Response};
use hyper::body::Incoming;

use super::upstream::Upstreams;
use super::{
    RequestStart, ambiguous_framing_problem, check_head, headers, health_response,
    problem_response, relay_response,
};
use crate::access_log::{AccessRecord, LoggedBody};
use crate::balance::Server;
use crate::decision::{Plan, RequestHead};
use crate::health::HEALTH_PATH;
use crate::problem::Problem;
use crate::routing::Router;

/// State shared by every scoped connection of one router.
#[derive(Debug)]
pub struct ScopedShared {
    pub router: Arc<Router>,
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
    fn note_plan(&mut self, plan: &Plan) {
        self.record.service_type = plan.service_type().cloned();
        self.record.region = Some(plan.region.clone());
        self.record.backend = Some(plan.backend_name.clone());
        self.record.scope_source = plan.scope_source();
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
    let mut record = AccessRecord::new(started, local, peer, &parts.method, &parts.uri);
    record.in_flight = Some(start.in_flight);
    let mut ctx = RequestCtx {
        local,
        peer,
        record,
    };

    // Phase: request limits. The body was not read, so the connection closes.
    if start.ambiguous_framing {
        return Ok(problem_response(
            &ambiguous_framing_problem(),
            ctx.record,
            true,
        ));
    }
    if let Err(problem) = check_head(&mut parts, ctx.local, shared.max_header_bytes) {
        return Ok(problem_response(&problem, ctx.record, true));
    }

    // Another router asking about one of our services: answered from our own health
    // state, never forwarded (docs/ARCHITECTURE.md §3.8).
    if parts.uri.path() == HEALTH_PATH {
        let answer = shared.router.health_answer(ctx.local, parts.uri.query());
        return Ok(health_response(answer));
    }

    // Phase: pick service, read scope, choose upstream (pure, in core logic).
    let decided = shared.router.decide(&RequestHead {
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
        Err(problem) => return Ok(problem_response(&problem, ctx.record, false)),
    };
    ctx.note_plan(&plan);

    // Phase: rewrite. Hop-by-hop first, so Plan's own headers survive.
    headers::strip_hop_by_hop(&mut parts.headers, false);
    plan.apply_to(ctx.peer, &mut parts);

    // Phase: pick servers. When every server of the target is down, answer at once
    // instead of making the client wait out a connect timeout.
    let mut servers = plan.balancer.candidates(ctx.peer.ip()).peekable();
    if servers.peek().is_none() {
        let last = plan.balancer.last_failure();
        let problem = Problem::service_unavailable(&plan.backend_name, last.as_deref());
        return Ok(problem_response(&problem, ctx.record, false));
    }

    // Phase: forward (redispatched to the next server while connecting fails).
    let sent = shared
        .upstreams
        .send_to_any(
            servers,
            |s: &Server| s.health.upstream(),
            shared.retries,
            &plan.timeouts,
            parts,
            body,
            |s: &Server, e| s.health.note_connect_failure(&e.to_string()),
        )
        .await;
    match sent {
        Ok((resp, _)) => Ok(relay_response(resp, ctx.record, false)),
        Err(err) => {
            tracing::warn!(
                backend = %plan.backend_name,
                side = ?err.side,
                retry_safe = err.retry_safe,
                "upstream request failed: {err}"
            );
            Ok(problem_response(
                &err.to_problem(&plan.backend_name),
                ctx.record,
                false,
            ))
        }
    }
}
