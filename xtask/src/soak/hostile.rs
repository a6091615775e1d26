//! The soak's hostile clients, each kind in its own thread in the client namespace,
//! against every listener of every region at once with the good traffic: slowloris,
//! partial heads held or abandoned, idle connection floods, oversized heads, request
//! smuggling attempts, and slow request bodies (trickled, which must be served, and
//! stalled, which must get 408). What each got is recorded and judged against what the
//! router promises (README, docs/ARCHITECTURE.md §3.6, §3.7).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::http::{self, Transport};
use super::traffic::Control;

/// The hostile client kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// A head sent one byte a second, never finished.
    Slowloris,
    /// Half a head, then silence.
    PartialHold,
    /// Half a head, then the client goes away (FIN or reset), in a tight loop.
    PartialAbort,
    /// Connections that never send a byte.
    IdleFlood,
    /// Heads over `[proxy] max_header_bytes`, over hyper's buffer, or with too many fields.
    Oversized,
    /// Ambiguous framing and duplicate fields (docs/ARCHITECTURE.md §3.6).
    Smuggling,
    /// A body trickled byte by byte, each pause well under `request_body`: must be served.
    SlowBodyTrickle,
    /// A body that stops halfway: must get 408 after `request_body`.
    SlowBodyStall,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Slowloris,
        Kind::PartialHold,
        Kind::PartialAbort,
        Kind::IdleFlood,
        Kind::Oversized,
        Kind::Smuggling,
        Kind::SlowBodyTrickle,
        Kind::SlowBodyStall,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Kind::Slowloris => "slowloris (1 byte/s head)",
            Kind::PartialHold => "partial head, then silence",
            Kind::PartialAbort => "partial head, then gone",
            Kind::IdleFlood => "idle connection flood",
            Kind::Oversized => "oversized heads",
            Kind::Smuggling => "smuggling / ambiguous framing",
            Kind::SlowBodyTrickle => "slow body, trickled",
            Kind::SlowBodyStall => "slow body, stalled",
        }
    }

    /// What the router must do, for the report.
    pub fn expectation(self, limits: &Limits) -> String {
        let header = limits.request_header.as_secs();
        let body = limits.request_body.as_secs();
        match self {
            Kind::Slowloris | Kind::PartialHold | Kind::IdleFlood => {
                format!(
                    "closed by the router at request_header ({header} s), never reaches a backend"
                )
            }
            Kind::PartialAbort => "nothing to answer; the router must not keep anything".into(),
            Kind::Oversized => "431 JSON".into(),
            Kind::Smuggling => {
                "400 (or 501 for a coding other than chunked) JSON, never forwarded".into()
            }
            Kind::SlowBodyTrickle => "served by the echo with the whole body".into(),
            Kind::SlowBodyStall => format!("408 JSON at request_body ({body} s)"),
        }
    }
}

/// The router settings the hostile clients are judged by.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub request_header: Duration,
    pub request_body: Duration,
    pub max_header_bytes: usize,
}

/// How much later than its timeout the router may cut a connection (a loaded 2-core
/// machine; the client checks every 100 ms).
pub const CUT_SLACK: Duration = Duration::from_secs(5);

/// One hostile attempt's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seen {
    /// The router answered with this status; `json`: its JSON error shape; `backend`: an
    /// echo answered, i.e. the request was forwarded.
    Answered {
        status: u16,
        json: bool,
        backend: bool,
    },
    /// The router closed the connection after this long (having sent this status first,
    /// if any).
    Cut {
        after: Duration,
        status: Option<u16>,
    },
    /// Still open when the client gave up waiting.
    NotCut {
        held: Duration,
    },
    /// The client went away on purpose.
    Abandoned,
    Transport(Transport),
}

#[derive(Debug, Clone)]
pub struct HostileRecord {
    pub kind: Kind,
    /// When the attempt began, from the start of the soak.
    pub at: Duration,
    /// The region whose VIP it went to.
    pub entry: usize,
    /// A label for the variant (which smuggling trick, which oversized shape).
    pub variant: &'static str,
    pub seen: Seen,
    /// The status this variant must get, where one is due.
    pub want: Option<u16>,
}

/// A listener to attack: the region it belongs to, its VIP:port, and a path the router
/// routes as a catalog service there (a scoped request, where the scope checks apply).
#[derive(Debug, Clone)]
pub struct Target {
    pub entry: usize,
    pub addr: SocketAddr,
    pub path: String,
}

/// The judgement on one hostile attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Judged {
    Expected,
    /// Not what the router promises, but explained by a failover or restart of the
    /// region it went to (its connections die with the killed master).
    Excused,
    Unexpected,
}

/// Judges one attempt; `lifecycle(entry, at)` says whether that region's router was
/// being failed over or restarted around then.
pub fn judge(
    r: &HostileRecord,
    limits: &Limits,
    lifecycle: impl Fn(usize, Duration) -> bool,
) -> Judged {
    let ok = match (&r.kind, &r.seen) {
        (Kind::Slowloris | Kind::PartialHold | Kind::IdleFlood, Seen::Cut { after, .. }) => {
            *after <= limits.request_header + CUT_SLACK
        }
        (Kind::PartialAbort, Seen::Abandoned) => true,
        (
            Kind::Oversized | Kind::Smuggling | Kind::SlowBodyStall,
            Seen::Answered {
                status,
                json,
                backend,
            },
        ) => Some(*status) == r.want && *json && !*backend,
        (Kind::SlowBodyStall, Seen::Cut { status, .. }) => *status == r.want,
        (
            Kind::SlowBodyTrickle,
            Seen::Answered {
                status, backend, ..
            },
        ) => *status == 200 && *backend,
        _ => false,
    };
    if ok {
        Judged::Expected
    } else if lifecycle(r.entry, r.at) {
        Judged::Excused
    } else {
        Judged::Unexpected
    }
}

/// Runs hostile clients of `kind` against `targets` until stopped; inside the client
/// namespace.
pub fn client(
    kind: Kind,
    targets: Vec<Target>,
    limits: Limits,
    control: Arc<Control>,
    t0: Instant,
) -> Vec<HostileRecord> {
    match kind {
        Kind::Slowloris => hold(kind, &targets, 8, &limits, &control, t0),
        Kind::PartialHold => hold(kind, &targets, 8, &limits, &control, t0),
        Kind::IdleFlood => hold(kind, &targets, 96, &limits, &control, t0),
        Kind::PartialAbort => abandon(&targets, &control, t0),
        Kind::Oversized | Kind::Smuggling | Kind::SlowBodyTrickle | Kind::SlowBodyStall => {
            requests(kind, &targets, &limits, &control, t0)
        }
    }
}

/// A connection held open by [`hold`].
struct Held {
    stream: TcpStream,
    target: Target,
    opened: Instant,
    at: Duration,
    next_byte: Instant,
    got: Vec<u8>,
}

/// The start of a head that never ends.
fn head_start(target: &Target) -> String {
    format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: scope-router-soak-hostile\r\nX-Slow: ",
        target.path, target.addr
    )
}

/// Keeps `count` connections of `kind` open, replacing each one the router cuts.
fn hold(
    kind: Kind,
    targets: &[Target],
    count: usize,
    limits: &Limits,
    control: &Control,
    t0: Instant,
) -> Vec<HostileRecord> {
    // The client waits this long for a cut before calling it a failure to cut.
    let give_up = limits.request_header * 3;
    let mut records = Vec::new();
    let mut held: Vec<Held> = Vec::new();
    let mut next_target = 0;
    while !control.stop.load(Ordering::Relaxed) {
        while held.len() < count && !control.stop.load(Ordering::Relaxed) {
            let target = targets[next_target % targets.len()].clone();
            next_target += 1;
            let at = t0.elapsed();
            let stream = match TcpStream::connect_timeout(&target.addr, Duration::from_secs(2)) {
                Ok(s) => s,
                Err(_) => {
                    records.push(record(
                        kind,
                        at,
                        &target,
                        "",
                        Seen::Transport(Transport::Connect),
                    ));
                    break;
                }
            };
            let _ = stream.set_nonblocking(true);
            let mut h = Held {
                stream,
                target,
                opened: Instant::now(),
                at,
                next_byte: Instant::now(),
                got: Vec::new(),
            };
            if kind != Kind::IdleFlood {
                let start = head_start(&h.target);
                // Slowloris sends the request line and fields at once, then its last
                // field one byte at a time; a partial head stops there.
                let _ = h.stream.write_all(start.as_bytes());
                h.next_byte = Instant::now() + Duration::from_secs(1);
            }
            held.push(h);
        }
        let now = Instant::now();
        let mut i = 0;
        while i < held.len() {
            let h = &mut held[i];
            if kind == Kind::Slowloris && now >= h.next_byte {
                let _ = h.stream.write(b"a");
                h.next_byte = now + Duration::from_secs(1);
            }
            let mut buf = [0u8; 4096];
            let ended = match h.stream.read(&mut buf) {
                Ok(0) => true,
                Ok(n) => {
                    h.got.extend_from_slice(&buf[..n]);
                    false
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => false,
                Err(_) => true,
            };
            let seen = if ended {
                Some(Seen::Cut {
                    after: h.opened.elapsed(),
                    status: status_of(&h.got),
                })
            } else if h.opened.elapsed() > give_up {
                Some(Seen::NotCut {
                    held: h.opened.elapsed(),
                })
            } else {
                None
            };
            match seen {
                Some(seen) => {
                    let h = held.swap_remove(i);
                    records.push(record(kind, h.at, &h.target, "", seen));
                }
                None => i += 1,
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    records
}

/// Half a head, then close (alternately a FIN and a reset), about 20 times a second.
fn abandon(targets: &[Target], control: &Control, t0: Instant) -> Vec<HostileRecord> {
    let mut records = Vec::new();
    let mut n = 0usize;
    while !control.stop.load(Ordering::Relaxed) {
        let target = &targets[n % targets.len()];
        n += 1;
        let at = t0.elapsed();
        let seen = match TcpStream::connect_timeout(&target.addr, Duration::from_secs(2)) {
            Ok(mut stream) => {
                let _ = stream.write_all(head_start(target).as_bytes());
                if n.is_multiple_of(2) {
                    // SO_LINGER 0: close() sends a reset.
                    let _ = socket_linger_zero(&stream);
                }
                drop(stream);
                Seen::Abandoned
            }
            Err(_) => Seen::Transport(Transport::Connect),
        };
        records.push(record(Kind::PartialAbort, at, target, "", seen));
        std::thread::sleep(Duration::from_millis(50));
    }
    records
}

fn socket_linger_zero(stream: &TcpStream) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket fd and a correctly sized linger struct.
    let rc = unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// A hostile request and the status it must get.
struct Variant {
    name: &'static str,
    want: u16,
    bytes: Vec<u8>,
}

/// Heads over the configured limit, over hyper's buffer, and with more than hyper's 100
/// fields.
fn oversized(target: &Target, limits: &Limits) -> Vec<Variant> {
    let (host, path) = (target.addr, &target.path);
    let big = |len: usize| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Big: {}\r\n\r\n",
            "b".repeat(len)
        )
        .into_bytes()
    };
    let many: String = (0..120).map(|i| format!("X-Field-{i}: v\r\n")).collect();
    vec![
        Variant {
            name: "head over max_header_bytes",
            want: 431,
            bytes: big(limits.max_header_bytes + 1024),
        },
        Variant {
            name: "head over 4× max_header_bytes",
            want: 431,
            bytes: big(limits.max_header_bytes * 4),
        },
        Variant {
            name: "120 fields",
            want: 431,
            bytes: format!("GET {path} HTTP/1.1\r\nHost: {host}\r\n{many}\r\n").into_bytes(),
        },
    ]
}

/// Request smuggling attempts and ambiguous heads, each refused by the router before
/// anything is forwarded.
fn smuggling(target: &Target) -> Vec<Variant> {
    let (host, path) = (target.addr, &target.path);
    let post = |fields: &str, body: &str| {
        format!("POST {path} HTTP/1.1\r\nHost: {host}\r\n{fields}\r\n{body}").into_bytes()
    };
    vec![
        Variant {
            name: "Content-Length with Transfer-Encoding (CL.TE)",
            want: 400,
            bytes: post(
                "Content-Length: 6\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\nG",
            ),
        },
        Variant {
            name: "two different Content-Lengths",
            want: 400,
            bytes: post("Content-Length: 3\r\nContent-Length: 5\r\n", "abcde"),
        },
        Variant {
            name: "Transfer-Encoding: chunked twice",
            want: 400,
            bytes: post(
                "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
                "0\r\n\r\n",
            ),
        },
        Variant {
            name: "Transfer-Encoding: gzip, chunked",
            want: 501,
            bytes: post("Transfer-Encoding: gzip, chunked\r\n", "0\r\n\r\n"),
        },
        Variant {
            name: "space before the colon (Transfer-Encoding : chunked)",
            want: 400,
            bytes: post("Transfer-Encoding : chunked\r\n", "0\r\n\r\n"),
        },
        Variant {
            name: "Content-Length: +5",
            want: 400,
            bytes: post("Content-Length: +5\r\n", "abcde"),
        },
        Variant {
            name: "two Host fields",
            want: 400,
            bytes: format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nHost: evil.example\r\n\r\n")
                .into_bytes(),
        },
        Variant {
            name: "two X-Scope fields",
            want: 400,
            bytes: format!(
                "GET {path} HTTP/1.1\r\nHost: {host}\r\nX-Scope: {{}}\r\nX-Scope: {{}}\r\n\r\n"
            )
            .into_bytes(),
        },
    ]
}

/// One request at a time of `kind`, each on a fresh connection.
fn requests(
    kind: Kind,
    targets: &[Target],
    limits: &Limits,
    control: &Control,
    t0: Instant,
) -> Vec<HostileRecord> {
    let mut records = Vec::new();
    let mut n = 0usize;
    while !control.stop.load(Ordering::Relaxed) {
        let target = &targets[n % targets.len()];
        let at = t0.elapsed();
        match kind {
            Kind::Oversized | Kind::Smuggling => {
                let variants = if kind == Kind::Oversized {
                    oversized(target, limits)
                } else {
                    smuggling(target)
                };
                let v = &variants[(n / targets.len()) % variants.len()];
                let seen = one_shot(target.addr, &v.bytes, Duration::from_secs(10));
                let mut r = record(kind, at, target, v.name, seen);
                r.want = Some(v.want);
                records.push(r);
                std::thread::sleep(Duration::from_millis(200));
            }
            Kind::SlowBodyTrickle => {
                records.push(record(kind, at, target, "", trickle(target)));
            }
            Kind::SlowBodyStall => {
                let mut r = record(kind, at, target, "", stall(target, limits));
                r.want = Some(408);
                records.push(r);
            }
            _ => unreachable!("hold and abandon serve the other kinds"),
        }
        n += 1;
    }
    records
}

fn record(
    kind: Kind,
    at: Duration,
    target: &Target,
    variant: &'static str,
    seen: Seen,
) -> HostileRecord {
    HostileRecord {
        kind,
        at,
        entry: target.entry,
        variant,
        seen,
        want: None,
    }
}

/// Sends `bytes` on a fresh connection and reads the answer.
fn one_shot(addr: SocketAddr, bytes: &[u8], wait: Duration) -> Seen {
    let deadline = Instant::now() + wait;
    let mut conn = match http::connect(addr, Duration::from_secs(2)) {
        Ok(c) => c,
        Err(f) => return Seen::Transport(f.kind),
    };
    // A refusal may come before the whole head is written: the router answers and
    // closes; what it said is what counts.
    let _ = conn.send(bytes, deadline);
    match conn.read_response(deadline, false) {
        Ok(response) => answered(&response),
        Err(f) => Seen::Transport(f.kind),
    }
}

fn answered(response: &http::Response) -> Seen {
    let json: Option<Value> = serde_json::from_slice(&response.body).ok();
    Seen::Answered {
        status: response.status,
        json: json.as_ref().is_some_and(|j| j.get("error").is_some()),
        backend: json.as_ref().is_some_and(|j| j.get("backend").is_some()),
    }
}

/// The body of the slow POSTs.
const SLOW_BODY: usize = 64;

/// A POST whose 64-byte body arrives a byte every 80 ms (about 5 s), each pause far
/// under `request_body`: a slow client, not a dead one, so it must be served.
fn trickle(target: &Target) -> Seen {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conn = match http::connect(target.addr, Duration::from_secs(2)) {
        Ok(c) => c,
        Err(f) => return Seen::Transport(f.kind),
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: {SLOW_BODY}\r\n\r\n",
        target.path, target.addr
    );
    if let Err(f) = conn.send(head.as_bytes(), deadline) {
        return Seen::Transport(f.kind);
    }
    for _ in 0..SLOW_BODY {
        std::thread::sleep(Duration::from_millis(80));
        if let Err(f) = conn.send(b"t", deadline) {
            return Seen::Transport(f.kind);
        }
    }
    match conn.read_response(deadline, false) {
        Ok(response) => {
            let json: Option<Value> = serde_json::from_slice(&response.body).ok();
            let whole = json
                .as_ref()
                .and_then(|j| j.get("body_len"))
                .and_then(Value::as_u64)
                == Some(SLOW_BODY as u64);
            match answered(&response) {
                Seen::Answered { status, json, .. } => Seen::Answered {
                    status,
                    json,
                    backend: whole,
                },
                other => other,
            }
        }
        Err(f) => Seen::Transport(f.kind),
    }
}

/// A POST that sends a tenth of its body and stops: the router must answer 408 once
/// `request_body` has passed.
fn stall(target: &Target, limits: &Limits) -> Seen {
    let opened = Instant::now();
    let deadline = opened + limits.request_body + CUT_SLACK * 2;
    let mut conn = match http::connect(target.addr, Duration::from_secs(2)) {
        Ok(c) => c,
        Err(f) => return Seen::Transport(f.kind),
    };
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Length: 1000\r\n\r\n{}",
        target.path,
        target.addr,
        "s".repeat(100)
    );
    if let Err(f) = conn.send(head.as_bytes(), deadline) {
        return Seen::Transport(f.kind);
    }
    match conn.read_response(deadline, false) {
        Ok(response) => answered(&response),
        Err(f) if f.kind == Transport::Timeout => Seen::NotCut {
            held: opened.elapsed(),
        },
        Err(f) if f.kind == Transport::ClosedBeforeResponse => Seen::Cut {
            after: opened.elapsed(),
            status: None,
        },
        Err(f) => Seen::Transport(f.kind),
    }
}

/// The status of a response at the start of `bytes`, if one is there.
fn status_of(bytes: &[u8]) -> Option<u16> {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut fields);
    match response.parse(bytes) {
        Ok(_) => response.code,
        Err(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            request_header: Duration::from_secs(10),
            request_body: Duration::from_secs(5),
            max_header_bytes: 16384,
        }
    }

    fn rec(kind: Kind, seen: Seen, want: Option<u16>) -> HostileRecord {
        HostileRecord {
            kind,
            at: Duration::from_secs(30),
            entry: 0,
            variant: "",
            seen,
            want,
        }
    }

    #[test]
    fn held_connections_must_be_cut_by_the_header_timeout() {
        let l = limits();
        let never = |_: usize, _: Duration| false;
        let cut = |secs| Seen::Cut {
            after: Duration::from_secs(secs),
            status: None,
        };
        for kind in [Kind::Slowloris, Kind::PartialHold, Kind::IdleFlood] {
            assert_eq!(
                judge(&rec(kind, cut(10), None), &l, never),
                Judged::Expected
            );
            assert_eq!(
                judge(&rec(kind, cut(16), None), &l, never),
                Judged::Unexpected
            );
            let not_cut = Seen::NotCut {
                held: Duration::from_secs(30),
            };
            assert_eq!(
                judge(&rec(kind, not_cut, None), &l, never),
                Judged::Unexpected
            );
        }
    }

    #[test]
    fn refusals_must_be_the_promised_json_and_never_forwarded() {
        let l = limits();
        let never = |_: usize, _: Duration| false;
        let answer = |status, json, backend| Seen::Answered {
            status,
            json,
            backend,
        };
        let smuggle = |seen| rec(Kind::Smuggling, seen, Some(400));
        assert_eq!(
            judge(&smuggle(answer(400, true, false)), &l, never),
            Judged::Expected
        );
        assert_eq!(
            judge(&smuggle(answer(400, false, false)), &l, never),
            Judged::Unexpected
        );
        assert_eq!(
            judge(&smuggle(answer(200, false, true)), &l, never),
            Judged::Unexpected
        );
        assert_eq!(
            judge(&smuggle(answer(501, true, false)), &l, never),
            Judged::Unexpected
        );
        assert_eq!(
            judge(
                &rec(Kind::Oversized, answer(431, true, false), Some(431)),
                &l,
                never
            ),
            Judged::Expected
        );
        assert_eq!(
            judge(
                &rec(Kind::SlowBodyTrickle, answer(200, false, true), None),
                &l,
                never
            ),
            Judged::Expected
        );
        assert_eq!(
            judge(
                &rec(Kind::SlowBodyTrickle, answer(408, true, false), None),
                &l,
                never
            ),
            Judged::Unexpected,
            "a slow but live upload must be served"
        );
        let reset = rec(
            Kind::Smuggling,
            Seen::Transport(Transport::ClosedBeforeResponse),
            Some(400),
        );
        assert_eq!(judge(&reset, &l, never), Judged::Unexpected);
        assert_eq!(judge(&reset, &l, |_, _| true), Judged::Excused);
    }

    #[test]
    fn hostile_variants_are_what_they_claim() {
        let target = Target {
            entry: 0,
            addr: "192.168.142.244:9292".parse().expect("addr"),
            path: "/v2/soak-hostile".into(),
        };
        let l = limits();
        let sizes: Vec<usize> = oversized(&target, &l)
            .iter()
            .map(|v| v.bytes.len())
            .collect();
        assert!(sizes[0] > l.max_header_bytes && sizes[1] > 4 * l.max_header_bytes);
        for v in smuggling(&target).into_iter().chain(oversized(&target, &l)) {
            let text = String::from_utf8_lossy(&v.bytes);
            assert!(
                text.contains(" /v2/soak-hostile HTTP/1.1\r\n"),
                "{}: a scoped path",
                v.name
            );
            assert!(text.contains("\r\n\r\n"), "{}: a complete head", v.name);
            assert!([400, 431, 501].contains(&v.want), "{}", v.name);
        }
        assert_eq!(
            status_of(b"HTTP/1.1 408 Request Timeout\r\n\r\n"),
            Some(408)
        );
        assert_eq!(status_of(b""), None);
    }
}
