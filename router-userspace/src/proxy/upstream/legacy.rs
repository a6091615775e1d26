//! hyper-util's pooled client, for passthrough HTTP listeners: they relay
//! protocol upgrades (WebSocket), which hyper hands over only through its own
//! client. Scoped requests use the leaner client in [`super`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpStream;

use super::pool::{MAX_IDLE_PER_UPSTREAM, POOL_IDLE_MAX};
use crate::proxy::idle::IdleIo;

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
        .pool_max_idle_per_host(MAX_IDLE_PER_UPSTREAM)
        // Plan::apply decides Host (pass-through or the remote frontend); the
        // client must not invent one from the connect URI.
        .set_host(false)
        .build(connector)
}
