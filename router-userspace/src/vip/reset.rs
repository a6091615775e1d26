//! Resets the TCP connections bound to the VIP when this node releases it (a VRRP backup),
//! so that clients reconnect to the new master at once instead of waiting on a peer that
//! can no longer answer from that address. Kolla works around the same hang by lowering
//! `net.ipv4.tcp_retries2` on its load-balancer hosts.
//!
//! The kernel's `SOCK_DESTROY` over `NETLINK_SOCK_DIAG` (what `ss -K` uses; needs
//! `CONFIG_INET_DIAG_DESTROY` and `CAP_NET_ADMIN`): a dump of the IPv4 TCP sockets, then
//! one destroy request per socket whose local address is the VIP. A destroyed socket sends
//! a RST to its peer and its owner (the proxy) sees the connection aborted.
//!
//! Written against the kernel structures directly: the rust-netlink crate for sock_diag
//! (`netlink-packet-sock-diag` 0.4) has no `SOCK_DESTROY` message and would pull a second,
//! older copy of the netlink packet stack beside rtnetlink's. The messages are two fixed
//! structs (`inet_diag_req_v2`, `inet_diag_msg`).

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_HDR: usize = 16;
/// `struct inet_diag_sockid`.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`.
const REQ_LEN: usize = 4 + 4 + SOCKID_LEN;
/// `struct inet_diag_msg`, up to and including the inode.
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;
/// TCP states (`include/net/tcp_states.h`): everything but LISTEN (10), TIME_WAIT (6) and
/// CLOSE (7), which carry no conversation to cut.
const STATES: u32 = (1 << 1)
    | (1 << 2)
    | (1 << 3)
    | (1 << 4)
    | (1 << 5)
    | (1 << 8)
    | (1 << 9)
    | (1 << 11)
    | (1 << 12);

/// Destroys every IPv4 TCP connection whose local address is `address`; returns how many.
/// Blocking netlink I/O, a few milliseconds: call it from `spawn_blocking` in async code.
pub fn reset_connections(address: Ipv4Addr) -> io::Result<usize> {
    // SAFETY: plain socket(2) call; the descriptor is owned right away.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a new descriptor nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let targets = dump(&fd, address)?;
    let mut destroyed = 0;
    for (seq, id) in (2u32..).zip(&targets) {
        send(
            &fd,
            SOCK_DESTROY,
            libc::NLM_F_REQUEST as u16 | libc::NLM_F_ACK as u16,
            seq,
            id,
        )?;
        match ack(&fd)? {
            0 => destroyed += 1,
            // Closed meanwhile: nothing left to cut.
            e if e == -libc::ENOENT => {}
            e => return Err(io::Error::from_raw_os_error(-e)),
        }
    }
    Ok(destroyed)
}

/// The socket ids of the connections to cut.
fn dump(fd: &OwnedFd, address: Ipv4Addr) -> io::Result<Vec<[u8; SOCKID_LEN]>> {
    let flags = libc::NLM_F_REQUEST as u16 | libc::NLM_F_DUMP as u16;
    send(fd, SOCK_DIAG_BY_FAMILY, flags, 1, &[0; SOCKID_LEN])?;
    let mut targets = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = recv(fd, &mut buf)?;
        let mut at = 0;
        while at + NLMSG_HDR <= n {
            let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap_or_default()) as usize;
            let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap_or_default());
            if len < NLMSG_HDR || at + len > n {
                return Err(io::Error::other("malformed sock_diag answer"));
            }
            match kind {
                k if k == libc::NLMSG_DONE as u16 => return Ok(targets),
                k if k == libc::NLMSG_ERROR as u16 => {
                    return Err(error_of(&buf[at + NLMSG_HDR..at + len]));
                }
                _ => {
                    let body = &buf[at + NLMSG_HDR..at + len];
                    if body.len() >= MSG_LEN {
                        let state = body[1];
                        let id: [u8; SOCKID_LEN] = body[4..4 + SOCKID_LEN]
                            .try_into()
                            .unwrap_or([0; SOCKID_LEN]);
                        // idiag_src[0], network order, after the two ports.
                        if id[4..8] == address.octets() && STATES & (1 << state) != 0 {
                            targets.push(id);
                        }
                    }
                }
            }
            // Messages are 4-byte aligned.
            at += (len + 3) & !3;
        }
    }
}

fn send(fd: &OwnedFd, kind: u16, flags: u16, seq: u32, id: &[u8; SOCKID_LEN]) -> io::Result<()> {
    let mut msg = Vec::with_capacity(NLMSG_HDR + REQ_LEN);
    msg.extend_from_slice(&((NLMSG_HDR + REQ_LEN) as u32).to_ne_bytes());
    msg.extend_from_slice(&kind.to_ne_bytes());
    msg.extend_from_slice(&flags.to_ne_bytes());
    msg.extend_from_slice(&seq.to_ne_bytes());
    msg.extend_from_slice(&0u32.to_ne_bytes());
    // inet_diag_req_v2: family, protocol, ext, pad, states, id.
    msg.extend_from_slice(&[libc::AF_INET as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    msg.extend_from_slice(&STATES.to_ne_bytes());
    msg.extend_from_slice(id);
    // SAFETY: the kernel's netlink address (nl_pid 0) and a valid buffer.
    let rc = unsafe {
        let mut to: libc::sockaddr_nl = std::mem::zeroed();
        to.nl_family = libc::AF_NETLINK as u16;
        libc::sendto(
            fd.as_raw_fd(),
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&raw const to).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as u32,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn recv(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// The errno of the acknowledgement to a destroy request (0: done).
fn ack(fd: &OwnedFd) -> io::Result<i32> {
    let mut buf = [0u8; 1024];
    let n = recv(fd, &mut buf)?;
    if n < NLMSG_HDR + 4 {
        return Err(io::Error::other("short sock_diag acknowledgement"));
    }
    Ok(i32::from_ne_bytes(
        buf[NLMSG_HDR..NLMSG_HDR + 4].try_into().unwrap_or_default(),
    ))
}

fn error_of(body: &[u8]) -> io::Error {
    let errno = body
        .get(..4)
        .and_then(|b| b.try_into().ok())
        .map(i32::from_ne_bytes)
        .unwrap_or(-libc::EIO);
    io::Error::from_raw_os_error(-errno)
}
