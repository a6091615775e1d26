//! Active health checks of backend servers: HAProxy's `check inter rise fall`, off the request path.
//!
//! Each server has one [`Health`], written by its checker task ([`spawn_checker`]) and read by
//! every request through [`Health::is_up`] (one relaxed atomic load). State changes only through
//! checks, like HAProxy without `observe`: a failed real request is recorded for the operator but
//! does not take a server down, so one bad client request cannot flap a backend.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tls::TlsHop;

/// The path a scope-router answers health questions about its own backends on.
pub const HEALTH_PATH: &str = "/.scope-router/health";

/// The response header marking a health answer as coming from a scope-router.
pub const HEALTH_HEADER: &str = "x-scope-router-health";

/// How much of a check response is read: the status line and headers of any sane health
/// endpoint, and the short error message a scope-router puts in its body.
const MAX_RESPONSE: usize = 8 * 1024;

/// How many response headers a check parses; more is treated as a malformed answer.
const MAX_HEADERS: usize = 64;

/// Query values are encoded as RFC 3986 unreserved characters only.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// How to check one server. Defaults are the seed's HAProxy ones: `inter 2s rise 2 fall 5`,
/// a 2 s timeout, TCP connect.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckSettings {
    /// Time between the starts of two checks.
    #[serde(deserialize_with = "crate::config::duration")]
    pub inter: Duration,
    /// Consecutive successful checks that bring a DOWN server UP (0 counts as 1).
    pub rise: u32,
    /// Consecutive failed checks that take an UP server DOWN (0 counts as 1).
    pub fall: u32,
    /// Bound on one check: connect, request and status line.
    #[serde(deserialize_with = "crate::config::duration")]
    pub timeout: Duration,
    /// `None`: TCP connect; `Some(path)`: HTTP `GET path`, healthy on 2xx/3xx.
    pub http_path: Option<String>,
}

impl Default for CheckSettings {
    fn default() -> CheckSettings {
        CheckSettings {
            inter: Duration::from_secs(2),
            rise: 2,
            fall: 5,
            timeout: Duration::from_secs(2),
            http_path: None,
        }
    }
}

impl CheckSettings {
    /// `rise` as applied: a zero would mean "up before any success", which no operator means.
    fn rise_count(&self) -> u32 {
        self.rise.max(1)
    }

    /// `fall` as applied, for the same reason as [`Self::rise_count`].
    fn fall_count(&self) -> u32 {
        self.fall.max(1)
    }
}

/// What a checker probes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Probe {
    /// A TCP connect, closed at once.
    Tcp,
    /// `GET path` over HTTP/1.1; healthy on 2xx/3xx.
    Http {
        path: String,
        /// `Host` header value.
        host: String,
    },
    /// Another region's scope-router, asked about one service:
    /// `GET /.scope-router/health?service=<type>&interface=<iface>` on its frontend.
    ///
    /// A reply carrying [`HEALTH_HEADER`] is authoritative (2xx up, anything else down, with the
    /// body's message as the reason). A reply without it means the far side is not a
    /// scope-router (e.g. HAProxy): the checker degrades to TCP connect for the rest of its life
    /// and [`HealthSnapshot::degraded`] says so.
    ScopeRouter {
        service_type: String,
        interface: String,
        /// `Host` header value.
        host: String,
    },
}

impl Probe {
    /// The probe a server's [`CheckSettings`] ask for: HTTP when `http_path` is set.
    pub fn from_settings(settings: &CheckSettings, host: &str) -> Probe {
        match &settings.http_path {
            Some(path) => Probe::Http {
                path: path.clone(),
                host: host.to_owned(),
            },
            None => Probe::Tcp,
        }
    }
}

/// The health of one server, shared by its checker task (writer) and the request path (reader).
#[derive(Debug)]
pub struct Health {
    /// `host:port`; an `Arc` so the upstream pool can key connections by it for free.
    addr: Arc<str>,
    /// Mirrors `state.up`; the only field the request path reads.
    up: AtomicBool,
    /// Requests this server answered (its traffic, for `/metrics` and `/status`).
    requests: AtomicU64,
    state: Mutex<State>,
}

/// Checker-side bookkeeping; only checks, the proxy's failure notes and snapshots lock it.
#[derive(Debug)]
struct State {
    up: bool,
    since: SystemTime,
    /// Consecutive results contrary to the current state (failures while UP, successes while
    /// DOWN); reset by any result that agrees with it.
    streak: u32,
    last_result: Option<String>,
    last_connect_failure: Option<String>,
    checks: u64,
    failures: u64,
    degraded: Option<String>,
}

/// A state change, reported once by [`Health::record`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub up: bool,
    /// The result of the check that flipped the state.
    pub reason: String,
    /// How many consecutive checks it took (`rise` or `fall`).
    pub checks: u32,
}

/// What the operator sees about one server (status output, 503 messages).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HealthSnapshot {
    pub addr: String,
    pub up: bool,
    /// When the server entered its current state (start of the router for the first state).
    #[serde(serialize_with = "rfc3339")]
    pub since: SystemTime,
    /// `"ok in 1.2ms"` or the failure reason of the last check; `None` before the first.
    pub last_result: Option<String>,
    /// The last failed connect of a real request, with its reason; informational only.
    pub last_connect_failure: Option<String>,
    pub checks: u64,
    pub failures: u64,
    /// Why the configured probe was replaced by a weaker one, if it was.
    pub degraded: Option<String>,
}

fn rfc3339<S: serde::Serializer>(at: &SystemTime, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_rfc3339_millis(*at))
}

impl Health {
    /// A server starts UP, as in HAProxy: traffic flows from the start and `fall` failed checks
    /// take it down. Starting DOWN would turn every router restart into `rise * inter` of 503s.
    pub fn new(addr: String) -> Arc<Health> {
        Arc::new(Health {
            addr: Arc::from(addr),
            up: AtomicBool::new(true),
            requests: AtomicU64::new(0),
            state: Mutex::new(State {
                up: true,
                since: SystemTime::now(),
                streak: 0,
                last_result: None,
                last_connect_failure: None,
                checks: 0,
                failures: 0,
                degraded: None,
            }),
        })
    }

    /// Whether requests may go to this server.
    #[inline]
    pub fn is_up(&self) -> bool {
        // Relaxed: the flag guards no other memory; a request racing a transition may see either
        // value, exactly as it could have arrived a moment earlier or later.
        self.up.load(Ordering::Relaxed)
    }

    /// The server answered a request (counted whatever the status).
    #[inline]
    pub fn note_request(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    /// Requests this server answered since the router started.
    pub fn requests(&self) -> u64 {
        self.requests.load(Ordering::Relaxed)
    }

    /// `host:port` as configured.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `host:port` as the upstream pool keys its connections.
    pub fn upstream(&self) -> &Arc<str> {
        &self.addr
    }

    pub fn snapshot(&self) -> HealthSnapshot {
        let state = self.lock();
        HealthSnapshot {
            addr: self.addr.to_string(),
            up: state.up,
            since: state.since,
            last_result: state.last_result.clone(),
            last_connect_failure: state.last_connect_failure.clone(),
            checks: state.checks,
            failures: state.failures,
            degraded: state.degraded.clone(),
        }
    }

    /// The last check result (`None` before the first check); cheaper than a snapshot.
    pub fn last_result(&self) -> Option<String> {
        self.lock().last_result.clone()
    }

    /// A real request's connect to this server failed. Recorded for the operator only: state
    /// changes only through checks (HAProxy without `observe`).
    pub fn note_connect_failure(&self, reason: &str) {
        self.lock().last_connect_failure = Some(reason.to_owned());
    }

    /// Applies one check result: `fall` consecutive failures take an UP server DOWN, `rise`
    /// consecutive successes bring a DOWN server UP, and a result agreeing with the current
    /// state resets the count. Returns the transition when the state flips.
    pub fn record(
        &self,
        result: Result<(), String>,
        settings: &CheckSettings,
    ) -> Option<Transition> {
        self.apply(result.map(|()| "ok".to_owned()), settings)
    }

    /// [`Self::record`] for a timed success, so the snapshot says how long the check took.
    fn record_timed(
        &self,
        result: Result<Duration, String>,
        settings: &CheckSettings,
    ) -> Option<Transition> {
        self.apply(
            result.map(|took| format!("ok in {}", Millis(took))),
            settings,
        )
    }

    /// The counting behind [`Self::record`]; `Ok` and `Err` both carry the text to report.
    fn apply(
        &self,
        result: Result<String, String>,
        settings: &CheckSettings,
    ) -> Option<Transition> {
        let mut state = self.lock();
        state.checks += 1;
        let ok = result.is_ok();
        let reason = result.unwrap_or_else(|failure| failure);
        if !ok {
            state.failures += 1;
        }
        state.last_result = Some(reason.clone());
        if ok == state.up {
            state.streak = 0;
            return None;
        }
        state.streak += 1;
        let needed = if ok {
            settings.rise_count()
        } else {
            settings.fall_count()
        };
        if state.streak < needed {
            return None;
        }
        state.up = ok;
        state.streak = 0;
        state.since = SystemTime::now();
        self.up.store(ok, Ordering::Relaxed);
        Some(Transition {
            up: ok,
            reason,
            checks: needed,
        })
    }

    fn set_degraded(&self, why: String) {
        self.lock().degraded = Some(why);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain counters behind, still worth reading.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// A duration as milliseconds with one decimal (`1.2ms`).
struct Millis(Duration);

impl std::fmt::Display for Millis {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1}ms", self.0.as_secs_f64() * 1000.0)
    }
}

/// Runs checks every `settings.inter` until `stop` resolves; never on the request path.
///
/// The first check runs at once so a server that is down when the router starts leaves the
/// pool after `fall` checks rather than `fall` checks plus one interval. Each transition is
/// logged once, with the reason of the check that caused it.
///
/// With `tls`, every probe runs over TLS, as requests to the server do: a TCP check is a
/// connect and a full handshake (so a certificate that no longer verifies takes the
/// server down, with the reason), an HTTP one sends its request inside the session.
pub fn spawn_checker(
    health: Arc<Health>,
    (probe, tls): (Probe, Option<Arc<TlsHop>>),
    settings: CheckSettings,
    stop: impl Future<Output = ()> + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        tokio::select! {
            () = stop => {}
            () = run_checks(&health, probe, tls.as_deref(), &settings) => {}
        }
    })
}

async fn run_checks(
    health: &Health,
    mut probe: Probe,
    tls: Option<&TlsHop>,
    settings: &CheckSettings,
) {
    let mut ticks = tokio::time::interval(settings.inter);
    // A check that overruns (a timeout longer than `inter`) must not cause a burst of catch-up
    // checks: keep the spacing instead.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        let started = Instant::now();
        let outcome = tokio::time::timeout(settings.timeout, check(health.addr(), &probe, tls))
            .await
            .unwrap_or_else(|_| {
                Outcome::Fail(format!(
                    "no answer within {}",
                    humantime::format_duration(settings.timeout)
                ))
            });
        let result = match outcome {
            Outcome::Ok => Ok(started.elapsed()),
            Outcome::Fail(reason) => Err(reason),
            Outcome::NotScopeRouter(why) => {
                tracing::warn!(server = health.addr(), reason = %why, "health checks degrade to TCP connect");
                health.set_degraded(why);
                probe = Probe::Tcp;
                // The far side answered HTTP, so it accepts connections: that is what a TCP
                // check would have found.
                Ok(started.elapsed())
            }
        };
        if let Some(t) = health.record_timed(result, settings) {
            if t.up {
                tracing::info!(server = health.addr(), reason = %t.reason, "server is UP after {} successful checks", t.checks);
            } else {
                tracing::warn!(server = health.addr(), reason = %t.reason, "server is DOWN after {} failed checks", t.checks);
            }
        }
    }
}

/// The outcome of one probe.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Ok,
    Fail(String),
    /// A [`Probe::ScopeRouter`] reached something that is not a scope-router.
    NotScopeRouter(String),
}

async fn check(addr: &str, probe: &Probe, tls: Option<&TlsHop>) -> Outcome {
    let stream = match TcpStream::connect(addr).await {
        Ok(s) => s,
        Err(e) => return Outcome::Fail(format!("connect: {e}")),
    };
    let Some(hop) = tls else {
        return probe_over(stream, addr, probe).await;
    };
    match hop.connect(stream).await {
        Ok(stream) => probe_over(stream, addr, probe).await,
        Err(e) => Outcome::Fail(format!("TLS handshake: {e}")),
    }
}

/// The probe itself, over a connection made (and, for TLS, verified).
async fn probe_over<S>(mut stream: S, addr: &str, probe: &Probe) -> Outcome
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    match probe {
        Probe::Tcp => Outcome::Ok,
        Probe::Http { path, host } => match exchange(&mut stream, path, host).await {
            Ok(reply) if (200..400).contains(&reply.status) => Outcome::Ok,
            Ok(reply) => Outcome::Fail(format!("HTTP {} {}", reply.status, reply.reason)),
            Err(e) => Outcome::Fail(e),
        },
        Probe::ScopeRouter {
            service_type,
            interface,
            host,
        } => {
            let target = format!(
                "{HEALTH_PATH}?service={}&interface={}",
                utf8_percent_encode(service_type, QUERY_VALUE),
                utf8_percent_encode(interface, QUERY_VALUE)
            );
            match exchange(&mut stream, &target, host).await {
                Ok(reply) if !reply.scope_router => Outcome::NotScopeRouter(format!(
                    "{addr} answered {HEALTH_PATH} with HTTP {} and no {HEALTH_HEADER} header: \
                     not a scope-router, so only TCP connect is checked",
                    reply.status
                )),
                Ok(reply) if (200..300).contains(&reply.status) => Outcome::Ok,
                Ok(reply) => Outcome::Fail(match reply.message {
                    Some(message) => format!("HTTP {} from scope-router: {message}", reply.status),
                    None => format!("HTTP {} {} from scope-router", reply.status, reply.reason),
                }),
                Err(e) => Outcome::Fail(e),
            }
        }
    }
}

/// What a check reads of an HTTP answer.
#[derive(Debug)]
struct Reply {
    status: u16,
    reason: String,
    /// The answer carried [`HEALTH_HEADER`].
    scope_router: bool,
    /// The error message of the body, when it has one (only read for scope-router answers).
    message: Option<String>,
}

/// Sends `GET target` and reads the status line and headers (and, from a scope-router, the
/// start of the body for its message).
async fn exchange<S>(stream: &mut S, target: &str, host: &str) -> Result<Reply, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\
         User-Agent: scope-router-health\r\n\r\n"
    );
    // Flushed: TLS keeps what the socket did not take until then.
    let sent = async {
        stream.write_all(request.as_bytes()).await?;
        stream.flush().await
    };
    sent.await.map_err(|e| format!("send request: {e}"))?;

    let mut buf = Vec::with_capacity(1024);
    let mut eof = false;
    loop {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut response = httparse::Response::new(&mut headers);
        match response.parse(&buf) {
            Ok(httparse::Status::Complete(head_len)) => {
                let status = response.code.unwrap_or_default();
                let reason = response.reason.unwrap_or_default().to_owned();
                let scope_router = response
                    .headers
                    .iter()
                    .any(|h| h.name.eq_ignore_ascii_case(HEALTH_HEADER));
                if !scope_router || (200..300).contains(&status) {
                    return Ok(Reply {
                        status,
                        reason,
                        scope_router,
                        message: None,
                    });
                }
                // A scope-router's "down" answer explains itself in the body: read it up to its
                // `Content-Length`, else to EOF (`Connection: close`), within the cap. Reading
                // to EOF alone would wait out the timeout on a peer keeping the connection.
                let body_end = response
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .and_then(|h| {
                        std::str::from_utf8(h.value)
                            .ok()?
                            .trim()
                            .parse::<usize>()
                            .ok()
                    })
                    .map_or(MAX_RESPONSE, |len| (head_len + len).min(MAX_RESPONSE));
                while !eof && buf.len() < body_end {
                    eof = read_some(stream, &mut buf).await? == 0;
                }
                return Ok(Reply {
                    status,
                    reason,
                    scope_router,
                    message: body_message(&buf[head_len..buf.len().min(body_end)]),
                });
            }
            Ok(httparse::Status::Partial) if eof => {
                return Err(if buf.is_empty() {
                    "connection closed without an answer".to_owned()
                } else {
                    "answer ended inside its headers".to_owned()
                });
            }
            Ok(httparse::Status::Partial) if buf.len() >= MAX_RESPONSE => {
                return Err(format!("answer headers longer than {MAX_RESPONSE} bytes"));
            }
            Ok(httparse::Status::Partial) => {}
            Err(e) => return Err(format!("invalid HTTP answer: {e}")),
        }
        eof = read_some(stream, &mut buf).await? == 0;
    }
}

/// Reads what is available into `buf`, never past [`MAX_RESPONSE`].
async fn read_some<S>(stream: &mut S, buf: &mut Vec<u8>) -> Result<usize, String>
where
    S: AsyncRead + Unpin,
{
    let room = MAX_RESPONSE - buf.len();
    let start = buf.len();
    buf.resize(start + room, 0);
    let read = stream.read(&mut buf[start..]).await;
    let n = *read.as_ref().unwrap_or(&0);
    buf.truncate(start + n);
    read.map_err(|e| format!("read answer: {e}"))
}

/// The operator-facing message of an error body: the `message` of the router's
/// `{"error":{"message":..}}` shape, else the body text itself (trimmed, first line, capped).
fn body_message(body: &[u8]) -> Option<String> {
    if let Ok(value) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(message) = value
            .pointer("/error/message")
            .or_else(|| value.get("message"))
            .and_then(serde_json::Value::as_str)
    {
        return Some(message.to_owned());
    }
    let text = String::from_utf8_lossy(body);
    let line = text.trim().lines().next().unwrap_or_default();
    if line.is_empty() {
        return None;
    }
    let mut message = String::new();
    for (i, c) in line.chars().enumerate() {
        if i == 200 {
            let _ = write!(message, "...");
            break;
        }
        message.push(c);
    }
    Some(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::testing::Pki;
    use crate::tls::{CertStore, Profile, TlsSettings, TlsTable, load_identity, server_config};
    use tokio::net::TcpListener;

    fn settings(rise: u32, fall: u32) -> CheckSettings {
        CheckSettings {
            inter: Duration::from_millis(10),
            rise,
            fall,
            timeout: Duration::from_millis(300),
            http_path: None,
        }
    }

    #[test]
    fn defaults_are_the_seed_haproxy_ones() {
        let d = CheckSettings::default();
        assert_eq!(d.inter, Duration::from_secs(2));
        assert_eq!((d.rise, d.fall), (2, 5));
        assert_eq!(d.timeout, Duration::from_secs(2));
        assert_eq!(d.http_path, None);
    }

    #[test]
    fn settings_deserialize_with_durations_and_defaults() {
        let s: CheckSettings =
            toml::from_str("inter = \"500ms\"\nfall = 3\nhttp_path = \"/healthcheck\"")
                .expect("valid settings");
        assert_eq!(
            s,
            CheckSettings {
                inter: Duration::from_millis(500),
                fall: 3,
                http_path: Some("/healthcheck".to_owned()),
                ..CheckSettings::default()
            }
        );
        assert!(toml::from_str::<CheckSettings>("interval = \"1s\"").is_err());
        assert!(toml::from_str::<CheckSettings>("inter = \"0s\"").is_err());
    }

    /// Feeds `results` (true = success) one by one; returns the state after each and the
    /// transitions, as (index, up).
    fn run(rise: u32, fall: u32, results: &[bool]) -> (Vec<bool>, Vec<(usize, bool)>) {
        let health = Health::new("127.0.0.1:1".to_owned());
        let settings = settings(rise, fall);
        let mut states = Vec::new();
        let mut transitions = Vec::new();
        for (i, &ok) in results.iter().enumerate() {
            let result = if ok { Ok(()) } else { Err(format!("fail {i}")) };
            if let Some(t) = health.record(result, &settings) {
                transitions.push((i, t.up));
                assert_eq!(t.checks, if t.up { rise.max(1) } else { fall.max(1) });
            }
            states.push(health.is_up());
        }
        (states, transitions)
    }

    #[test]
    fn rise_and_fall_counting() {
        const T: bool = true;
        const F: bool = false;
        struct Case {
            name: &'static str,
            rise: u32,
            fall: u32,
            results: &'static [bool],
            states: &'static [bool],
            transitions: &'static [(usize, bool)],
        }
        let cases = [
            Case {
                name: "starts up and stays up on successes",
                rise: 2,
                fall: 3,
                results: &[T, T],
                states: &[T, T],
                transitions: &[],
            },
            Case {
                name: "down only after fall consecutive failures",
                rise: 2,
                fall: 3,
                results: &[F, F, F, F],
                states: &[T, T, F, F],
                transitions: &[(2, false)],
            },
            Case {
                name: "a success resets the failure count",
                rise: 2,
                fall: 3,
                results: &[F, F, T, F, F, F],
                states: &[T, T, T, T, T, F],
                transitions: &[(5, false)],
            },
            Case {
                name: "up only after rise consecutive successes",
                rise: 2,
                fall: 1,
                results: &[F, T, F, T, T, T],
                states: &[F, F, F, F, T, T],
                transitions: &[(0, false), (4, true)],
            },
            Case {
                name: "flapping is reported once per flip",
                rise: 1,
                fall: 1,
                results: &[F, F, T, T, F],
                states: &[F, F, T, T, F],
                transitions: &[(0, false), (2, true), (4, false)],
            },
            Case {
                name: "zero rise and fall count as one",
                rise: 0,
                fall: 0,
                results: &[F, T],
                states: &[F, T],
                transitions: &[(0, false), (1, true)],
            },
        ];
        for case in cases {
            let (states, transitions) = run(case.rise, case.fall, case.results);
            assert_eq!(states, case.states, "{}: states", case.name);
            assert_eq!(transitions, case.transitions, "{}: transitions", case.name);
        }
    }

    #[test]
    fn snapshot_counts_and_reasons() {
        let health = Health::new("10.0.0.1:5000".to_owned());
        let s = settings(1, 1);
        health.note_connect_failure("connection refused");
        assert!(
            health.is_up(),
            "a request's failure does not take the server down"
        );
        let t = health.record(Err("connect: refused".to_owned()), &s);
        assert_eq!(
            t,
            Some(Transition {
                up: false,
                reason: "connect: refused".to_owned(),
                checks: 1
            })
        );
        let snap = health.snapshot();
        assert_eq!(snap.addr, "10.0.0.1:5000");
        assert!(!snap.up);
        assert_eq!(snap.checks, 1);
        assert_eq!(snap.failures, 1);
        assert_eq!(snap.last_result.as_deref(), Some("connect: refused"));
        assert_eq!(
            snap.last_connect_failure.as_deref(),
            Some("connection refused")
        );
        assert_eq!(
            health.record_timed(Ok(Duration::from_micros(1200)), &s),
            Some(Transition {
                up: true,
                reason: "ok in 1.2ms".to_owned(),
                checks: 1
            })
        );
        assert_eq!(health.last_result().as_deref(), Some("ok in 1.2ms"));
        let json = serde_json::to_value(health.snapshot()).expect("serializes");
        assert!(
            json["since"].as_str().is_some_and(|s| s.ends_with('Z')),
            "{json}"
        );
    }

    /// Polls `cond` every 10 ms for at most 1.5 s.
    async fn eventually(what: &str, cond: impl Fn() -> bool) {
        for _ in 0..150 {
            if cond() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("not reached within 1.5 s: {what}");
    }

    fn stopper() -> (tokio::sync::oneshot::Sender<()>, impl Future<Output = ()>) {
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        (tx, async move {
            let _ = rx.await;
        })
    }

    #[tokio::test]
    async fn tcp_checker_follows_a_real_listener() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let health = Health::new(addr);
        let (tx, stop) = stopper();
        let task = spawn_checker(health.clone(), (Probe::Tcp, None), settings(2, 2), stop);

        eventually("first successful checks", || {
            health
                .snapshot()
                .last_result
                .is_some_and(|r| r.starts_with("ok in"))
        })
        .await;
        assert!(health.is_up());

        drop(listener);
        eventually("DOWN after the listener is gone", || !health.is_up()).await;
        let snap = health.snapshot();
        assert!(
            snap.last_result
                .as_deref()
                .is_some_and(|r| r.starts_with("connect:")),
            "{snap:?}"
        );

        // Rebind the same port (may fail if the OS handed it out; then skip the UP half).
        if let Ok(listener) = TcpListener::bind(health.addr()).await {
            eventually("UP again after the listener is back", || health.is_up()).await;
            drop(listener);
        }

        let _ = tx.send(());
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("checker stops on the stop signal")
            .expect("checker did not panic");
    }

    /// A one-shot-per-connection HTTP server answering `answer` to everything; returns its
    /// address and the requests it saw.
    async fn fake_server(answer: &'static [u8]) -> (String, Arc<Mutex<Vec<String>>>) {
        serve(answer, false).await
    }

    /// [`fake_server`]; with `hold_open` each connection stays open for a second after the
    /// answer, like a peer ignoring `Connection: close`.
    async fn serve(answer: &'static [u8], hold_open: bool) -> (String, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                let log = log.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    let mut len = 0;
                    while !buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf[len..]).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => len += n,
                        }
                    }
                    log.lock()
                        .expect("log")
                        .push(String::from_utf8_lossy(&buf[..len]).into_owned());
                    let _ = conn.write_all(answer).await;
                    if hold_open {
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                });
            }
        });
        (addr, seen)
    }

    #[tokio::test]
    async fn http_probe_outcomes() {
        struct Case {
            name: &'static str,
            answer: &'static [u8],
            want: Result<(), &'static str>,
        }
        let cases = [
            Case {
                name: "200 is healthy",
                answer: b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
                want: Ok(()),
            },
            Case {
                name: "302 is healthy",
                answer: b"HTTP/1.1 302 Found\r\nLocation: /x\r\n\r\n",
                want: Ok(()),
            },
            Case {
                name: "500 is a failure naming the status",
                answer: b"HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\n\r\n",
                want: Err("HTTP 500 Internal Server Error"),
            },
            Case {
                name: "garbage is a failure",
                answer: b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
                want: Err("invalid HTTP answer"),
            },
            Case {
                name: "close without an answer is a failure",
                answer: b"",
                want: Err("connection closed without an answer"),
            },
        ];
        for case in cases {
            let (addr, seen) = fake_server(case.answer).await;
            let probe = Probe::Http {
                path: "/healthcheck".to_owned(),
                host: "keystone.example".to_owned(),
            };
            let outcome = check(&addr, &probe, None).await;
            match case.want {
                Ok(()) => assert_eq!(outcome, Outcome::Ok, "{}", case.name),
                Err(want) => assert!(
                    matches!(&outcome, Outcome::Fail(r) if r.starts_with(want)),
                    "{}: {outcome:?}",
                    case.name
                ),
            }
            let seen = seen.lock().expect("log");
            assert_eq!(
                seen.first().map(String::as_str),
                Some(
                    "GET /healthcheck HTTP/1.1\r\nHost: keystone.example\r\nConnection: close\r\n\
                     User-Agent: scope-router-health\r\n\r\n"
                ),
                "{}",
                case.name
            );
        }
    }

    #[tokio::test]
    async fn http_checker_takes_a_failing_endpoint_down() {
        let (addr, _) =
            fake_server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        let health = Health::new(addr.clone());
        let (_tx, stop) = stopper();
        let probe = Probe::Http {
            path: "/".to_owned(),
            host: addr,
        };
        let task = spawn_checker(health.clone(), (probe, None), settings(2, 2), stop);
        eventually("DOWN on 503", || !health.is_up()).await;
        assert_eq!(
            health.snapshot().last_result.as_deref(),
            Some("HTTP 503 Service Unavailable")
        );
        task.abort();
    }

    #[tokio::test]
    async fn scope_router_probe_is_authoritative_with_the_header() {
        let (addr, seen) = fake_server(
            b"HTTP/1.1 503 Service Unavailable\r\nx-scope-router-health: down\r\n\
              Content-Type: application/json\r\nConnection: close\r\n\r\n\
              {\"error\":{\"code\":503,\"title\":\"Service Unavailable\",\
              \"message\":\"every compute server is down\"}}",
        )
        .await;
        let health = Health::new(addr.clone());
        let (_tx, stop) = stopper();
        let probe = Probe::ScopeRouter {
            service_type: "compute".to_owned(),
            interface: "public api".to_owned(),
            host: "region-two.example".to_owned(),
        };
        let task = spawn_checker(health.clone(), (probe, None), settings(2, 2), stop);
        eventually("DOWN on the authoritative 503", || !health.is_up()).await;
        let snap = health.snapshot();
        assert_eq!(
            snap.last_result.as_deref(),
            Some("HTTP 503 from scope-router: every compute server is down")
        );
        assert_eq!(snap.degraded, None);
        let first = seen
            .lock()
            .expect("log")
            .first()
            .cloned()
            .unwrap_or_default();
        assert!(
            first.starts_with(
                "GET /.scope-router/health?service=compute&interface=public%20api HTTP/1.1\r\n\
                 Host: region-two.example\r\n"
            ),
            "{first}"
        );
        task.abort();
    }

    /// A remote router that is stopped (SIGSTOP), not dead: its kernel still completes
    /// TCP handshakes into the listen queue, but nothing ever answers. The check must
    /// time out and take it down, or its clients would wait out the whole idle timeout.
    #[tokio::test]
    async fn a_hung_remote_router_that_accepts_but_never_answers_is_down() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        // Never accepted: the handshake completes in the backlog and nothing reads.
        let health = Health::new(addr.clone());
        let (_tx, stop) = stopper();
        let probe = Probe::ScopeRouter {
            service_type: "compute".to_owned(),
            interface: "public".to_owned(),
            host: "region-two.example".to_owned(),
        };
        let task = spawn_checker(health.clone(), (probe, None), settings(2, 2), stop);
        eventually("DOWN on a router that never answers", || !health.is_up()).await;
        let snap = health.snapshot();
        assert_eq!(
            snap.last_result.as_deref(),
            Some("no answer within 300ms"),
            "{snap:?}"
        );
        drop(listener);
        task.abort();
    }

    #[tokio::test]
    async fn scope_router_down_answer_is_read_by_content_length() {
        // The fake server keeps the connection open after answering: the check must finish
        // from Content-Length, well within its timeout.
        let (addr, _) = serve(
            b"HTTP/1.1 503 Service Unavailable\r\nx-scope-router-health: down\r\n\
              Content-Length: 9\r\n\r\nall down\nTRAILING",
            true,
        )
        .await;
        let probe = Probe::ScopeRouter {
            service_type: "image".to_owned(),
            interface: "public".to_owned(),
            host: "h".to_owned(),
        };
        let outcome = tokio::time::timeout(Duration::from_millis(500), check(&addr, &probe, None))
            .await
            .expect("no wait for EOF");
        assert_eq!(
            outcome,
            Outcome::Fail("HTTP 503 from scope-router: all down".to_owned())
        );
    }

    #[tokio::test]
    async fn scope_router_probe_up_with_the_header() {
        let (addr, _) = fake_server(
            b"HTTP/1.1 200 OK\r\nX-Scope-Router-Health: up\r\nContent-Length: 0\r\n\r\n",
        )
        .await;
        let probe = Probe::ScopeRouter {
            service_type: "image".to_owned(),
            interface: "public".to_owned(),
            host: "h".to_owned(),
        };
        assert_eq!(check(&addr, &probe, None).await, Outcome::Ok);
    }

    #[tokio::test]
    async fn scope_router_probe_degrades_to_tcp_without_the_header() {
        // HAProxy answering a path it does not know: no header, so not authoritative.
        let (addr, seen) =
            fake_server(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n").await;
        let health = Health::new(addr.clone());
        let (_tx, stop) = stopper();
        let probe = Probe::ScopeRouter {
            service_type: "compute".to_owned(),
            interface: "public".to_owned(),
            host: "h".to_owned(),
        };
        let task = spawn_checker(health.clone(), (probe, None), settings(1, 1), stop);
        eventually("degraded and several TCP checks done", || {
            let snap = health.snapshot();
            snap.degraded.is_some() && snap.checks >= 3
        })
        .await;
        let snap = health.snapshot();
        assert!(
            snap.up,
            "a degraded TCP check of a listening server is UP: {snap:?}"
        );
        assert_eq!(snap.failures, 0, "{snap:?}");
        assert!(
            snap.degraded
                .as_deref()
                .is_some_and(|d| d.contains("not a scope-router")),
            "{snap:?}"
        );
        // Later checks are bare connects: the server saw exactly one HTTP request.
        assert_eq!(seen.lock().expect("log").len(), 1);
        task.abort();
    }

    #[tokio::test]
    async fn a_silent_server_fails_by_timeout() {
        // Accepts but never answers: the check must end at `timeout`, not hang.
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let _hold = tokio::spawn(async move {
            let mut conns = Vec::new();
            while let Ok((c, _)) = listener.accept().await {
                conns.push(c);
            }
        });
        let health = Health::new(addr.clone());
        let (_tx, stop) = stopper();
        let probe = Probe::Http {
            path: "/".to_owned(),
            host: addr,
        };
        let mut s = settings(1, 1);
        s.timeout = Duration::from_millis(50);
        let task = spawn_checker(health.clone(), (probe, None), s, stop);
        eventually("DOWN by timeout", || !health.is_up()).await;
        assert_eq!(
            health.snapshot().last_result.as_deref(),
            Some("no answer within 50ms")
        );
        task.abort();
    }

    #[test]
    fn body_messages() {
        let cases: [(&str, &[u8], Option<&str>); 4] = [
            (
                "router error shape",
                b"{\"error\":{\"code\":503,\"message\":\"m\"}}",
                Some("m"),
            ),
            (
                "plain text first line",
                b"  all down\nmore\n",
                Some("all down"),
            ),
            ("empty", b"", None),
            ("json without message", b"{\"a\":1}", Some("{\"a\":1}")),
        ];
        for (name, body, want) in cases {
            assert_eq!(body_message(body).as_deref(), want, "{name}");
        }
    }

    /// A TLS server presenting a leaf of `pki` for `names`, answering `answer` to a request
    /// (a connection that sends none, a TCP check's, is left to close).
    async fn tls_server(pki: &Pki, names: &[&str], answer: &'static [u8]) -> String {
        let leaf = pki.leaf(names[0], names, 30);
        let (identity, _) = load_identity(&leaf, SystemTime::now()).expect("identity");
        let config = server_config(Profile::Modern, CertStore::new(identity, vec![])).unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(config);
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(s).await else {
                        return;
                    };
                    let mut buf = [0u8; 1024];
                    if tls.read(&mut buf).await.is_ok_and(|n| n > 0) {
                        let _ = tls.write_all(answer).await;
                        let _ = tls.shutdown().await;
                    }
                });
            }
        });
        addr
    }

    fn hop(pki: &Pki, name: &str) -> Arc<TlsHop> {
        TlsTable::new(&TlsSettings::default())
            .hop(Some(&pki.ca.cert_path), name)
            .expect("hop")
    }

    #[tokio::test]
    async fn tls_checks_run_inside_a_verified_session() {
        let pki = Pki::new("unit");
        let stranger = Pki::new("stranger");
        let ok = b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n";
        let trusted = tls_server(&pki, &["api.example"], ok).await;
        let other_name = tls_server(&pki, &["other.example"], ok).await;
        let unknown_ca = tls_server(&stranger, &["api.example"], ok).await;
        // An HTTP server answers bytes that are not HTTP (a ClientHello) with a 400.
        let cleartext = {
            let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            let addr = listener.local_addr().expect("addr").to_string();
            tokio::spawn(async move {
                while let Ok((mut conn, _)) = listener.accept().await {
                    let mut hello = [0u8; 512];
                    let _ = conn.read(&mut hello).await;
                    let _ = conn.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
                }
            });
            addr
        };
        let hop = hop(&pki, "api.example");
        let http = Probe::Http {
            path: "/healthcheck".to_owned(),
            host: "api.example".to_owned(),
        };
        for probe in [Probe::Tcp, http] {
            let cases = [
                (&trusted, None),
                (
                    &other_name,
                    Some("TLS handshake: its certificate is not valid for the name api.example"),
                ),
                (
                    &unknown_ca,
                    Some("TLS handshake: its certificate is signed by a CA not in"),
                ),
                (&cleartext, Some("TLS handshake: it does not speak TLS")),
            ];
            for (addr, failure) in cases {
                let got =
                    tokio::time::timeout(Duration::from_secs(5), check(addr, &probe, Some(&hop)))
                        .await
                        .expect("a check ends");
                match failure {
                    None => assert_eq!(got, Outcome::Ok, "{probe:?}"),
                    Some(wanted) => assert!(
                        matches!(&got, Outcome::Fail(r) if r.starts_with(wanted)),
                        "{probe:?} {addr}: {got:?}"
                    ),
                }
            }
        }
        // Without TLS the same HTTP check of a TLS server fails: the session is what
        // carried it above.
        let http = Probe::Http {
            path: "/healthcheck".to_owned(),
            host: "api.example".to_owned(),
        };
        assert!(matches!(
            check(&trusted, &http, None).await,
            Outcome::Fail(_)
        ));
    }

    #[tokio::test]
    async fn a_server_whose_certificate_does_not_verify_goes_down_with_the_reason() {
        let pki = Pki::new("unit");
        let stranger = Pki::new("stranger");
        let addr = tls_server(&stranger, &["api.example"], b"").await;
        let health = Health::new(addr);
        let (_tx, stop) = stopper();
        let task = spawn_checker(
            health.clone(),
            (Probe::Tcp, Some(hop(&pki, "api.example"))),
            settings(1, 1),
            stop,
        );
        eventually("DOWN on the failed verification", || !health.is_up()).await;
        let reason = health.snapshot().last_result.unwrap_or_default();
        assert!(
            reason.contains("signed by a CA not in") && reason.contains("ca_file"),
            "{reason}"
        );
        task.abort();
    }
}
