//! The request scope: the headers that carry it, how it is read, and how it is cut off
//! tokens and carried to the next router (docs/ARCHITECTURE.md §3.2, §3.4).

use http::HeaderValue;
use http::header::HeaderName;
use serde_json::{Map, Value};

use crate::problem::Problem;

pub(crate) static X_SCOPE: HeaderName = HeaderName::from_static("x-scope");
pub(crate) static X_AUTH_TOKEN: HeaderName = HeaderName::from_static("x-auth-token");
pub(crate) static X_SUBJECT_TOKEN: HeaderName = HeaderName::from_static("x-subject-token");

/// The marker separating a token from the scope appended to it.
pub(crate) const SCOPE_MARKER: &[u8] = b"!SCOPE!";

/// Where the region of a request's service type came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeSource {
    /// No header named the service type: `[scope.defaults]` or the current region.
    Defaults,
    XScope,
    AuthToken,
    SubjectToken,
}

impl ScopeSource {
    /// The one name of each source, in logs, `explain`, error messages and `Via` notes:
    /// the header name as clients write it, or `defaults`.
    pub fn as_str(&self) -> &'static str {
        match self {
            ScopeSource::Defaults => "defaults",
            ScopeSource::XScope => "X-Scope",
            ScopeSource::AuthToken => "X-Auth-Token",
            ScopeSource::SubjectToken => "X-Subject-Token",
        }
    }

    /// Every source, for tables built once per target.
    pub(crate) const ALL: [ScopeSource; 4] = [
        ScopeSource::Defaults,
        ScopeSource::XScope,
        ScopeSource::AuthToken,
        ScopeSource::SubjectToken,
    ];

    pub(crate) fn index(self) -> usize {
        self as usize
    }
}

/// The request scope: service type → region, as sent by the client.
#[derive(Debug)]
pub(crate) struct Scope {
    /// The header the scope was read from; `Defaults` when none carried one.
    source: ScopeSource,
    map: Map<String, Value>,
}

impl Scope {
    /// Reads the first header that carries a scope (`X-Scope`, then the text after
    /// `!SCOPE!` in `X-Auth-Token`, then in `X-Subject-Token`) and validates it.
    pub(crate) fn read(headers: &http::HeaderMap) -> Result<Scope, Problem> {
        // One lookup serves both the value and the duplicate check.
        let mut x_scope = headers.get_all(&X_SCOPE).iter();
        let first = x_scope.next();
        if x_scope.next().is_some() {
            // Which one a backend or the next router would believe is anyone's guess, as
            // with two Content-Lengths: never pick one.
            return Err(Problem::bad_request(format!(
                "The request has {} X-Scope header fields, so its scope is ambiguous. Send \
                 exactly one X-Scope holding the whole scope as one JSON object.",
                headers.get_all(&X_SCOPE).iter().count()
            )));
        }
        let found = if let Some(v) = first.filter(|v| !v.as_bytes().trim_ascii().is_empty()) {
            Some((ScopeSource::XScope, v.as_bytes()))
        } else {
            [
                (ScopeSource::AuthToken, &X_AUTH_TOKEN),
                (ScopeSource::SubjectToken, &X_SUBJECT_TOKEN),
            ]
            .into_iter()
            .find_map(|(source, name)| {
                let v = headers.get(name)?.as_bytes();
                let after = &v[find(v, SCOPE_MARKER)? + SCOPE_MARKER.len()..];
                (!after.trim_ascii().is_empty()).then_some((source, after))
            })
        };
        let Some((source, raw)) = found else {
            return Ok(Scope {
                source: ScopeSource::Defaults,
                map: Map::new(),
            });
        };
        let name = source.as_str();
        let text = std::str::from_utf8(raw.trim_ascii())
            .map_err(|_| Problem::malformed_scope(name, "not UTF-8"))?;
        let value = match serde_json::from_str::<Value>(text) {
            Ok(v) => v,
            Err(e) if !text.contains('%') => {
                return Err(Problem::malformed_scope(
                    name,
                    format_args!("not JSON: {e}"),
                ));
            }
            // Clients that URL-encode the scope (it travels inside a token) get one decode.
            Err(_) => {
                let decoded = percent_encoding::percent_decode_str(text)
                    .decode_utf8()
                    .map_err(|_| Problem::malformed_scope(name, "percent-decodes to non-UTF-8"))?;
                serde_json::from_str(&decoded).map_err(|e| {
                    Problem::malformed_scope(
                        name,
                        format_args!("not JSON even after percent-decoding: {e}"),
                    )
                })?
            }
        };
        let Value::Object(map) = value else {
            return Err(Problem::malformed_scope(name, "not a JSON object"));
        };
        if let Some((k, _)) = map.iter().find(|(_, v)| !v.is_string()) {
            return Err(Problem::malformed_scope(
                name,
                format_args!("the value of \"{k}\" is not a string region name"),
            ));
        }
        // `A|B` lists alternatives in order; an empty one is a typo, never "any region".
        if let Some((k, v)) = map.iter().find(|(_, v)| {
            v.as_str()
                .is_some_and(|r| r.split('|').any(|alt| alt.trim().is_empty()))
        }) {
            return Err(Problem::malformed_scope(
                name,
                format_args!(
                    "the value of \"{k}\" ({v}) has an empty alternative; list regions as \
                     \"RegionTwo|RegionOne\""
                ),
            ));
        }
        Ok(Scope { source, map })
    }

    /// Every service type the scope names, with its value as read (a string once
    /// [`Scope::read`] accepted it); for the fuzz targets' invariants (`crate::fuzzing`).
    pub(crate) fn entries(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.map.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The header the scope was read from (for the fuzz targets, as [`Scope::entries`]).
    pub(crate) fn source(&self) -> ScopeSource {
        self.source
    }

    /// The region the client named for `service_type`, if it named one.
    pub(crate) fn region_for(&self, service_type: &str) -> Option<&str> {
        self.map.get(service_type).and_then(Value::as_str)
    }

    /// Where the region of `service_type` comes from: the scope's header when it names
    /// the service type, else the defaults.
    pub(crate) fn source_for(&self, service_type: &str) -> ScopeSource {
        if self.map.contains_key(service_type) {
            self.source
        } else {
            ScopeSource::Defaults
        }
    }

    /// The `X-Scope` value a remote hop must carry so that the next router reaches the
    /// same decision as this one: the client's scope plus the regions this router took
    /// from its own defaults for `decided` (service type, region) pairs. `None` when the
    /// client's scope already names every one of them, so the request travels exactly as
    /// it arrived.
    pub(crate) fn for_next_hop(&self, decided: &[(&str, &str)]) -> Option<HeaderValue> {
        // A service type the client named keeps its value unless this router narrowed
        // its alternatives (`A|B` → the ones left for the next router); one it did not
        // name gets the value this router took from its defaults.
        let unchanged = |st: &str, value: &str| match self.region_for(st) {
            Some(sent) => sent == value || !sent.contains('|'),
            None => false,
        };
        if decided.iter().all(|(st, value)| unchanged(st, value)) {
            return None;
        }
        // Borrowed, in the same key order as the client's map (both are B-trees): cloning
        // and dropping a map of owned `Value`s on every remote request cost 0.9 % of its
        // instructions (callgrind, bench scenario j; docs/performance.md).
        let mut effective: std::collections::BTreeMap<&str, &str> = self
            .map
            .iter()
            .filter_map(|(k, v)| Some((k.as_str(), v.as_str()?)))
            .collect();
        for (st, value) in decided {
            if !unchanged(st, value) {
                effective.insert(st, value);
            }
        }
        // Serializing a map of strings cannot fail, and JSON text escapes every control
        // character, so the value is always a valid header.
        let text = serde_json::to_vec(&effective).ok()?;
        HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).ok()
    }
}

/// Cuts `!SCOPE!…` off every value of `name` (the hop to the local backend).
pub(crate) fn strip_scope(headers: &mut http::HeaderMap, name: &HeaderName) {
    if let http::header::Entry::Occupied(mut entry) = headers.entry(name) {
        for value in entry.iter_mut() {
            let bytes = value.as_bytes();
            if let Some(i) = find(bytes, SCOPE_MARKER)
                && let Ok(stripped) = HeaderValue::from_bytes(&bytes[..i])
            {
                *value = stripped;
            }
        }
    }
}

pub(crate) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    // Tokens are ~200 bytes and the marker rarely starts with a common byte: jump from
    // one occurrence of the first byte to the next instead of comparing every window.
    let (&first, rest) = needle.split_first()?;
    let mut start = 0;
    while let Some(i) = haystack[start..].iter().position(|&b| b == first) {
        let at = start + i;
        if haystack[at + 1..].starts_with(rest) {
            return Some(at);
        }
        start = at + 1;
    }
    None
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn next_hop_scope_adds_only_what_defaults_decided() {
        struct Case {
            name: &'static str,
            sent: &'static [(&'static str, &'static str)],
            decided: &'static [(&'static str, &'static str)],
            expect: Option<&'static str>,
        }
        let cases = [
            Case {
                name: "scope names everything: travels as it arrived",
                sent: &[(
                    "x-scope",
                    r#"{"image": "RegionTwo", "identity": "RegionOne"}"#,
                )],
                decided: &[("image", "RegionTwo"), ("identity", "RegionOne")],
                expect: None,
            },
            Case {
                name: "identity from defaults is pinned",
                sent: &[("x-scope", r#"{"image": "RegionTwo"}"#)],
                decided: &[("image", "RegionTwo"), ("identity", "RegionOne")],
                expect: Some(r#"{"identity":"RegionOne","image":"RegionTwo"}"#),
            },
            Case {
                name: "no scope at all: both decisions pinned",
                sent: &[],
                decided: &[("image", "RegionTwo"), ("identity", "RegionOne")],
                expect: Some(r#"{"identity":"RegionOne","image":"RegionTwo"}"#),
            },
            Case {
                name: "token scope keeps its other keys",
                sent: &[(
                    "x-auth-token",
                    r#"t!SCOPE!{"compute": "RegionTwo", "network": "RegionOne"}"#,
                )],
                decided: &[("compute", "RegionTwo"), ("identity", "RegionOne")],
                expect: Some(
                    r#"{"compute":"RegionTwo","identity":"RegionOne","network":"RegionOne"}"#,
                ),
            },
        ];
        for c in cases {
            let scope = Scope::read(&headers(c.sent)).unwrap();
            let got = scope.for_next_hop(c.decided);
            assert_eq!(
                got.as_ref().map(|v| v.to_str().unwrap()),
                c.expect,
                "{}",
                c.name
            );
        }
    }

    #[test]
    fn source_for_tells_header_from_defaults() {
        let scope = Scope::read(&headers(&[("x-scope", r#"{"image": "RegionTwo"}"#)])).unwrap();
        assert_eq!(scope.source_for("image"), ScopeSource::XScope);
        assert_eq!(scope.source_for("identity"), ScopeSource::Defaults);
    }
}
