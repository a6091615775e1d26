//! Test clients: hyper over one connection (keep-alive), and raw TCP for
//! requests hyper would refuse to send.

use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
pub type ClientBody = BoxBody<Bytes, BoxError>;

/// A response read to the end.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "response body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The router's own answer in the OpenStack shape: asserts the status, the JSON
    /// content type, `error.code` and a title, and returns `error.message`.
    pub fn problem(&self, code: u16) -> String {
        assert_eq!(
            self.status.as_u16(),
            code,
            "{}",
            String::from_utf8_lossy(&self.body)
        );
        assert_eq!(
            self.headers
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/json")
        );
        let v = self.json();
        assert_eq!(v["error"]["code"], code);
        assert!(
            v["error"]["title"].as_str().is_some_and(|t| !t.is_empty()),
            "{v}"
        );
        let message = v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(!message.is_empty(), "{v}");
        message
    }

    /// What the echo backend saw.
    pub fn echo(&self) -> Echo {
        Echo(self.json())
    }
}

/// The echo backend's JSON view of the request it received.
#[derive(Debug, Clone)]
pub struct Echo(pub Value);

impl Echo {
    pub fn backend(&self) -> &str {
        self.0["backend"].as_str().unwrap_or("")
    }
    pub fn path(&self) -> &str {
        self.0["path"].as_str().unwrap_or("")
    }
    /// All values of a header (lower-case name) as the backend saw them.
    pub fn header_all(&self, name: &str) -> Vec<String> {
        self.0["headers"][name]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default()
    }
    /// The single value of a header; `None` when absent.
    pub fn header(&self, name: &str) -> Option<String> {
        let all = self.header_all(name);
        assert!(
            all.len() <= 1,
            "header {name} appears {} times: {all:?}",
            all.len()
        );
        all.into_iter().next()
    }
    pub fn body_len(&self) -> u64 {
        self.0["body_len"].as_u64().unwrap_or(u64::MAX)
    }
    pub fn body_sha256(&self) -> &str {
        self.0["body_sha256"].as_str().unwrap_or("")
    }
}

/// One HTTP/1.1 client connection, reused across requests.
pub struct Conn {
    sender: SendRequest<ClientBody>,
    pub addr: SocketAddr,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Result<Conn, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        let (sender, conn) = http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(Conn { sender, addr })
    }

    /// Over TLS, trusting the CA certificate in `ca` (PEM) and checking the certificate
    /// is valid for `addr`'s IP address; also returns the leaf certificate served (DER).
    pub async fn open_tls(
        addr: SocketAddr,
        ca: &std::path::Path,
    ) -> Result<(Conn, Vec<u8>), BoxError> {
        use rustls::pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_file_iter(ca)? {
            roots.add(cert?)?;
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await?;
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name, tcp)
            .await?;
        let leaf = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .map(|c| c.to_vec())
            .ok_or("the server sent no certificate")?;
        let (sender, conn) = http1::handshake(TokioIo::new(tls)).await?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok((Conn { sender, addr }, leaf))
    }

    /// Sends and reads the whole response.
    pub async fn send(&mut self, req: Request<ClientBody>) -> Result<Reply, BoxError> {
        let resp = self.send_head(req).await?;
        let (parts, body) = resp.into_parts();
        let body = bounded("the response body", body.collect())
            .await??
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends and returns the response with its body still streaming.
    pub async fn send_head(
        &mut self,
        req: Request<ClientBody>,
    ) -> Result<http::Response<hyper::body::Incoming>, BoxError> {
        self.sender.ready().await?;
        Ok(bounded("the response head", self.sender.send_request(req)).await??)
    }

    /// Whether the server has closed this connection.
    pub fn is_closed(&self) -> bool {
        self.sender.is_closed()
    }
}

/// A request to `addr` with `Host` set as a real client would.
pub fn request(method: &str, addr: SocketAddr, path: &str) -> http::request::Builder {
    Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::HOST, addr.to_string())
}

/// Boxes an in-memory body.
pub fn body(bytes: impl Into<Bytes>) -> ClientBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

pub fn empty() -> ClientBody {
    body(Bytes::new())
}

/// One request on a fresh connection.
pub async fn send(addr: SocketAddr, req: Request<ClientBody>) -> Result<Reply, BoxError> {
    Conn::open(addr).await?.send(req).await
}

/// `GET path` with extra headers on a fresh connection.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Reply, BoxError> {
    let mut b = request("GET", addr, path);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(addr, b.body(empty())?).await
}

/// Writes raw bytes, then reads until the server closes the connection.
pub async fn raw(addr: SocketAddr, bytes: &[u8]) -> Result<String, BoxError> {
    let mut s = TcpStream::connect(addr).await?;
    s.write_all(bytes).await?;
    let mut out = Vec::new();
    bounded("the end of the connection", s.read_to_end(&mut out)).await??;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// How long any wait of a test client may last: far above anything a test asks of the
/// router, so that only a stall (a proxy that buffers a stream or never answers) reaches
/// it, and then the test fails with what it waited for instead of hanging the suite.
pub const STALL: std::time::Duration = std::time::Duration::from_secs(30);

/// `fut`, or an error naming `what` after [`STALL`].
pub async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> Result<T, BoxError> {
    tokio::time::timeout(STALL, fut)
        .await
        .map_err(|_| format!("no {what} within {STALL:?}: the router stalled").into())
}
