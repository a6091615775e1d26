//! Listening sockets: VIP:ports bound directly, or one socket handed in from outside.
//!
//! The proxy never trusts the address a listener was bound to: with sk_lookup
//! steering a single socket receives connections for many VIP:ports, so every
//! accepted stream is routed by its own `local_addr()` (the original destination).

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};

use socket2::{Domain, Protocol, SockAddr, Socket, Type};
use tokio::net::{TcpListener, TcpStream};

/// Backlog for directly bound listeners; generous because a VIP takes bursts
/// from whole regions at once and the kernel caps it at somaxconn anyway.
const BACKLOG: i32 = 4096;

/// Errors while preparing a listening socket.
#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error(
        "cannot bind {addr} ({step}); check that no other process (e.g. HAProxy) holds that \
         address and port, and that the router may bind it"
    )]
    Bind {
        addr: SocketAddr,
        step: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("cannot adopt the listening socket handed in ({step})")]
    Adopt {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// How a listener came to exist; only used for logs and `status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Bound by the router to one VIP:port.
    Bound,
    /// Handed in (e.g. the sk_lookup-steered socket serving many VIP:ports).
    HandedIn,
    /// Bound by the router this one replaced, and handed over on a restart.
    Inherited,
}

/// Listening sockets a predecessor handed over on a restart (`crate::handover`): a
/// configured address found here is served from the socket that already listens there,
/// with its queue of not yet accepted connections, instead of being bound anew.
#[derive(Debug, Default)]
pub struct Inherited {
    sockets: Vec<std::net::TcpListener>,
}

impl Inherited {
    pub fn new(sockets: Vec<std::net::TcpListener>) -> Self {
        Self { sockets }
    }

    /// The handed-over socket listening on exactly `addr`, if any.
    pub fn take(&mut self, addr: SocketAddr) -> Option<std::net::TcpListener> {
        let at = self
            .sockets
            .iter()
            .position(|s| s.local_addr().is_ok_and(|local| local == addr))?;
        Some(self.sockets.swap_remove(at))
    }

    /// Addresses handed over that nothing took (the new configuration dropped them).
    pub fn unclaimed(&self) -> Vec<SocketAddr> {
        self.sockets
            .iter()
            .filter_map(|s| s.local_addr().ok())
            .collect()
    }
}

/// One listening socket, registered with the tokio reactor.
#[derive(Debug)]
pub struct Listener {
    inner: TcpListener,
    origin: Origin,
    addr: SocketAddr,
}

/// A listening, non-blocking std socket bound like [`Listener::bind`] binds,
/// with a large backlog. This is also how to create the sk_lookup-steered
/// socket (e.g. on `127.0.0.1:0`): give its fd to the eBPF loader, then hand
/// it to [`crate::proxy::StartOptions::handed_in`]. Needs no runtime.
pub fn bind_std(addr: SocketAddr) -> Result<std::net::TcpListener, ListenerError> {
    let err = |step| move |source| ListenerError::Bind { addr, step, source };
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
        .map_err(err("socket"))?;
    socket
        .set_reuse_address(true)
        .map_err(err("SO_REUSEADDR"))?;
    match addr {
        SocketAddr::V4(_) => socket.set_freebind(true).map_err(err("IP_FREEBIND"))?,
        SocketAddr::V6(_) => socket
            .set_freebind_ipv6(true)
            .map_err(err("IPV6_FREEBIND"))?,
    }
    socket.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
    socket.bind(&SockAddr::from(addr)).map_err(err("bind"))?;
    socket.listen(BACKLOG).map_err(err("listen"))?;
    Ok(socket.into())
}

impl Listener {
    /// Binds `addr` with SO_REUSEADDR (restart while old connections linger in
    /// TIME_WAIT) and IP_FREEBIND (the VIP may not be configured yet; the
    /// address manager adds it moments later). Must run inside a tokio runtime.
    pub fn bind(addr: SocketAddr) -> Result<Listener, ListenerError> {
        let err = |step| move |source| ListenerError::Bind { addr, step, source };
        let std_listener = bind_std(addr)?;
        let bound = std_listener.local_addr().map_err(err("getsockname"))?;
        let inner = TcpListener::from_std(std_listener).map_err(err("register with tokio"))?;
        Ok(Listener {
            inner,
            origin: Origin::Bound,
            addr: bound,
        })
    }

    /// The socket handed over for `addr` when `inherited` has one, else [`Listener::bind`].
    pub fn bind_or_inherit(
        addr: SocketAddr,
        inherited: &mut Inherited,
    ) -> Result<Listener, ListenerError> {
        match inherited.take(addr) {
            Some(socket) => {
                let mut listener = Listener::from_std(socket)?;
                listener.origin = Origin::Inherited;
                Ok(listener)
            }
            None => Listener::bind(addr),
        }
    }

    /// A second descriptor of the same listening socket, for a restart to hand over:
    /// the socket lives on while either is open.
    pub fn dup(&self) -> io::Result<OwnedFd> {
        self.inner.as_fd().try_clone_to_owned()
    }

    /// Adopts a socket that is already bound and listening, such as the one the
    /// kernel side placed in the sk_lookup SOCKMAP. Must run inside a tokio runtime.
    pub fn from_std(listener: std::net::TcpListener) -> Result<Listener, ListenerError> {
        let err = |step| move |source| ListenerError::Adopt { step, source };
        listener.set_nonblocking(true).map_err(err("O_NONBLOCK"))?;
        let addr = listener.local_addr().map_err(err("getsockname"))?;
        let inner = TcpListener::from_std(listener).map_err(err("register with tokio"))?;
        Ok(Listener {
            inner,
            origin: Origin::HandedIn,
            addr,
        })
    }

    /// The address the socket is bound to (not necessarily what clients dialled).
    pub fn bound_addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn origin(&self) -> Origin {
        self.origin
    }

    /// Accepts one connection and returns it with its original destination
    /// (`local`) and the client address (`peer`). Errors are those of the
    /// listening socket itself (e.g. EMFILE); a connection that dies between
    /// accept and setup is skipped, so it can never stall the accept loop.
    pub async fn accept(&self) -> io::Result<Accepted> {
        loop {
            let (stream, peer) = self.inner.accept().await?;
            let local = match stream.local_addr() {
                Ok(local) => local,
                Err(e) => {
                    tracing::debug!(%peer, "connection gone before setup: {e}");
                    continue;
                }
            };
            // Small request/response exchanges dominate API traffic; Nagle only
            // adds latency. Failing to set it is harmless.
            let _ = stream.set_nodelay(true);
            return Ok(Accepted {
                stream,
                local,
                peer,
            });
        }
    }
}

/// An accepted connection with the addresses routing needs.
#[derive(Debug)]
pub struct Accepted {
    pub stream: TcpStream,
    pub local: SocketAddr,
    pub peer: SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bind_reports_the_real_port_and_accepts() {
        let listener = Listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.bound_addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(listener.origin(), Origin::Bound);
        let client = tokio::spawn(async move { TcpStream::connect(addr).await.unwrap() });
        let accepted = listener.accept().await.unwrap();
        let client = client.await.unwrap();
        assert_eq!(accepted.local, addr);
        assert_eq!(accepted.peer, client.local_addr().unwrap());
    }

    #[tokio::test]
    async fn freebind_allows_an_address_not_configured_here() {
        // 192.0.2.0/24 (TEST-NET-1) is never assigned locally; binding only
        // succeeds because of IP_FREEBIND. No packet is sent to it.
        let listener = Listener::bind("192.0.2.77:0".parse().unwrap()).unwrap();
        assert_eq!(listener.bound_addr().ip().to_string(), "192.0.2.77");
    }

    #[tokio::test]
    async fn handed_in_socket_keeps_its_address() {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = std_listener.local_addr().unwrap();
        let listener = Listener::from_std(std_listener).unwrap();
        assert_eq!(listener.origin(), Origin::HandedIn);
        assert_eq!(listener.bound_addr(), addr);
    }

    #[tokio::test]
    async fn an_inherited_socket_is_served_as_it_is_and_others_are_bound() {
        let handed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = handed.local_addr().unwrap();
        let other = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let other_addr = other.local_addr().unwrap();
        // A connection queued before the handover is accepted through the new listener.
        let queued = std::net::TcpStream::connect(addr).unwrap();
        let mut inherited = Inherited::new(vec![handed, other]);
        let listener = Listener::bind_or_inherit(addr, &mut inherited).unwrap();
        assert_eq!(listener.origin(), Origin::Inherited);
        let accepted = listener.accept().await.unwrap();
        assert_eq!(accepted.peer, queued.local_addr().unwrap());
        let fresh =
            Listener::bind_or_inherit("127.0.0.1:0".parse().unwrap(), &mut inherited).unwrap();
        assert_eq!(fresh.origin(), Origin::Bound);
        assert_eq!(inherited.unclaimed(), vec![other_addr]);
    }

    #[tokio::test]
    async fn bind_conflict_names_the_address() {
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = first.local_addr().unwrap();
        let err = Listener::bind(addr).unwrap_err().to_string();
        assert!(err.contains(&addr.to_string()), "{err}");
    }
}
