//! Bodies stream through both routers in both directions without corruption
//! (docs/ARCHITECTURE.md §3.7): a 256 MiB generated upload and download, hashed end to end.

use std::convert::Infallible;

use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use integration_tests::client::{ClientBody, Conn, empty, request};
use integration_tests::lab::{Lab, LabOptions};
use integration_tests::pattern;
use sha2::{Digest, Sha256};

const SIZE: u64 = 256 << 20;

fn streamed(total: u64) -> ClientBody {
    let frames = futures_util::stream::iter(
        pattern::chunks(total).map(|c| Ok::<_, Infallible>(Frame::data(c))),
    );
    StreamBody::new(frames)
        .map_err(|never| match never {})
        .boxed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_upload_streams_through_two_routers_intact() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(9292);
    let expected = pattern::sha256(SIZE);
    let mut conn = Conn::open(vip).await.unwrap();
    // Chunked (no Content-Length), as a streaming image upload is sent.
    let req = request("PUT", vip, "/v2/images/abc/file")
        .header("X-Scope", r#"{"image": "RegionTwo"}"#)
        .header("Content-Type", "application/octet-stream")
        .body(streamed(SIZE))
        .unwrap();
    let r = conn.send(req).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let e = r.echo();
    assert_eq!(e.backend(), lab.two.backend_name(9292));
    assert_eq!(e.body_len(), SIZE);
    assert_eq!(e.body_sha256(), expected);

    // With a Content-Length the length survives both hops.
    let req = request("PUT", vip, "/v2/images/def/file")
        .header("Content-Length", (64u64 << 20).to_string())
        .body(streamed(64 << 20))
        .unwrap();
    let r = conn.send(req).await.unwrap();
    let e = r.echo();
    assert_eq!(e.header("content-length").as_deref(), Some("67108864"));
    assert_eq!(e.body_sha256(), pattern::sha256(64 << 20));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_download_streams_through_two_routers_intact() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(9292);
    let expected = pattern::sha256(SIZE);
    let mut conn = Conn::open(vip).await.unwrap();
    let req = request("GET", vip, &format!("/__download?bytes={SIZE}"))
        .header("X-Scope", r#"{"image": "RegionTwo"}"#)
        .body(empty())
        .unwrap();
    let resp = conn.send_head(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["x-backend"],
        lab.two.backend_name(9292).as_str()
    );
    let mut body = resp.into_body();
    let mut hasher = Sha256::new();
    let mut len = 0u64;
    while let Some(frame) = body.frame().await {
        if let Some(d) = frame.unwrap().data_ref() {
            hasher.update(d);
            len += d.len() as u64;
        }
    }
    assert_eq!(len, SIZE);
    assert_eq!(integration_tests::echo::hex(&hasher.finalize()), expected);
}

/// Proves the router does not buffer: the second half of the upload is only
/// produced after the backend has received the first half's bytes. A
/// buffering proxy would never deliver them, and the test would fail.
#[tokio::test]
async fn upload_reaches_the_backend_before_the_client_finished_sending() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(9292);
    let gate = lab.two.backends[&9292].gate.clone();
    let (tx, rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(1);
    let frames = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let body: ClientBody = StreamBody::new(frames)
        .map_err(|never| match never {})
        .boxed();
    let mut conn = Conn::open(vip).await.unwrap();
    let req = request("PUT", vip, "/__progress")
        .header("X-Scope", r#"{"image": "RegionTwo"}"#)
        .body(body)
        .unwrap();
    let sending = tokio::spawn(async move { conn.send(req).await.unwrap() });
    tx.send(bytes::Bytes::from_static(b"first half;"))
        .await
        .unwrap();
    gate.wait_arrived().await;
    tx.send(bytes::Bytes::from_static(b"second half"))
        .await
        .unwrap();
    drop(tx);
    let e = sending.await.unwrap().echo();
    assert_eq!(e.body_len(), 22);
}

/// The mirror image: the client reads the first chunk while the backend has
/// not yet produced the rest.
#[tokio::test]
async fn download_reaches_the_client_before_the_backend_finished_sending() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(9292);
    let gate = lab.two.backends[&9292].gate.clone();
    let total = 3 * pattern::CHUNK as u64;
    let mut conn = Conn::open(vip).await.unwrap();
    let req = request("GET", vip, &format!("/__download_gated?bytes={total}"))
        .header("X-Scope", r#"{"image": "RegionTwo"}"#)
        .body(empty())
        .unwrap();
    let mut body = conn.send_head(req).await.unwrap().into_body();
    let mut len = 0u64;
    while len < pattern::CHUNK as u64 {
        let frame = body.frame().await.unwrap().unwrap();
        len += frame.data_ref().map_or(0, |d| d.len() as u64);
    }
    gate.release.notify_one();
    while let Some(frame) = body.frame().await {
        len += frame.unwrap().data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(len, total);
}

/// An upload that lasts longer than the idle and request-body timeouts is fine as long
/// as bytes keep moving: both measure silence, not total duration. (Each one's negative
/// control: `a_download_silent_for_longer_than_idle_is_cut`,
/// `a_stalled_request_body_is_408_after_request_body_not_idle`.)
#[tokio::test]
async fn steady_upload_may_outlast_the_idle_timeout() {
    let lab = Lab::start(LabOptions {
        one_extra_toml: "[timeouts]\nidle = \"1s\"\nrequest_body = \"1s\"\n".into(),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let vip = lab.one.addr(9292);
    let frames = futures_util::stream::unfold(0u32, |i| async move {
        if i == 25 {
            return None;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        Some((
            Ok::<_, Infallible>(Frame::data(bytes::Bytes::from_static(b"0123456789"))),
            i + 1,
        ))
    });
    let body: ClientBody = StreamBody::new(frames)
        .map_err(|never| match never {})
        .boxed();
    let req = request("PUT", vip, "/v2/images/slow/file")
        .body(body)
        .unwrap();
    let r = Conn::open(vip).await.unwrap().send(req).await.unwrap();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.echo().body_len(), 250);
}

/// Negative control for the test above, on the side `idle` watches while a response
/// streams: the same `idle = "1s"` ends a download whose backend goes silent after the
/// first chunk (the client's body fails instead of hanging). With `idle` ignored, the
/// wait below would end only at its 20 s bound.
#[tokio::test]
async fn a_download_silent_for_longer_than_idle_is_cut() {
    let lab = Lab::start(LabOptions {
        one_extra_toml: "[timeouts]\nidle = \"1s\"\n".into(),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let vip = lab.one.addr(9292);
    let total = 3 * pattern::CHUNK as u64;
    let mut conn = Conn::open(vip).await.unwrap();
    // The gate is never released: the backend stays silent after its first chunk.
    let req = request("GET", vip, &format!("/__download_gated?bytes={total}"))
        .body(empty())
        .unwrap();
    let mut body = conn.send_head(req).await.unwrap().into_body();
    let rest = async {
        let mut len = 0u64;
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => len += frame.data_ref().map_or(0, |d| d.len() as u64),
                Err(e) => return Err((len, e)),
            }
        }
        Ok(len)
    };
    let outcome = tokio::time::timeout(std::time::Duration::from_secs(20), rest)
        .await
        .expect("idle did not end the silent download");
    assert!(
        outcome.is_err(),
        "a download cut by idle ended as if complete: {outcome:?}"
    );
}

/// A body that stalls longer than `[timeouts] request_body` between reads is answered 408 in
/// JSON, even under a long `idle`: a trickling client cannot hold a backend connection.
#[tokio::test]
async fn a_stalled_request_body_is_408_after_request_body_not_idle() {
    let lab = Lab::start(LabOptions {
        one_extra_toml: "[timeouts]\nrequest_body = \"300ms\"\nidle = \"1h\"\n".into(),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stalled_upload(lab.one.addr(9292), std::time::Duration::from_secs(30)),
    )
    .await
    .expect("request_body did not end the wait")
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    let body = out.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let json: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(json["error"]["code"], 408, "{out}");
    let message = json["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains("[timeouts] request_body"), "{out}");
}

/// Negative control for the test above: with the default `request_body`, the same pause
/// (well over 300 ms) in the middle of a body is fine.
#[tokio::test]
async fn a_pause_within_the_default_request_body_timeout_is_fine() {
    let lab = Lab::start(LabOptions {
        one_extra_toml: "[timeouts]\nidle = \"1h\"\n".into(),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(20),
        stalled_upload(lab.one.addr(9292), std::time::Duration::from_millis(1500)),
    )
    .await
    .expect("the upload did not finish")
    .unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
}

/// A 10-byte PUT whose body pauses for `pause` after 3 bytes; returns the whole answer.
async fn stalled_upload(
    vip: std::net::SocketAddr,
    pause: std::time::Duration,
) -> std::io::Result<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(vip).await?;
    s.write_all(
        b"PUT /v2/images/x/file HTTP/1.1\r\nHost: h\r\nContent-Length: 10\r\n\
          Connection: close\r\n\r\n012",
    )
    .await?;
    let mut out = Vec::new();
    // The answer may come during the pause (the 408); then the rest is not sent.
    tokio::select! {
        read = s.read_to_end(&mut out) => {
            read?;
        }
        () = tokio::time::sleep(pause) => {
            s.write_all(b"3456789").await?;
            s.read_to_end(&mut out).await?;
        }
    }
    Ok(String::from_utf8_lossy(&out).into_owned())
}
