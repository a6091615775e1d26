//! Zero-downtime restart (docs/ARCHITECTURE.md §14.6): the running router hands its
//! listening sockets and its ownership locks to a new router process over a unix socket
//! (`SCM_RIGHTS`), then stops accepting and drains, while the new one serves.
//!
//! Handing over the sockets themselves, rather than binding new ones, is what makes it
//! lossless: a listening socket is one kernel object whichever process holds it, so a
//! connection in its accept queue at the switch is accepted by the new router, and the
//! sk_lookup SOCKMAP keeps pointing at a socket that never closed. The VIP lock and the
//! eBPF pin-directory lock are `flock`s, which belong to the open file description: the
//! descriptor passed over carries the lock, so ownership moves without a moment where
//! nobody (or a third router) holds it, and the VIP is never removed.
//!
//! The exchange, one `SOCK_SEQPACKET` message each way at a time (JSON):
//!
//! 1. successor → running: `hello` (its pid and version);
//! 2. running → successor: `offer`, with every descriptor attached and described;
//! 3. successor → running: `ready` once it serves (or `failed`, or it just goes away:
//!    the running router then carries on as if nothing happened);
//! 4. running → successor: `released` once it has stopped accepting and has told systemd
//!    the new main pid; the successor then says READY=1 and the old router drains.
//!
//! Only root or the router's own user may connect (`SO_PEERCRED`); the socket is 0600.

use std::fs;
use std::io::{self, IoSlice, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::sys::socket::{
    self, AddressFamily, Backlog, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag,
    SockType, UnixAddr, sockopt,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::listener::Inherited;

/// How long either side waits for the other's next message. The successor's setup
/// between `offer` and `ready` (eBPF load, VIP adoption, binds) takes well under a second
/// on a healthy node; this only bounds a wedged one, as systemd's start timeout would.
const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// Largest message; an offer describes a few dozen sockets in a few KiB.
const MAX_MESSAGE: usize = 64 * 1024;

/// Most descriptors in one offer (the kernel's SCM_MAX_FD is 253).
const MAX_FDS: usize = 250;

/// `<state_dir>/handover-<region>.sock`: beside the health state file, which is how
/// `reload` and `restart` find the running router of a region.
pub fn socket_path(state_dir: &Path, region: &str) -> PathBuf {
    state_dir.join(format!(
        "handover-{}.sock",
        crate::health_state::file_name_safe(region)
    ))
}

/// Why a handover did not happen; each says what to do next.
#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error(
        "no running router to take over: nothing answers on {} ({source}); start one with \
         `scope-router run`, or give the same --health-state-dir as the running router",
        path.display()
    )]
    NoRouter {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "another router of this region already answers on {}: stop it, or replace it \
         with `scope-router restart`",
        path.display()
    )]
    InUse { path: PathBuf },
    #[error(
        "cannot listen for restarts on {}: make the state directory writable by the \
         router",
        path.display()
    )]
    Listen {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the running router refused the handover: {reason}")]
    Refused { reason: String },
    #[error(
        "handover {step}: unexpected message ({detail}); run the same or a newer version \
         of scope-router for the restart"
    )]
    Protocol { step: &'static str, detail: String },
    #[error("handover {step} failed")]
    Io {
        step: &'static str,
        #[source]
        source: io::Error,
    },
}

/// What a handed-over descriptor is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// The socket eBPF steers every VIP:port to.
    Steered,
    /// A proxy listener bound on its own address (scoped, passthrough, unsteerable).
    Listener,
    /// An admin listener.
    Admin,
    /// The VIP's owner lock file, locked.
    VipLock,
    /// The eBPF pin directory, locked.
    PinLock,
}

/// One descriptor with what it is.
#[derive(Debug)]
pub struct Item {
    pub kind: Kind,
    /// The address a socket is bound to; `None` for locks.
    pub local: Option<SocketAddr>,
    pub fd: OwnedFd,
}

#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    kind: Kind,
    local: Option<SocketAddr>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Message {
    Hello {
        pid: u32,
        version: String,
    },
    Offer {
        pid: u32,
        version: String,
        entries: Vec<Entry>,
        /// systemd's watchdog interval for the service, which the successor inherits
        /// with the main pid (its environment came from `restart`, not from systemd).
        watchdog_usec: Option<u64>,
        /// The running router is the VRRP master: the successor starts as master.
        #[serde(default)]
        vrrp_master: bool,
    },
    Refused {
        reason: String,
    },
    Ready,
    Failed {
        reason: String,
    },
    Released,
}

impl Message {
    fn name(&self) -> &'static str {
        match self {
            Message::Hello { .. } => "hello",
            Message::Offer { .. } => "offer",
            Message::Refused { .. } => "refused",
            Message::Ready => "ready",
            Message::Failed { .. } => "failed",
            Message::Released => "released",
        }
    }
}

/// What the running router gives its successor.
#[derive(Debug, Default)]
pub struct Offer {
    pub items: Vec<Item>,
    pub watchdog: Option<Duration>,
    /// This router is the VRRP master (the successor then starts as one).
    pub vrrp_master: bool,
}

/// What a successor received.
#[derive(Debug)]
pub struct Received {
    /// The pid of the router being replaced.
    pub predecessor: u32,
    /// Its version, for the log.
    pub version: String,
    pub watchdog: Option<Duration>,
    /// The predecessor was the VRRP master: carry on as master, no election.
    pub vrrp_master: bool,
    items: Vec<Item>,
}

impl Received {
    /// The steered socket, if the predecessor had one.
    pub fn take_steered(&mut self) -> Option<std::net::TcpListener> {
        self.take(Kind::Steered).map(std::net::TcpListener::from)
    }

    /// A lock the predecessor held.
    pub fn take_lock(&mut self, kind: Kind) -> Option<OwnedFd> {
        self.take(kind)
    }

    /// Every listening socket of `kind` (proxy listeners or admin listeners).
    pub fn take_listeners(&mut self, kind: Kind) -> Inherited {
        let mut sockets = Vec::new();
        while let Some(fd) = self.take(kind) {
            sockets.push(std::net::TcpListener::from(fd));
        }
        Inherited::new(sockets)
    }

    fn take(&mut self, kind: Kind) -> Option<OwnedFd> {
        let at = self.items.iter().position(|i| i.kind == kind)?;
        Some(self.items.swap_remove(at).fd)
    }
}

/// One end of a handover connection.
#[derive(Debug)]
struct Conn {
    fd: OwnedFd,
}

impl Conn {
    fn send(
        &self,
        step: &'static str,
        message: &Message,
        fds: &[BorrowedFd<'_>],
    ) -> Result<(), HandoverError> {
        let body = serde_json::to_vec(message).map_err(|e| HandoverError::Protocol {
            step,
            detail: e.to_string(),
        })?;
        let raw: Vec<RawFd> = fds.iter().map(AsRawFd::as_raw_fd).collect();
        let rights = [ControlMessage::ScmRights(&raw)];
        let cmsgs: &[ControlMessage<'_>] = if raw.is_empty() { &[] } else { &rights };
        socket::sendmsg::<()>(
            self.fd.as_raw_fd(),
            &[IoSlice::new(&body)],
            cmsgs,
            MsgFlags::MSG_NOSIGNAL,
            None,
        )
        .map_err(|e| HandoverError::Io {
            step,
            source: e.into(),
        })?;
        Ok(())
    }

    fn recv(&self, step: &'static str) -> Result<(Message, Vec<OwnedFd>), HandoverError> {
        let mut body = vec![0u8; MAX_MESSAGE];
        let mut space = nix::cmsg_space!([RawFd; MAX_FDS]);
        let (len, fds) = {
            let mut iov = [IoSliceMut::new(&mut body)];
            let msg = socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut space),
                MsgFlags::MSG_CMSG_CLOEXEC,
            )
            .map_err(|e| HandoverError::Io {
                step,
                source: match e {
                    nix::errno::Errno::EAGAIN => io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!(
                            "no answer within {}",
                            humantime::format_duration(STEP_TIMEOUT)
                        ),
                    ),
                    e => e.into(),
                },
            })?;
            let mut fds = Vec::new();
            for cmsg in msg.cmsgs().map_err(|e| HandoverError::Io {
                step,
                source: e.into(),
            })? {
                if let ControlMessageOwned::ScmRights(raw) = cmsg {
                    // SAFETY: SCM_RIGHTS installed these descriptors in this process just
                    // now; nothing else owns them.
                    fds.extend(
                        raw.into_iter()
                            .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                    );
                }
            }
            if msg
                .flags
                .intersects(MsgFlags::MSG_TRUNC | MsgFlags::MSG_CTRUNC)
            {
                return Err(HandoverError::Protocol {
                    step,
                    detail: "message or descriptors truncated".to_owned(),
                });
            }
            (msg.bytes, fds)
        };
        if len == 0 {
            return Err(HandoverError::Io {
                step,
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the other router closed the connection",
                ),
            });
        }
        let message =
            serde_json::from_slice(&body[..len]).map_err(|e| HandoverError::Protocol {
                step,
                detail: e.to_string(),
            })?;
        Ok((message, fds))
    }

    fn set_timeout(&self, step: &'static str, timeout: Duration) -> Result<(), HandoverError> {
        let tv =
            nix::sys::time::TimeVal::new(i64::try_from(timeout.as_secs()).unwrap_or(i64::MAX), 0);
        socket::setsockopt(&self.fd, sockopt::ReceiveTimeout, &tv).map_err(|e| HandoverError::Io {
            step,
            source: e.into(),
        })
    }
}

fn seqpacket() -> io::Result<OwnedFd> {
    Ok(socket::socket(
        AddressFamily::Unix,
        SockType::SeqPacket,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?)
}

fn connect(path: &Path) -> io::Result<Conn> {
    let fd = seqpacket()?;
    socket::connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    Ok(Conn { fd })
}

// ------------------------------------------------------------------------- successor

/// The new router's side, between receiving the offer and taking over.
#[derive(Debug)]
pub struct Successor {
    conn: Conn,
    predecessor: u32,
}

/// Asks the router answering on `path` for its sockets and locks. Blocking: called before
/// the runtime exists, since eBPF and the VIP are set up before it.
pub fn take_over(path: &Path) -> Result<(Successor, Received), HandoverError> {
    let conn = connect(path).map_err(|source| HandoverError::NoRouter {
        path: path.to_owned(),
        source,
    })?;
    conn.set_timeout("waiting for the offer", STEP_TIMEOUT)?;
    conn.send(
        "sending hello",
        &Message::Hello {
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
        },
        &[],
    )?;
    let (message, fds) = conn.recv("waiting for the offer")?;
    match message {
        Message::Offer {
            pid,
            version,
            entries,
            watchdog_usec,
            vrrp_master,
        } => {
            if entries.len() != fds.len() {
                return Err(HandoverError::Protocol {
                    step: "receiving the offer",
                    detail: format!("{} descriptors for {} entries", fds.len(), entries.len()),
                });
            }
            let items = entries
                .into_iter()
                .zip(fds)
                .map(|(e, fd)| Item {
                    kind: e.kind,
                    local: e.local,
                    fd,
                })
                .collect();
            Ok((
                Successor {
                    conn,
                    predecessor: pid,
                },
                Received {
                    predecessor: pid,
                    version,
                    watchdog: watchdog_usec.map(Duration::from_micros),
                    vrrp_master,
                    items,
                },
            ))
        }
        Message::Refused { reason } => Err(HandoverError::Refused { reason }),
        other => Err(HandoverError::Protocol {
            step: "waiting for the offer",
            detail: format!("got `{}`", other.name()),
        }),
    }
}

impl Successor {
    /// The router being replaced.
    pub fn predecessor(&self) -> u32 {
        self.predecessor
    }

    /// Says this router serves, and waits until the predecessor has stopped accepting and
    /// handed systemd's main pid over. From then on this router is the one.
    pub fn ready(self) -> Result<(), HandoverError> {
        self.conn.send("sending ready", &Message::Ready, &[])?;
        match self.conn.recv("waiting for the release")?.0 {
            Message::Released => Ok(()),
            Message::Refused { reason } => Err(HandoverError::Refused { reason }),
            other => Err(HandoverError::Protocol {
                step: "waiting for the release",
                detail: format!("got `{}`", other.name()),
            }),
        }
    }

    /// Tells the predecessor why this router gives up; it then carries on serving.
    pub fn abandon(self, reason: &str) {
        let _ = self.conn.send(
            "sending failed",
            &Message::Failed {
                reason: reason.to_owned(),
            },
            &[],
        );
    }
}

// --------------------------------------------------------------------- running router

/// What the handover thread asks of the router's main loop.
#[derive(Debug)]
pub enum Takeover {
    /// A successor asks for the sockets and locks: reply with them, or why not.
    Offer {
        successor: u32,
        reply: oneshot::Sender<Result<Offer, String>>,
    },
    /// The successor serves: stop accepting, hand the main pid over, then reply.
    Ready {
        successor: u32,
        reply: oneshot::Sender<()>,
    },
}

/// The listening handover socket of a running router.
#[derive(Debug)]
pub struct HandoverListener {
    fd: OwnedFd,
    path: PathBuf,
    /// The inode bound, so that only our own socket file is ever removed.
    ino: u64,
}

/// Listens on `path` for successors. A socket file nobody answers on (a crashed router)
/// is replaced; one that answers is another live router of the region.
pub fn listen(path: &Path) -> Result<HandoverListener, HandoverError> {
    let failed = |source: io::Error| HandoverError::Listen {
        path: path.to_owned(),
        source,
    };
    if fs::symlink_metadata(path).is_ok() {
        if connect(path).is_ok() {
            return Err(HandoverError::InUse {
                path: path.to_owned(),
            });
        }
        fs::remove_file(path).map_err(failed)?;
    }
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(failed)?;
    }
    let fd = seqpacket().map_err(failed)?;
    let addr = UnixAddr::new(path).map_err(|e| failed(e.into()))?;
    socket::bind(fd.as_raw_fd(), &addr).map_err(|e| failed(e.into()))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(failed)?;
    socket::listen(&fd, Backlog::new(4).map_err(|e| failed(e.into()))?)
        .map_err(|e| failed(e.into()))?;
    let ino = fs::metadata(path).map_err(failed)?.ino();
    Ok(HandoverListener {
        fd,
        path: path.to_owned(),
        ino,
    })
}

impl HandoverListener {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves successors on a thread of its own (blocking, one at a time) until one takes
    /// over; `to_router` reaches the main loop, which owns what is handed over.
    pub fn spawn(
        self,
        to_router: mpsc::Sender<Takeover>,
    ) -> io::Result<std::thread::JoinHandle<()>> {
        std::thread::Builder::new()
            .name("handover".to_owned())
            .spawn(move || self.serve(&to_router))
    }

    fn serve(self, to_router: &mpsc::Sender<Takeover>) {
        loop {
            let fd = match socket::accept4(self.fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                // SAFETY: accept4 returned a new descriptor that nothing else owns.
                Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::ECONNABORTED) => continue,
                Err(e) => {
                    tracing::error!(path = %self.path.display(), "handover socket: accept failed: {e}; no restart can take over this router");
                    return;
                }
            };
            match self.serve_one(&Conn { fd }, to_router) {
                Ok(Some(successor)) => {
                    tracing::info!(successor, "handed over to the new router");
                    return;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(
                    "a restart was abandoned, this router keeps serving: {}",
                    crate::error_chain::error_chain(&e)
                ),
            }
        }
    }

    /// One successor's exchange; `Ok(Some(pid))` when it took over.
    fn serve_one(
        &self,
        conn: &Conn,
        to_router: &mpsc::Sender<Takeover>,
    ) -> Result<Option<u32>, HandoverError> {
        let creds = socket::getsockopt(&conn.fd, sockopt::PeerCredentials).map_err(|e| {
            HandoverError::Io {
                step: "reading the peer's credentials",
                source: e.into(),
            }
        })?;
        // SAFETY: geteuid cannot fail.
        let own = unsafe { libc::geteuid() };
        if creds.uid() != 0 && creds.uid() != own {
            let reason = format!(
                "uid {} may not take over this router; run the restart as root",
                creds.uid()
            );
            conn.send(
                "refusing",
                &Message::Refused {
                    reason: reason.clone(),
                },
                &[],
            )?;
            tracing::warn!(pid = creds.pid(), "{reason}");
            return Ok(None);
        }
        conn.set_timeout("waiting for hello", STEP_TIMEOUT)?;
        let (successor, version) = match conn.recv("waiting for hello")?.0 {
            Message::Hello { pid, version } => (pid, version),
            other => {
                return Err(HandoverError::Protocol {
                    step: "waiting for hello",
                    detail: format!("got `{}`", other.name()),
                });
            }
        };
        tracing::info!(successor, %version, "a new router asks to take over: handing the sockets and locks over");
        let (reply, offer) = oneshot::channel();
        let router_gone = || HandoverError::Refused {
            reason: "the router is shutting down".to_owned(),
        };
        to_router
            .blocking_send(Takeover::Offer { successor, reply })
            .map_err(|_| router_gone())?;
        let offer = match offer.blocking_recv().map_err(|_| router_gone())? {
            Ok(offer) => offer,
            Err(reason) => {
                conn.send(
                    "refusing",
                    &Message::Refused {
                        reason: reason.clone(),
                    },
                    &[],
                )?;
                return Err(HandoverError::Refused { reason });
            }
        };
        let entries = offer
            .items
            .iter()
            .map(|i| Entry {
                kind: i.kind,
                local: i.local,
            })
            .collect();
        let fds: Vec<BorrowedFd<'_>> = offer.items.iter().map(|i| i.fd.as_fd()).collect();
        conn.send(
            "sending the offer",
            &Message::Offer {
                pid: std::process::id(),
                version: env!("CARGO_PKG_VERSION").to_owned(),
                entries,
                watchdog_usec: offer
                    .watchdog
                    .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX)),
                vrrp_master: offer.vrrp_master,
            },
            &fds,
        )?;
        // Our copies go now: from here the successor's are what keeps them open if we die.
        drop(offer);
        match conn.recv("waiting for the successor to serve")?.0 {
            Message::Ready => {}
            Message::Failed { reason } => {
                tracing::warn!(
                    successor,
                    "the new router failed to start, this one keeps serving: {reason}"
                );
                return Ok(None);
            }
            other => {
                return Err(HandoverError::Protocol {
                    step: "waiting for the successor to serve",
                    detail: format!("got `{}`", other.name()),
                });
            }
        }
        // Before the release: the successor binds its own socket at this path next.
        self.remove_if_ours();
        let (reply, released) = oneshot::channel();
        to_router
            .blocking_send(Takeover::Ready { successor, reply })
            .map_err(|_| router_gone())?;
        released.blocking_recv().map_err(|_| router_gone())?;
        conn.send("sending the release", &Message::Released, &[])?;
        Ok(Some(successor))
    }

    fn remove_if_ours(&self) {
        if fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino) {
            let _ = fs::remove_file(&self.path);
        }
    }
}

impl Drop for HandoverListener {
    fn drop(&mut self) {
        self.remove_if_ours();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    fn router_side(
        listener: HandoverListener,
        offer: impl FnOnce() -> Result<Offer, String> + Send + 'static,
    ) -> (
        std::thread::JoinHandle<()>,
        std::thread::JoinHandle<Vec<u32>>,
    ) {
        let (tx, mut rx) = mpsc::channel(1);
        let thread = listener.spawn(tx).expect("spawn");
        let main = std::thread::spawn(move || {
            let mut offer = Some(offer);
            let mut readied = Vec::new();
            while let Some(request) = rx.blocking_recv() {
                match request {
                    Takeover::Offer { reply, .. } => {
                        let _ = reply.send(offer.take().expect("one offer")());
                    }
                    Takeover::Ready { successor, reply } => {
                        readied.push(successor);
                        let _ = reply.send(());
                    }
                }
            }
            readied
        });
        (thread, main)
    }

    #[test]
    fn a_listening_socket_and_a_lock_cross_with_their_queue_and_the_file_goes_to_the_successor() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "RegionOne");
        let tcp = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = tcp.local_addr().unwrap();
        let lock = fs::File::create(dir.path().join("lock")).unwrap();
        let (fd_tcp, fd_lock) = (OwnedFd::from(tcp), OwnedFd::from(lock));
        let listener = listen(&path).unwrap();
        let (thread, main) = router_side(listener, move || {
            Ok(Offer {
                items: vec![
                    Item {
                        kind: Kind::Listener,
                        local: Some(addr),
                        fd: fd_tcp,
                    },
                    Item {
                        kind: Kind::VipLock,
                        local: None,
                        fd: fd_lock,
                    },
                ],
                watchdog: Some(Duration::from_secs(30)),
                vrrp_master: true,
            })
        });
        // Queued before the handover, accepted after it, by the successor.
        let mut client = std::net::TcpStream::connect(addr).unwrap();
        let (successor, mut received) = take_over(&path).unwrap();
        assert_eq!(received.predecessor, std::process::id());
        assert_eq!(received.watchdog, Some(Duration::from_secs(30)));
        assert!(received.vrrp_master);
        assert!(received.take_lock(Kind::VipLock).is_some());
        assert!(received.take_lock(Kind::PinLock).is_none());
        let mut listeners = received.take_listeners(Kind::Listener);
        let taken = listeners.take(addr).expect("the listener by its address");
        let (mut accepted, _) = taken.accept().unwrap();
        client.write_all(b"x").unwrap();
        let mut byte = [0u8; 1];
        accepted.read_exact(&mut byte).unwrap();
        assert_eq!(&byte, b"x");
        successor.ready().unwrap();
        thread.join().unwrap();
        // The old router's socket file is gone, so the successor can bind its own.
        assert!(!path.exists());
        let next = listen(&path).unwrap();
        drop(next);
        assert!(!path.exists(), "a listener removes its own socket file");
        let readied = main.join().unwrap();
        assert_eq!(readied, vec![std::process::id()]);
    }

    #[test]
    fn a_successor_that_fails_or_vanishes_leaves_the_router_serving_the_next_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "RegionOne");
        let listener = listen(&path).unwrap();
        let (tx, mut rx) = mpsc::channel(1);
        let thread = listener.spawn(tx).unwrap();
        let main = std::thread::spawn(move || {
            let mut offers = 0;
            let mut readied = 0;
            while let Some(request) = rx.blocking_recv() {
                match request {
                    Takeover::Offer { reply, .. } => {
                        offers += 1;
                        let _ = reply.send(Ok(Offer::default()));
                    }
                    Takeover::Ready { reply, .. } => {
                        readied += 1;
                        let _ = reply.send(());
                    }
                }
            }
            (offers, readied)
        });
        let (first, _) = take_over(&path).unwrap();
        first.abandon("bad config");
        let (second, _) = take_over(&path).unwrap();
        drop(second);
        // Still listening: a third succeeds.
        let (third, _) = take_over(&path).unwrap();
        third.ready().unwrap();
        thread.join().unwrap();
        assert_eq!(main.join().unwrap(), (3, 1));
    }

    #[test]
    fn a_refusal_reaches_the_successor_and_nothing_answering_says_how_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "RegionOne");
        let err = take_over(&path).unwrap_err();
        assert!(matches!(err, HandoverError::NoRouter { .. }), "{err:?}");
        assert!(err.to_string().contains("scope-router run"), "{err}");

        let listener = listen(&path).unwrap();
        let err = listen(&path).unwrap_err();
        assert!(matches!(err, HandoverError::InUse { .. }), "{err:?}");
        let (_thread, _main) = router_side(listener, || Err("draining".to_owned()));
        let err = take_over(&path).unwrap_err();
        assert!(
            matches!(&err, HandoverError::Refused { reason } if reason == "draining"),
            "{err:?}"
        );
    }

    #[test]
    fn a_stale_socket_file_from_a_crash_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "RegionOne");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let _listener = listen(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
