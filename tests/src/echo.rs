//! In-process echo backend: answers every request with JSON describing what
//! it received, plus a few special paths the suites use to provoke behaviour.
//!
//! - `/__hang`: never answers (timeouts);
//! - `/__status/NNN`: answers with status NNN (failing HTTP health checks);
//! - `/__gate`: signals arrival, then waits for the test to release it (shutdown);
//! - `/__download?bytes=N`: streams N bytes of the shared test pattern;
//! - `/__download_gated?bytes=N`: the first chunk, then the rest once released;
//! - `/__progress`: signals arrival as soon as the first body bytes arrive;
//! - any request with `Connection: upgrade`: 101, then echoes raw bytes.
//!
//! [`EchoBackend::start_tls`] serves the same over TLS.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use scope_router::tls::{CertStore, CertificateFiles, Profile, load_identity, server_config};
use serde_json::json;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;

use crate::pattern;

/// Lets a test hold a request inside the backend.
#[derive(Debug, Default)]
pub struct Gate {
    pub arrived: Notify,
    pub release: Notify,
    /// `METHOD path?query` of every request received, in order.
    pub seen: std::sync::Mutex<Vec<String>>,
}

impl Gate {
    /// Until a gated request has arrived; panics after [`crate::client::STALL`], so a
    /// request the router never forwards fails the test instead of hanging it.
    pub async fn wait_arrived(&self) {
        tokio::time::timeout(crate::client::STALL, self.arrived.notified())
            .await
            .expect("the gated request never reached the backend");
    }

    pub fn seen(&self) -> Vec<String> {
        self.seen.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

/// A running echo backend; stops when dropped.
#[derive(Debug)]
pub struct EchoBackend {
    pub addr: SocketAddr,
    pub name: String,
    pub gate: Arc<Gate>,
    task: JoinHandle<()>,
}

impl Drop for EchoBackend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl EchoBackend {
    /// Binds `addr` (use port 0) and serves until dropped.
    pub async fn start(addr: SocketAddr, name: &str) -> std::io::Result<EchoBackend> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let gate = Arc::new(Gate::default());
        let name_arc: Arc<str> = Arc::from(name);
        let task = tokio::spawn(serve(listener, name_arc, gate.clone()));
        Ok(EchoBackend {
            addr,
            name: name.to_owned(),
            gate,
            task,
        })
    }

    /// [`EchoBackend::start`] over TLS only, presenting `certificate` (PEM chain, leaf
    /// first) with `key`; TLS 1.2 and 1.3 (the router's `intermediate` profile).
    pub async fn start_tls(
        addr: SocketAddr,
        name: &str,
        certificate: &Path,
        key: &Path,
    ) -> std::io::Result<EchoBackend> {
        let files = CertificateFiles {
            certificate: certificate.to_owned(),
            key: key.to_owned(),
        };
        let (identity, _) =
            load_identity(&files, SystemTime::now()).map_err(std::io::Error::other)?;
        let config = server_config(Profile::Intermediate, CertStore::new(identity, vec![]))
            .map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let gate = Arc::new(Gate::default());
        let task = tokio::spawn(serve_with(
            listener,
            Some(TlsAcceptor::from(config)),
            Arc::from(name),
            gate.clone(),
        ));
        Ok(EchoBackend {
            addr,
            name: name.to_owned(),
            gate,
            task,
        })
    }
}

/// Accept loop; runs until the task is aborted or accept fails.
pub async fn serve(listener: TcpListener, name: Arc<str>, gate: Arc<Gate>) {
    serve_with(listener, None, name, gate).await;
}

/// [`serve`], each connection over TLS first when `tls` is set (a failed handshake
/// closes it).
async fn serve_with(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    name: Arc<str>,
    gate: Arc<Gate>,
) {
    while let Ok((stream, _)) = listener.accept().await {
        let (name, gate, tls) = (name.clone(), gate.clone(), tls.clone());
        tokio::spawn(async move {
            let svc = service_fn(move |req| echo(req, name.clone(), gate.clone()));
            let http = http1::Builder::new();
            let _ = match tls {
                None => {
                    http.serve_connection(TokioIo::new(stream), svc)
                        .with_upgrades()
                        .await
                }
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(tls) => {
                        http.serve_connection(TokioIo::new(tls), svc)
                            .with_upgrades()
                            .await
                    }
                    Err(_) => return,
                },
            };
        });
    }
}

type EchoBody = BoxBody<Bytes, Infallible>;

fn full(status: StatusCode, body: impl Into<Bytes>) -> Response<EchoBody> {
    let mut r = Response::new(Full::new(body.into()).boxed());
    *r.status_mut() = status;
    r
}

async fn echo(
    mut req: Request<Incoming>,
    name: Arc<str>,
    gate: Arc<Gate>,
) -> Result<Response<EchoBody>, Infallible> {
    let path = req.uri().path().to_owned();
    if let Ok(mut seen) = gate.seen.lock() {
        seen.push(format!("{} {}", req.method(), req.uri()));
    }
    // `/__status/NNN`: answers that status (health checks that fail by status).
    if let Some(code) = path
        .strip_prefix("/__status/")
        .and_then(|c| c.parse::<u16>().ok())
        .and_then(|c| StatusCode::from_u16(c).ok())
    {
        return Ok(full(code, format!("status {code} as asked")));
    }
    if path == "/__hang" {
        std::future::pending::<()>().await;
    }
    if path == "/__gate" {
        gate.arrived.notify_one();
        gate.release.notified().await;
    }
    if path == "/__download" || path == "/__download_gated" {
        let total: u64 = req
            .uri()
            .query()
            .and_then(|q| q.strip_prefix("bytes="))
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        let gated = path == "/__download_gated";
        let gate = gate.clone();
        let chunks = pattern::chunks(total).enumerate();
        let stream =
            futures_util::stream::unfold((chunks, gate), move |(mut it, gate)| async move {
                let (i, c) = it.next()?;
                if gated && i == 1 {
                    gate.release.notified().await;
                }
                Some((Ok(hyper::body::Frame::data(c)), (it, gate)))
            });
        let mut r = Response::new(BodyExt::boxed(StreamBody::new(stream)));
        r.headers_mut().insert(
            "x-backend",
            name.as_ref()
                .parse()
                .unwrap_or(http::HeaderValue::from_static("?")),
        );
        return Ok(r);
    }
    let is_upgrade = req.headers().contains_key(http::header::UPGRADE)
        && req
            .headers()
            .get(http::header::CONNECTION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade"));
    if is_upgrade {
        let proto = req.headers().get(http::header::UPGRADE).cloned();
        let on_upgrade = hyper::upgrade::on(&mut req);
        let greeting = format!("hello from {name}\n");
        tokio::spawn(async move {
            if let Ok(upgraded) = on_upgrade.await {
                let mut io = TokioIo::new(upgraded);
                let _ = io.write_all(greeting.as_bytes()).await;
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let mut r = full(StatusCode::SWITCHING_PROTOCOLS, Bytes::new());
        if let Some(p) = proto {
            r.headers_mut().insert(http::header::UPGRADE, p);
        }
        r.headers_mut().insert(
            http::header::CONNECTION,
            http::HeaderValue::from_static("upgrade"),
        );
        return Ok(r);
    }

    let mut headers = serde_json::Map::new();
    for (k, v) in req.headers() {
        let entry = headers
            .entry(k.as_str().to_owned())
            .or_insert_with(|| json!([]));
        if let Some(list) = entry.as_array_mut() {
            list.push(json!(String::from_utf8_lossy(v.as_bytes())));
        }
    }
    let method = req.method().to_string();
    let path_q = req
        .uri()
        .path_and_query()
        .map(|p| p.to_string())
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    let mut body = req.into_body();
    let mut hasher = Sha256::new();
    let mut len: u64 = 0;
    let mut body_error = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(f) => {
                if let Some(d) = f.data_ref() {
                    if len == 0 && !d.is_empty() && path == "/__progress" {
                        gate.arrived.notify_one();
                    }
                    hasher.update(d);
                    len += d.len() as u64;
                }
            }
            Err(e) => {
                body_error = Some(e.to_string());
                break;
            }
        }
    }
    let out = json!({
        "backend": name.as_ref(),
        "method": method,
        "path": path_q,
        "version": version,
        "headers": headers,
        "body_len": len,
        "body_sha256": hex(&hasher.finalize()),
        "body_error": body_error,
    });
    let mut r = full(StatusCode::OK, out.to_string());
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    // As every OpenStack API does; the router's access line carries it.
    if let Ok(id) = http::HeaderValue::from_str(&format!("req-{name}")) {
        r.headers_mut().insert("x-openstack-request-id", id);
    }
    Ok(r)
}

/// Lower-case hex of a digest.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A raw TCP echo server (stands in for MariaDB behind a `tcp` passthrough).
#[derive(Debug)]
pub struct TcpEcho {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for TcpEcho {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TcpEcho {
    pub async fn start(addr: SocketAddr) -> std::io::Result<TcpEcho> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        Ok(TcpEcho { addr, task })
    }
}
