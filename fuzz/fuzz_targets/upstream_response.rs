//! The upstream response parser (`proxy/upstream/wire.rs`, `parse_response_head`, and
//! the body decoder's trailer-section parser in `body.rs`).
//!
//! Input: one byte choosing the request method, then what the backend sent. Checked: no
//! panic; a head is found only within the bytes and parses the same from exactly its
//! own bytes; more bytes are asked for only below the head-size cap; a fixed length is
//! the one length every Content-Length value gives; a body framed both by length and by
//! chunks never keeps the connection; no body is read after HEAD, 204 or 304. Whatever a
//! trailer scan accepts as a complete section either parses or is refused, without panic.
#![no_main]

use http::{Method, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use scope_router::fuzzing;
use scope_router::proxy::h1::TrailerScan;
use scope_router::proxy::upstream::wire::{
    MAX_RESPONSE_HEAD, Parsed, ResponseFraming, parse_response_head,
};

const METHODS: [Method; 4] = [Method::GET, Method::HEAD, Method::POST, Method::PUT];

fuzz_target!(|data: &[u8]| {
    let Some((&m, wire)) = data.split_first() else {
        return;
    };
    let method = &METHODS[usize::from(m) % METHODS.len()];
    match parse_response_head(wire, method) {
        Ok(Parsed::Partial) => assert!(wire.len() < MAX_RESPONSE_HEAD, "partial past the cap"),
        Ok(Parsed::Interim(len)) => {
            assert!(len > 0 && len <= wire.len());
            assert!(matches!(
                parse_response_head(&wire[..len], method),
                Ok(Parsed::Interim(l)) if l == len
            ));
            // What follows an interim response is read as the next head.
            let _ = parse_response_head(&wire[len..], method);
        }
        Ok(Parsed::Final(head, len)) => {
            assert!(len > 0 && len <= wire.len());
            assert!(!head.status.is_informational());
            match parse_response_head(&wire[..len], method) {
                Ok(Parsed::Final(again, l)) => {
                    assert_eq!(l, len);
                    assert_eq!(again.framing, head.framing);
                    assert_eq!(again.keep_alive, head.keep_alive);
                }
                other => panic!("the head alone parses differently: {other:?}"),
            }
            let no_body = *method == Method::HEAD
                || head.status == StatusCode::NO_CONTENT
                || head.status == StatusCode::NOT_MODIFIED;
            if no_body {
                assert_eq!(head.framing, ResponseFraming::None);
            }
            let te = head.headers.contains_key(header::TRANSFER_ENCODING);
            let cl = head.headers.contains_key(header::CONTENT_LENGTH);
            if !no_body && te && cl {
                assert!(
                    !head.keep_alive,
                    "both framings, yet the connection is kept"
                );
            }
            if let ResponseFraming::Length(n) = head.framing {
                assert!(!te);
                for v in head.headers.get_all(header::CONTENT_LENGTH) {
                    for member in v.as_bytes().split(|b| *b == b',') {
                        let text = std::str::from_utf8(member.trim_ascii()).expect("digits");
                        assert_eq!(text.parse::<u64>().ok(), Some(n), "two lengths as one");
                    }
                }
            }
            if head.framing == ResponseFraming::UntilClose {
                assert!(!head.keep_alive, "read-until-close keeps the connection");
            }
            trailers(&wire[len..]);
        }
        Err(_) => {}
    }
    trailers(wire);
});

/// The section a trailer scan finds complete, parsed as the body decoder parses it.
fn trailers(bytes: &[u8]) {
    let mut scan = TrailerScan::default();
    if let Ok(Some(len)) = scan.feed(bytes) {
        let _ = fuzzing::trailer_fields(&bytes[..len]);
    }
}
