//! Hop-by-hop header handling (RFC 9110 §7.6.1), the list fields every
//! forwarded request extends (`X-Forwarded-For`, `Via`), and request head
//! size checks.

use std::net::{IpAddr, SocketAddr};

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that describe one connection, never the message end to end.
const HOP_BY_HOP: [&str; 7] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The same names, as header names (index for index).
static HOP_BY_HOP_NAMES: [HeaderName; 7] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// `Connection`'s bit in a [`hop_by_hop_bit`] set.
const CONNECTION_BIT: u8 = 1;

/// `1 << i` when `name` is `HOP_BY_HOP[i]`, else 0: a set of the hop-by-hop fields of a
/// head in one pass over its names.
fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    match name.as_str() {
        "connection" => CONNECTION_BIT,
        "keep-alive" => 1 << 1,
        "proxy-connection" => 1 << 2,
        "te" => 1 << 3,
        "trailer" => 1 << 4,
        "transfer-encoding" => 1 << 5,
        "upgrade" => 1 << 6,
        _ => 0,
    }
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    hop_by_hop_bit(name) != 0
}

/// Whether `name` must not be taken from a trailer section: RFC 9110 §6.5.1's fields that
/// frame, route, modify, authenticate or describe the message (a recipient "MUST NOT merge"
/// them from trailers), the hop-by-hop ones, and those this router reads or sets on the
/// head (the scope carriers, `X-Identity-*`, `X-Forwarded-For`, `Via`): a trailer would
/// otherwise smuggle past every check made on the head. Lowercase, as `HeaderName` is.
fn forbidden_in_trailers(name: &HeaderName) -> bool {
    is_hop_by_hop(name)
        || matches!(
            name.as_str(),
            // Framing and routing.
            "content-length" | "host"
            // Request modifiers: controls and conditionals.
            | "cache-control" | "expect" | "max-forwards" | "pragma" | "range"
            | "if-match" | "if-none-match" | "if-modified-since" | "if-unmodified-since"
            | "if-range"
            // Authentication.
            | "authorization" | "proxy-authorization" | "www-authenticate"
            | "proxy-authenticate" | "authentication-info" | "proxy-authentication-info"
            | "cookie" | "set-cookie"
            // Response control data.
            | "age" | "expires" | "date" | "location" | "retry-after" | "vary" | "warning"
            // How to process the content.
            | "content-encoding" | "content-type" | "content-range"
            // This router's own, and what it adds per hop.
            | "x-scope" | "x-auth-token" | "x-subject-token" | "x-identity-region"
            | "x-identity-url" | "x-forwarded-for" | "forwarded" | "via"
        )
}

/// Removes the fields that must not be trailers ([`forbidden_in_trailers`]) from a trailer
/// section, in either direction; `true` when nothing is left. Runs only for a message
/// that has trailers, and allocates only when one must go.
pub fn drop_forbidden_trailers(trailers: &mut HeaderMap) -> bool {
    let doomed: Vec<HeaderName> = trailers
        .keys()
        .filter(|n| forbidden_in_trailers(n))
        .cloned()
        .collect();
    for name in &doomed {
        trailers.remove(name);
    }
    trailers.is_empty()
}

/// Whether a request (or a 101 response) asks to switch protocols.
pub fn wants_upgrade(headers: &HeaderMap) -> bool {
    headers.contains_key(header::UPGRADE)
        && connection_tokens(headers).any(|t| t.eq_ignore_ascii_case("upgrade"))
}

/// The comma-separated tokens of every `Connection` field, trimmed.
pub(crate) fn connection_tokens(headers: &HeaderMap) -> impl Iterator<Item = &str> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

/// Removes every hop-by-hop header plus those the `Connection` header names.
/// With `keep_upgrade` and a genuine upgrade request, `Upgrade` survives and
/// `Connection` is reduced to `upgrade` so the next hop switches protocols too.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    // One scan of the names says which are present: most requests carry none, and
    // most responses only `Connection`.
    let present = headers.keys().fold(0, |set, n| set | hop_by_hop_bit(n));
    if present == 0 {
        return;
    }
    // The usual response: `Connection: keep-alive` (or `close`) alone, which names no
    // other field; under callgrind the general path below cost ≈ 1k instructions more.
    if present == CONNECTION_BIT {
        let mut values = headers.get_all(header::CONNECTION).iter();
        if let (Some(only), None) = (values.next(), values.next())
            && names_no_field(only.as_bytes())
        {
            headers.remove(header::CONNECTION);
            return;
        }
    }
    let upgrade = if keep_upgrade && wants_upgrade(headers) {
        headers.get(header::UPGRADE).cloned()
    } else {
        None
    };
    // Other fields named by `Connection` (rare; `close` names no field).
    let named: Vec<HeaderName> = connection_tokens(headers)
        .filter(|t| {
            !t.eq_ignore_ascii_case("close")
                && !HOP_BY_HOP.iter().any(|h| t.eq_ignore_ascii_case(h))
        })
        .filter_map(|t| HeaderName::from_bytes(t.as_bytes()).ok())
        .collect();
    let listed = HOP_BY_HOP_NAMES
        .iter()
        .enumerate()
        .filter(|(i, _)| present & (1 << i) != 0)
        .map(|(_, name)| name);
    for name in named.iter().chain(listed) {
        headers.remove(name);
    }
    if let Some(upgrade) = upgrade {
        headers.insert(header::UPGRADE, upgrade);
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

/// Whether a `Connection` value is the single option `keep-alive` or `close`.
fn names_no_field(value: &[u8]) -> bool {
    let token = value.trim_ascii();
    token.eq_ignore_ascii_case(b"keep-alive") || token.eq_ignore_ascii_case(b"close")
}

/// Appends `item` to the comma-separated list in `name`, folding existing lines into one:
/// backends that read only the first line still see the whole chain. Scoped and
/// passthrough requests alike go through here, so both reach backends the same way.
static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// A request that reached a TLS listener: `X-Forwarded-Proto: https`, replacing whatever
/// the client sent (as Kolla's HAProxy does), so a backend builds `https://` links and no
/// client can claim TLS it did not use. Cleartext listeners leave the field as it came:
/// the router in front of them (another region's, terminating TLS) set it.
pub fn mark_https(headers: &mut HeaderMap) {
    headers.insert(X_FORWARDED_PROTO.clone(), HeaderValue::from_static("https"));
}

pub(crate) fn append_list(headers: &mut HeaderMap, name: &HeaderName, item: &HeaderValue) {
    // Per-request hot path: the usual request carries neither header, and cloning a
    // precomputed value costs no allocation.
    if !headers.contains_key(name) {
        headers.insert(name.clone(), item.clone());
        return;
    }
    let mut folded: Vec<u8> = Vec::new();
    for v in headers.get_all(name) {
        folded.extend_from_slice(v.as_bytes());
        folded.extend_from_slice(b", ");
    }
    folded.extend_from_slice(item.as_bytes());
    if let Ok(value) = HeaderValue::from_bytes(&folded) {
        headers.insert(name.clone(), value);
    }
}

/// The client address as a header value, formatted without a heap `String`.
///
/// Formatting an address was 3 % of the proxy's user-space instructions per request
/// (callgrind, bench scenario j; docs/performance.md), and a connection's requests come
/// from one address: the last one formatted on this thread is kept, so a run of requests
/// from one client formats it once, without a byte more per connection (the idle budget).
pub(crate) fn peer_value(peer: SocketAddr) -> HeaderValue {
    use std::cell::RefCell;
    thread_local! {
        static LAST: RefCell<Option<(IpAddr, HeaderValue)>> = const { RefCell::new(None) };
    }
    let ip = peer.ip().to_canonical();
    LAST.with(|last| {
        let mut last = last.borrow_mut();
        if let Some((cached, value)) = &*last
            && *cached == ip
        {
            return value.clone();
        }
        let value = format_ip(ip);
        *last = Some((ip, value.clone()));
        value
    })
}

fn format_ip(ip: IpAddr) -> HeaderValue {
    use std::io::Write as _;
    let mut buf = [0u8; 64];
    let mut cursor = std::io::Cursor::new(&mut buf[..]);
    // 64 bytes hold any IPv6 text form, so the write cannot fail.
    let _ = write!(cursor, "{ip}");
    let len = usize::try_from(cursor.position()).unwrap_or(0);
    HeaderValue::from_bytes(&buf[..len]).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

/// Length of `value`'s `Display` form, without building the string.
fn displayed_len(value: &impl std::fmt::Display) -> usize {
    struct Count(usize);
    impl std::fmt::Write for Count {
        fn write_str(&mut self, s: &str) -> std::fmt::Result {
            self.0 += s.len();
            Ok(())
        }
    }
    let mut count = Count(0);
    // Count never fails, so neither can the formatting.
    let _ = std::fmt::write(&mut count, format_args!("{value}"));
    count.0
}

/// Approximate size of the request head as it was on the wire: request line
/// plus `Name: value\r\n` per header. Used to enforce `proxy.max_header_bytes`.
pub fn head_size(method: &http::Method, uri: &http::Uri, headers: &HeaderMap) -> usize {
    let line = method.as_str().len() + 1 + displayed_len(uri) + " HTTP/1.1\r\n".len();
    let fields: usize = headers
        .iter()
        .map(|(n, v)| n.as_str().len() + 2 + v.len() + 2)
        .sum();
    line + fields + 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_that_must_not_be_trailers_are_dropped() {
        let mut t = HeaderMap::new();
        for (n, v) in [
            ("host", "evil"),
            ("content-length", "5"),
            ("transfer-encoding", "chunked"),
            ("x-scope", r#"{"compute": "RegionTwo"}"#),
            ("x-auth-token", "t"),
            ("authorization", "Basic x"),
            ("content-type", "text/plain"),
            ("via", "1.1 spoof"),
            ("x-checksum", "42"),
        ] {
            t.append(HeaderName::from_static(n), HeaderValue::from_static(v));
        }
        assert!(!drop_forbidden_trailers(&mut t));
        assert_eq!(t.len(), 1, "{t:?}");
        assert_eq!(t["x-checksum"], "42");
        let mut only_bad = HeaderMap::new();
        only_bad.insert(header::HOST, HeaderValue::from_static("h"));
        assert!(drop_forbidden_trailers(&mut only_bad));
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(
                HeaderName::from_bytes(n.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_listed_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, X-Secret-Hop"),
            ("keep-alive", "timeout=5"),
            ("proxy-connection", "keep-alive"),
            ("te", "trailers"),
            ("trailer", "X-Checksum"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "websocket"),
            ("x-secret-hop", "1"),
            ("x-auth-token", "abc"),
            ("content-length", "3"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let left: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, ["x-auth-token", "content-length"]);
    }

    #[test]
    fn the_usual_connection_option_alone_is_removed_and_nothing_else() {
        for (case, fields, left) in [
            (
                "keep-alive",
                &[("connection", "keep-alive"), ("server", "nginx")][..],
                &["server"][..],
            ),
            (
                "close, capitalised",
                &[("connection", " Close "), ("server", "nginx")],
                &["server"],
            ),
            (
                "keep-alive naming a field",
                &[
                    ("connection", "keep-alive, x-hop"),
                    ("x-hop", "1"),
                    ("server", "n"),
                ],
                &["server"],
            ),
            (
                "two Connection lines",
                &[
                    ("connection", "keep-alive"),
                    ("connection", "x-hop"),
                    ("x-hop", "1"),
                ],
                &[],
            ),
            (
                "a field named alone",
                &[("connection", "x-hop"), ("x-hop", "1"), ("server", "n")],
                &["server"],
            ),
            (
                "with Keep-Alive",
                &[("connection", "keep-alive"), ("keep-alive", "timeout=5")],
                &[],
            ),
        ] {
            let mut h = map(fields);
            strip_hop_by_hop(&mut h, false);
            let kept: Vec<&str> = h.keys().map(|k| k.as_str()).collect();
            assert_eq!(kept, left, "{case}");
        }
    }

    #[test]
    fn the_fast_check_knows_every_listed_header() {
        for (i, name) in HOP_BY_HOP.iter().enumerate() {
            assert!(is_hop_by_hop(&HeaderName::from_static(name)), "{name}");
            assert_eq!(HOP_BY_HOP_NAMES[i].as_str(), *name);
            assert_eq!(hop_by_hop_bit(&HOP_BY_HOP_NAMES[i]), 1 << i, "{name}");
        }
        assert!(!is_hop_by_hop(&header::CONTENT_LENGTH));
        let mut h = map(&[("x-auth-token", "abc"), ("accept", "*/*")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h.len(), 2);
    }

    #[test]
    fn keeps_a_real_upgrade_when_asked() {
        let mut h = map(&[
            ("connection", "Upgrade, x-drop"),
            ("upgrade", "websocket"),
            ("x-drop", "1"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h.get("upgrade").unwrap(), "websocket");
        assert_eq!(h.get("connection").unwrap(), "upgrade");
        assert!(h.get("x-drop").is_none());
    }

    #[test]
    fn upgrade_without_connection_token_is_not_an_upgrade() {
        let mut h = map(&[("upgrade", "websocket")]);
        assert!(!wants_upgrade(&h));
        strip_hop_by_hop(&mut h, true);
        assert!(h.is_empty());
    }

    #[test]
    fn displayed_len_matches_the_string() {
        let uri: http::Uri = "http://vip:8774/v2.1/servers?limit=5".parse().unwrap();
        assert_eq!(displayed_len(&uri), uri.to_string().len());
    }

    #[test]
    fn head_size_counts_every_field() {
        let h = map(&[("host", "a:1"), ("x-long", &"v".repeat(1000))]);
        let size = head_size(&http::Method::GET, &"/x".parse().unwrap(), &h);
        assert!(size > 1000 && size < 1100, "{size}");
    }

    #[test]
    fn peer_value_names_each_client_whatever_came_before() {
        // The per-thread cache must never answer for another address.
        let cases = [
            ("192.0.2.7:40000", "192.0.2.7"),
            ("192.0.2.7:40001", "192.0.2.7"),
            ("198.51.100.1:5", "198.51.100.1"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            // IPv4-mapped IPv6 (a dual-stack listener) is written as IPv4.
            ("[::ffff:192.0.2.7]:9", "192.0.2.7"),
            ("192.0.2.8:40000", "192.0.2.8"),
            ("192.0.2.7:40000", "192.0.2.7"),
        ];
        for (peer, want) in cases {
            let peer: SocketAddr = peer.parse().unwrap();
            assert_eq!(peer_value(peer), want, "{peer}");
        }
    }
}
