//! HTTP/1.1 edge behaviour: hop-by-hop headers, head size limits, request
//! framing, keep-alive across regions, isolation of malformed requests.

use integration_tests::client::{Conn, empty, get, raw, request};
use integration_tests::lab::{Lab, LabOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn hop_by_hop_headers_never_reach_the_backend() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let r = get(
        lab.one.addr(9292),
        "/v2/images",
        &[
            ("Connection", "keep-alive, X-Hop-Secret"),
            ("X-Hop-Secret", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Connection", "keep-alive"),
            ("TE", "trailers"),
            ("Trailer", "X-Checksum"),
            ("Upgrade", "websocket"),
            ("X-End-To-End", "kept"),
        ],
    )
    .await
    .unwrap();
    let e = r.echo();
    for h in [
        "x-hop-secret",
        "keep-alive",
        "proxy-connection",
        "te",
        "trailer",
        "upgrade",
    ] {
        assert!(
            e.header(h).is_none(),
            "{h} leaked to the backend: {:?}",
            e.0["headers"]
        );
    }
    if let Some(c) = e.header("connection") {
        assert!(!c.to_ascii_lowercase().contains("x-hop-secret"), "{c}");
    }
    assert_eq!(e.header("x-end-to-end").as_deref(), Some("kept"));
}

#[tokio::test]
async fn upgrade_is_refused_on_scoped_listeners() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let r = get(
        lab.one.addr(9292),
        "/v2/images",
        &[("Connection", "upgrade"), ("Upgrade", "websocket")],
    )
    .await
    .unwrap();
    // The backend answered as for a plain request: no protocol switch.
    assert_eq!(r.status, 200);
    assert!(r.echo().header("upgrade").is_none());
}

#[tokio::test]
async fn oversized_request_head_is_431_json() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let big = "x".repeat(20 * 1024);
    let r = get(lab.one.addr(8774), "/v2.1/servers", &[("X-Big", &big)])
        .await
        .unwrap();
    assert_eq!(r.status, 431);
    assert_eq!(r.json()["error"]["code"], 431);
    // A head just under the limit still passes.
    let fits = "x".repeat(12 * 1024);
    assert_eq!(
        get(lab.one.addr(8774), "/v2.1/servers", &[("X-Big", &fits)])
            .await
            .unwrap()
            .status,
        200
    );
}

#[tokio::test]
async fn too_many_header_fields_is_431() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    // 101: one over hyper's limit, within what an HTTP parser with more room accepts;
    // 150: far over.
    for fields in [101, 150] {
        let mut req = String::from("GET /v2.1/servers HTTP/1.1\r\nHost: h\r\n");
        // Host is one of the fields.
        for i in 1..fields {
            req.push_str(&format!("X-F{i}: v\r\n"));
        }
        req.push_str("\r\n");
        let out = raw(lab.one.addr(8774), req.as_bytes()).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 431"), "{fields}: {out}");
        // hyper refuses it before the router sees a request; the answer is still ours.
        assert_problem_body(&out, 431, "more than 100 header fields");
    }
    assert!(lab.one.backends[&8774].gate.seen().is_empty());
}

/// `out` (a whole raw response) carries the OpenStack JSON error body for `code`, with a
/// `Content-Length` matching it, and its message contains `needle`.
fn assert_problem_body(out: &str, code: u16, needle: &str) {
    let (head, body) = out.split_once("\r\n\r\n").unwrap_or((out, ""));
    let head = head.to_ascii_lowercase();
    assert!(head.contains("content-type: application/json"), "{out}");
    assert!(
        head.contains(&format!("content-length: {}", body.len())),
        "{out}"
    );
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["error"]["code"], code, "{out}");
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(needle), "{out}");
}

#[tokio::test]
async fn heads_hyper_refuses_get_the_json_body() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(8774);
    for head in [
        // A malformed request line, then a header field name with a space.
        "GET /v2.1/servers HTTP/1.1 trailing\r\nHost: h\r\n\r\n",
        "GET /v2.1/servers HTTP/1.1\r\nHost: h\r\nBad Name: v\r\n\r\n",
    ] {
        let out = raw(vip, head.as_bytes()).await.unwrap();
        assert!(out.starts_with("HTTP/1.1 400"), "{head:?}: {out}");
        assert_problem_body(&out, 400, "malformed");
    }
    // After a served request on the same connection, too.
    let two = "GET /v2.1/a HTTP/1.1\r\nHost: h\r\n\r\nGET /v2.1/b HTTP/1.1\r\nBad Name: v\r\n\r\n";
    let out = raw(vip, two.as_bytes()).await.unwrap();
    let refusal = out.find("HTTP/1.1 400").unwrap_or_else(|| panic!("{out}"));
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_problem_body(&out[refusal..], 400, "malformed");
    assert_eq!(lab.one.backends[&8774].gate.seen(), ["GET /v2.1/a"]);
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_400_and_closes() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(8774);
    // A clean request first: the verdict for the second one must line up.
    let req = "GET /v2.1/a HTTP/1.1\r\nHost: h\r\n\r\n\
               POST /v2.1/servers HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n\
               5\r\nhello\r\n0\r\n\r\n";
    let out = raw(vip, req.as_bytes()).await.unwrap();
    let first = out.find("HTTP/1.1 200").unwrap_or(usize::MAX);
    let second = out.find("HTTP/1.1 400").unwrap_or(usize::MAX);
    assert!(first < second && second != usize::MAX, "{out}");
    assert!(
        out.contains(r#""code":400"#) && out.contains("Content-Length and Transfer-Encoding"),
        "{out}"
    );
    assert_eq!(lab.one.backends[&8774].gate.seen(), ["GET /v2.1/a"]);

    // The other order of the two headers, and a request smuggled behind it:
    // rejected, connection closed, nothing reaches a backend.
    let smuggle = "POST /v2.1/servers HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n\
                   0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut s = tokio::net::TcpStream::connect(vip).await.unwrap();
    s.write_all(smuggle.as_bytes()).await.unwrap();
    let mut sink = Vec::new();
    let _ = s.read_to_end(&mut sink).await;
    let text = String::from_utf8_lossy(&sink);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "{text}");
    assert_eq!(lab.one.backends[&8774].gate.seen(), ["GET /v2.1/a"]);

    // hyper ignores a Content-Length after Transfer-Encoding, even one that is
    // no number: still ambiguous, still rejected.
    let unreadable = "POST /v2.1/servers HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 4x\r\n\r\n\
                      0\r\n\r\n";
    let out = raw(vip, unreadable.as_bytes()).await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 400") && out.contains("Content-Length and Transfer-Encoding"),
        "{out}"
    );
    assert_eq!(lab.one.backends[&8774].gate.seen(), ["GET /v2.1/a"]);
}

#[tokio::test]
async fn a_transfer_coding_before_chunked_is_501_not_lost() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(8774);
    // RFC 9112 §6.1: a coding the router does not apply itself must not be dropped while
    // the body is re-chunked; nothing reaches the backend.
    let gzip = "POST /v2.1/servers HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
                5\r\nhello\r\n0\r\n\r\n";
    let out = raw(vip, gzip.as_bytes()).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 501"), "{out}");
    assert_problem_body(&out, 501, "'gzip'");
    assert!(lab.one.backends[&8774].gate.seen().is_empty());
    // Plain chunked still goes through.
    let plain = "POST /v2.1/servers HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
                 5\r\nhello\r\n0\r\n\r\n";
    let out = raw(vip, plain.as_bytes()).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert_eq!(lab.one.backends[&8774].gate.seen(), ["POST /v2.1/servers"]);
}

#[tokio::test]
async fn chunked_and_fixed_bodies_on_one_connection_keep_their_verdicts() {
    // Body bytes that look like a CL+TE head must not be taken for one.
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(8774);
    let lookalike = "GET /x HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    let req = format!(
        "PUT /v2.1/one HTTP/1.1\r\nHost: h\r\nContent-Length: {}\r\n\r\n{lookalike}\
         PUT /v2.1/two HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{lookalike}\r\n0\r\n\r\n\
         GET /v2.1/three HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
        lookalike.len(),
        lookalike.len()
    );
    let out = raw(vip, req.as_bytes()).await.unwrap();
    assert_eq!(out.matches("HTTP/1.1 200").count(), 3, "{out}");
    assert_eq!(
        lab.one.backends[&8774].gate.seen(),
        ["PUT /v2.1/one", "PUT /v2.1/two", "GET /v2.1/three"]
    );
}

#[tokio::test]
async fn garbage_request_gets_400_without_disturbing_an_in_flight_one() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(8774);
    let gate = lab.one.backends[&8774].gate.clone();
    let mut conn = Conn::open(vip).await.unwrap();
    let good = tokio::spawn(async move {
        let req = request("GET", vip, "/__gate").body(empty()).unwrap();
        conn.send(req).await.unwrap()
    });
    gate.wait_arrived().await;
    let out = raw(vip, b"NOT AN HTTP REQUEST\r\n\r\n").await.unwrap();
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    gate.release.notify_one();
    let r = good.await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().path(), "/__gate");
}

#[tokio::test]
async fn one_keep_alive_connection_alternates_regions() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(8774);
    let mut conn = Conn::open(vip).await.unwrap();
    for i in 0..40 {
        let region = if i % 2 == 0 { "RegionOne" } else { "RegionTwo" };
        let req = request("GET", vip, &format!("/v2.1/servers/{i}"))
            .header("X-Scope", format!(r#"{{"compute": "{region}"}}"#))
            .body(empty())
            .unwrap();
        let r = conn.send(req).await.unwrap();
        assert_eq!(r.status, 200, "request {i}");
        let e = r.echo();
        let expected = if i % 2 == 0 {
            lab.one.backend_name(8774)
        } else {
            lab.two.backend_name(8774)
        };
        assert_eq!(e.backend(), expected, "request {i}");
        assert!(
            e.path().ends_with(&format!("/v2.1/servers/{i}")),
            "{}",
            e.path()
        );
    }
    assert!(!conn.is_closed());
}

#[tokio::test]
async fn a_client_stalling_inside_the_request_head_is_disconnected() {
    // Only the request-header timeout can end this connection: idle is long.
    let lab = Lab::start(LabOptions {
        one_extra_toml: "[timeouts]\nrequest_header = \"300ms\"\nidle = \"1h\"\n".into(),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let mut s = tokio::net::TcpStream::connect(lab.one.addr(8774))
        .await
        .unwrap();
    s.write_all(b"GET /v2.1/servers HTTP/1.1\r\nHost: h\r\nX-Partial: ")
        .await
        .unwrap();
    let mut out = Vec::new();
    // Bounded below the default request_header (10 s): were the 300 ms setting ignored,
    // the default would not close the connection in time and this would fail.
    let closed =
        tokio::time::timeout(std::time::Duration::from_secs(5), s.read_to_end(&mut out)).await;
    assert!(
        closed.is_ok(),
        "the router kept a stalled request head open"
    );
    assert!(lab.one.backends[&8774].gate.seen().is_empty());
}

/// Heads the router must answer itself, never forward: (name, raw request, status,
/// text the JSON message must contain). Each on a scoped and on a passthrough HTTP
/// listener.
const REFUSED_HEADS: &[(&str, &str, u16, &str)] = &[
    (
        "duplicate Host",
        "GET /v2/images HTTP/1.1\r\nHost: {vip}\r\nHost: evil.example\r\n\r\n",
        400,
        "2 Host header fields",
    ),
    (
        "HTTP/1.1 without Host",
        "GET /v2/images HTTP/1.1\r\nX-Scope: {}\r\n\r\n",
        400,
        "must carry a Host header",
    ),
    (
        "CONNECT",
        "CONNECT {vip} HTTP/1.1\r\nHost: {vip}\r\n\r\n",
        405,
        "CONNECT is not served here",
    ),
];

#[tokio::test]
async fn bad_heads_are_refused_at_the_edge_in_openstack_json() {
    let lab = Lab::start(LabOptions {
        passthrough: true,
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let Some(pt) = &lab.passthrough else {
        panic!("passthrough lab");
    };
    let mut failures = Vec::new();
    for vip in [lab.one.addr(9292), pt.http_addr] {
        for (name, head, status, needle) in REFUSED_HEADS {
            let req = head.replace("{vip}", &vip.to_string());
            let out = match raw(vip, req.as_bytes()).await {
                Ok(out) => out,
                Err(e) => {
                    failures.push(format!("{name} on {vip}: {e}"));
                    continue;
                }
            };
            let status_line = format!("HTTP/1.1 {status} ");
            let ok = out.starts_with(&status_line)
                && out.contains(&format!("\"code\":{status}"))
                && out.contains(needle)
                && out.to_ascii_lowercase().contains("connection: close")
                && (*status != 405 || out.to_ascii_lowercase().contains("\r\nallow: get"));
            if !ok {
                failures.push(format!("{name} on {vip}: {out}"));
            }
        }
    }
    // None of them reached a backend.
    for (port, backend) in &lab.one.backends {
        let seen = backend.gate.seen();
        if !seen.is_empty() {
            failures.push(format!("backend :{port} saw {seen:?}"));
        }
    }
    let seen = pt.http_backend.gate.seen();
    if !seen.is_empty() {
        failures.push(format!("the passthrough backend saw {seen:?}"));
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// An HTTP/1.0 request may omit Host: the backend gets the address the client dialled,
/// never the router's internal backend address.
#[tokio::test]
async fn http10_without_host_gets_the_dialled_address() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(9292);
    let out = raw(vip, b"GET /v2/images HTTP/1.0\r\n\r\n").await.unwrap();
    assert!(
        out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200"),
        "{out}"
    );
    let body = &out[out.find("\r\n\r\n").unwrap() + 4..];
    let echo: serde_json::Value = serde_json::from_str(body.trim()).unwrap();
    assert_eq!(echo["headers"]["host"][0], vip.to_string(), "{echo}");
}

/// Sends `pieces` on one connection with a pause after each but the last, far longer than
/// the 50 ms after which a client stalled inside a head is parked holding it (a wait, not
/// a measurement), then reads until the router closes.
async fn raw_in_pieces(addr: std::net::SocketAddr, pieces: &[&[u8]]) -> String {
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect to the router");
    for (i, piece) in pieces.iter().enumerate() {
        if i > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        }
        s.write_all(piece)
            .await
            .expect("send a piece of the request");
    }
    let mut out = Vec::new();
    integration_tests::client::bounded("the end of the connection", s.read_to_end(&mut out))
        .await
        .expect("the router closes")
        .expect("read the answer");
    String::from_utf8_lossy(&out).into_owned()
}

/// A client that stalls inside its head is parked holding it (docs/ARCHITECTURE.md §10);
/// once the rest comes, the head is served exactly as if it had arrived whole, and so is
/// what followed it.
#[tokio::test]
async fn a_head_that_stalls_then_completes_is_served_as_sent() {
    let lab = Lab::start(LabOptions {
        passthrough: true,
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let pt = lab.passthrough.as_ref().unwrap();
    for (vip, seen) in [
        (lab.one.addr(8774), lab.one.backends[&8774].gate.clone()),
        (pt.http_addr, pt.http_backend.gate.clone()),
    ] {
        let out = raw_in_pieces(
            vip,
            &[
                b"GET /v2.1/servers/1 HTTP/1.1\r\nHo",
                b"st: h\r\nX-Trick",
                b"led: yes\r\n\r\nGET /v2.1/servers/2 HTTP/1.1\r\nHost: h\r\nConn",
                b"ection: close\r\n\r\n",
            ],
        )
        .await;
        assert_eq!(out.matches("HTTP/1.1 200 ").count(), 2, "{vip}: {out}");
        assert!(out.contains("x-trickled"), "{vip}: {out}");
        assert_eq!(
            seen.seen(),
            ["GET /v2.1/servers/1", "GET /v2.1/servers/2"],
            "{vip}"
        );
    }
}

/// Heads refused at the edge keep their JSON answers when they arrive in stalled pieces:
/// hyper refuses the replayed head as it would the whole one.
#[tokio::test]
async fn a_stalled_head_gets_the_same_refusals() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(8774);
    let many_fields: String = (0..150).map(|i| format!("X-F{i}: v\r\n")).collect();
    let (many_a, many_b) = many_fields.split_at(many_fields.len() / 2);
    let big = "x".repeat(20 * 1024);
    let huge = "x".repeat(70 * 1024);
    let cases: Vec<(Vec<String>, u16, &str)> = vec![
        (
            vec![
                "GET /v2.1/servers HTTP/1.1\r\nHost: h\r\nBad Na".into(),
                "me: v\r\n\r\n".into(),
            ],
            400,
            "malformed",
        ),
        (
            vec![
                "POST /v2.1/servers HTTP/1.1\r\nHost: h\r\nContent-Length: 4\r\nTransfer-Enc"
                    .into(),
                "oding: chunked\r\n\r\n0\r\n\r\n".into(),
            ],
            400,
            "Content-Length and Transfer-Encoding",
        ),
        (
            vec![
                format!("GET /v2.1/servers HTTP/1.1\r\nHost: h\r\n{many_a}"),
                format!("{many_b}\r\n"),
            ],
            431,
            "more than 100 header fields",
        ),
        (
            vec![
                format!(
                    "GET /v2.1/servers HTTP/1.1\r\nHost: h\r\nX-Big: {}",
                    &big[..10_000]
                ),
                format!("{}\r\n\r\n", &big[10_000..]),
            ],
            431,
            "max_header_bytes",
        ),
        // Past the watch's cap (4 × max_header_bytes): hyper's own 431, in JSON.
        (
            vec![
                format!(
                    "GET /v2.1/servers HTTP/1.1\r\nHost: h\r\nX-Huge: {}",
                    &huge[..30_000]
                ),
                format!("{}\r\n\r\n", &huge[30_000..]),
            ],
            431,
            "max_header_bytes",
        ),
        (
            vec![
                "GET /v2.1/servers HTTP/1.1\r\nHost: h\r\nHo".into(),
                "st: evil.example\r\n\r\n".into(),
            ],
            400,
            "2 Host header fields",
        ),
    ];
    for (pieces, code, needle) in cases {
        let bytes: Vec<&[u8]> = pieces.iter().map(|p| p.as_bytes()).collect();
        let out = raw_in_pieces(vip, &bytes).await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {code} ")),
            "{needle}: {out}"
        );
        assert_problem_body(&out, code, needle);
    }
    assert!(lab.one.backends[&8774].gate.seen().is_empty());
}
