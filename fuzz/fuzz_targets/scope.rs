//! The scope reader (`scope.rs`): `X-Scope`, and the scope after `!SCOPE!` in
//! `X-Auth-Token` / `X-Subject-Token`, as JSON or percent-encoded JSON.
//!
//! Two input shapes:
//! - a request header block (`Name: value\r\n`…, the seeds): the reader never panics, an
//!   accepted scope's regions are strings with no empty `A|B` alternative, and every
//!   service type and region is text of the header it came from; stripping the scope off
//!   the tokens leaves a prefix without the marker;
//! - `#` then arbitrary bytes: a scope built as a map, written in one of the header forms
//!   (optionally percent-encoded) and read back: exactly the map, or refused exactly when
//!   a value has an empty alternative.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use percent_encoding::{NON_ALPHANUMERIC, percent_decode, utf8_percent_encode};
use scope_router::fuzzing::{self, SCOPE_MARKER, ScopeSource};
use serde_json::{Map, Value};

const SCOPE_HEADERS: [&str; 3] = ["x-scope", "x-auth-token", "x-subject-token"];

fuzz_target!(|data: &[u8]| {
    match data.split_first() {
        Some((b'#', rest)) => {
            if let Ok(input) = Built::arbitrary_take_rest(Unstructured::new(rest)) {
                round_trip(input);
            }
        }
        _ => header_block(data),
    }
});

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    // An empty service type (`{"": "RegionTwo"}`) is valid JSON and found anywhere.
    if needle.is_empty() {
        return Some(0);
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn header_block(data: &[u8]) {
    let mut fields = [httparse::EMPTY_HEADER; 32];
    let Ok(httparse::Status::Complete((_, fields))) = httparse::parse_headers(data, &mut fields)
    else {
        return;
    };
    let mut headers = HeaderMap::new();
    for f in fields.iter() {
        let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(f.name.as_bytes()),
            HeaderValue::from_bytes(f.value),
        ) else {
            return;
        };
        headers.append(name, value);
    }
    let Ok(scope) = fuzzing::read_scope(&headers) else {
        strip(headers);
        return;
    };
    // The text the scope came from: the first value of its header (after the marker for a
    // token), and the same percent-decoded.
    let carrier: Option<&[u8]> = match scope.source {
        ScopeSource::Defaults => None,
        ScopeSource::XScope => Some(headers["x-scope"].as_bytes()),
        ScopeSource::AuthToken | ScopeSource::SubjectToken => {
            let name = if scope.source == ScopeSource::AuthToken {
                "x-auth-token"
            } else {
                "x-subject-token"
            };
            let v = headers[name].as_bytes();
            let at = find(v, SCOPE_MARKER).expect("a token scope comes after the marker");
            Some(&v[at + SCOPE_MARKER.len()..])
        }
    };
    match carrier {
        None => assert!(scope.entries.is_empty(), "defaults carry no entries"),
        Some(text) => {
            let decoded: Vec<u8> = percent_decode(text).collect();
            // Without JSON escapes every key and region is written out literally.
            let literal = !text.contains(&b'\\') && !decoded.contains(&b'\\');
            for ((key, value), source) in scope.entries.iter().zip(&scope.sources) {
                assert_eq!(
                    *source, scope.source,
                    "{key}: one source for the whole scope"
                );
                let region = value.as_str().expect("accepted regions are strings");
                assert!(
                    region.split('|').all(|alt| !alt.trim().is_empty()),
                    "accepted region {region:?} has an empty alternative"
                );
                assert_eq!(scope.region_for(key), Some(region));
                if literal {
                    for s in [key.as_str(), region] {
                        assert!(
                            find(text, s.as_bytes()).is_some()
                                || find(&decoded, s.as_bytes()).is_some(),
                            "{s:?} is not in the header it was read from"
                        );
                    }
                }
            }
        }
    }
    next_hop(&scope, &[("identity", "RegionOne"), ("image", "RegionTwo")]);
    strip(headers);
}

/// The next hop's `X-Scope` is a JSON object of strings keeping what it did not decide.
fn next_hop(scope: &fuzzing::ReadScope, decided: &[(&str, &str)]) {
    let Some(value) = scope.for_next_hop(decided) else {
        return;
    };
    let map: Map<String, Value> =
        serde_json::from_slice(value.as_bytes()).expect("the next hop's X-Scope is JSON");
    for (st, _) in decided {
        assert!(map.get(*st).is_some_and(Value::is_string), "{st} is pinned");
    }
    for (key, value) in &scope.entries {
        if !decided.iter().any(|(st, _)| st == key) {
            assert_eq!(map.get(key), Some(value), "{key} travels as sent");
        }
    }
}

fn strip(mut headers: HeaderMap) {
    for name in SCOPE_HEADERS {
        let name = HeaderName::from_static(name);
        let before: Vec<Vec<u8>> = headers
            .get_all(&name)
            .iter()
            .map(|v| v.as_bytes().to_vec())
            .collect();
        fuzzing::strip_scope(&mut headers, &name);
        let after: Vec<&[u8]> = headers
            .get_all(&name)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        assert_eq!(before.len(), after.len(), "stripping keeps every value");
        for (b, a) in before.iter().zip(after) {
            assert!(
                b.starts_with(a),
                "a stripped value is a prefix of the original"
            );
            assert!(find(a, SCOPE_MARKER).is_none(), "the marker is gone");
        }
    }
}

#[derive(Arbitrary, Debug)]
enum Carrier {
    XScope,
    AuthToken(String),
    SubjectToken(String),
}

#[derive(Arbitrary, Debug)]
struct Built {
    carrier: Carrier,
    entries: Vec<(String, String)>,
    percent_encoded: bool,
    decided: Vec<(String, String)>,
}

fn round_trip(input: Built) {
    let mut map = Map::new();
    for (k, v) in &input.entries {
        map.insert(k.clone(), Value::String(v.clone()));
    }
    let json = serde_json::to_string(&map).expect("a map of strings serializes");
    let text = if input.percent_encoded {
        utf8_percent_encode(&json, NON_ALPHANUMERIC).to_string()
    } else {
        json
    };
    let (name, value, source) = match &input.carrier {
        Carrier::XScope => ("x-scope", text, ScopeSource::XScope),
        Carrier::AuthToken(t) | Carrier::SubjectToken(t) => {
            let value = format!("{t}!SCOPE!{text}");
            // The marker must be the one after the token, not one the token itself holds.
            if find(value.as_bytes(), SCOPE_MARKER) != Some(t.len()) {
                return;
            }
            if matches!(input.carrier, Carrier::AuthToken(_)) {
                ("x-auth-token", value, ScopeSource::AuthToken)
            } else {
                ("x-subject-token", value, ScopeSource::SubjectToken)
            }
        }
    };
    // Raw DEL or non-visible bytes in the JSON cannot travel in a header at all.
    let Ok(value) = HeaderValue::from_str(&value) else {
        return;
    };
    let mut headers = HeaderMap::new();
    headers.insert(HeaderName::from_static(name), value);
    let valid = map.values().all(|v| {
        v.as_str()
            .is_some_and(|r| r.split('|').all(|alt| !alt.trim().is_empty()))
    });
    match fuzzing::read_scope(&headers) {
        Ok(scope) => {
            assert!(
                valid,
                "a scope with an empty alternative was accepted: {map:?}"
            );
            assert_eq!(scope.source, source);
            let got: Map<String, Value> = scope.entries.iter().cloned().collect();
            assert_eq!(got, map, "the scope read is the scope written");
            let decided: Vec<(&str, &str)> = input
                .decided
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect();
            next_hop(&scope, &decided);
        }
        Err(problem) => assert!(!valid, "a valid scope {map:?} was refused: {problem:?}"),
    }
}
