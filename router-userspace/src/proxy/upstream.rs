//! Upstream HTTP client: keep-alive connection pools with connect and idle timeouts.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::idle::IdleIo;
use crate::config::Timeouts;

/// Idle pooled connections kept per upstream; beyond that they are closed
/// rather than left to pile up after a burst.
const MAX_IDLE_PER_HOST: usize = 256;

/// Longest an idle pooled connection is reused. Below the 5 s keep-alive of
/// Apache (keystone, horizon) and our own request-header timeout, so the pool
/// rarely picks a connection the server is closing at that very moment.
const POOL_IDLE_MAX: Duration = Duration::from_secs(4);

/// The pooled client type used for every upstream request.
pub type UpstreamClient = Client<IdleConnector, Incoming>;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// `HttpConnector` whose streams fail after `idle` without progress, so a
/// backend that stops answering mid-body cannot hold a request forever.
#[derive(Clone, Debug)]
pub struct IdleConnector {
    http: HttpConnector,
    idle: Duration,
}

impl Connection for IdleIo<TcpStream> {
    fn connected(&self) -> Connected {
        self.get_ref().connected()
    }
}

impl tower_service::Service<http::Uri> for IdleConnector {
    type Response = TokioIo<IdleIo<TcpStream>>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.http.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, dst: http::Uri) -> Self::Future {
        let connecting = self.http.call(dst);
        let idle = self.idle;
        Box::pin(async move {
            let io = connecting.await?;
            Ok(TokioIo::new(IdleIo::new(io.into_inner(), idle)))
        })
    }
}

/// Builds one pooled client for a connect/idle timeout pair.
pub fn client(connect: Duration, idle: Duration) -> UpstreamClient {
    let mut http = HttpConnector::new();
    http.set_connect_timeout(Some(connect));
    http.set_nodelay(true);
    let connector = IdleConnector { http, idle };
    Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(idle.min(POOL_IDLE_MAX))
        .pool_max_idle_per_host(MAX_IDLE_PER_HOST)
        // Plan::apply decides Host (pass-through or the remote frontend); the
        // client must not invent one from the connect URI.
        .set_host(false)
        .build(connector)
}

/// One pool per distinct timeout pair (listeners sharing timeouts share a pool).
#[derive(Debug, Default)]
pub struct Upstreams {
    clients: Mutex<HashMap<(Duration, Duration), UpstreamClient>>,
}

impl Upstreams {
    pub fn new<'a>(timeouts: impl IntoIterator<Item = &'a Timeouts>) -> Self {
        let upstreams = Upstreams::default();
        for t in timeouts {
            upstreams.get(t);
        }
        upstreams
    }

    /// The pool for these timeouts, created on first use so that every pair
    /// keeps its connections across requests.
    pub fn get(&self, t: &Timeouts) -> UpstreamClient {
        let key = (t.connect, t.idle);
        match self.clients.lock() {
            Ok(mut clients) => clients
                .entry(key)
                .or_insert_with(|| client(t.connect, t.idle))
                .clone(),
            // A panic elsewhere while holding the lock: serve unpooled rather than fail.
            Err(_) => client(t.connect, t.idle),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_timeouts_share_one_pool() {
        let a = Timeouts::default();
        let b = Timeouts {
            idle: Duration::from_secs(6 * 3600),
            ..a
        };
        let ups = Upstreams::new([&a, &a, &b]);
        assert_eq!(ups.clients.lock().unwrap().len(), 2);
        let c = Timeouts {
            connect: Duration::from_secs(1),
            ..a
        };
        ups.get(&c);
        ups.get(&c);
        assert_eq!(ups.clients.lock().unwrap().len(), 3);
    }
}
