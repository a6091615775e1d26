//! Catalog loading and URL cleaning (`catalog.rs`).
//!
//! An input starting with `[` (after whitespace) is catalog JSON: one file, or several
//! separated by a 0xFF byte (never in UTF-8 text), merged in order as `catalog = [...]`
//! merges them. Anything else is one catalog URL. Checked: no panic; a cleaned URL keeps
//! the documented shape (`host:port` with a port, lowercased host, path `""` or `/…`, no
//! query, fragment or placeholder) and cleans to itself again from its absolute form; a
//! merged catalog holds one entry per region/service type/interface.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use scope_router::catalog::{Catalog, CleanUrl};

fuzz_target!(|data: &[u8]| {
    if data.trim_ascii_start().starts_with(b"[") {
        catalog(data);
    } else if let Ok(url) = std::str::from_utf8(data) {
        url_cleaning(url);
    }
});

fn catalog(data: &[u8]) {
    let mut catalog = Catalog::default();
    for (i, file) in data.split(|&b| b == 0xFF).enumerate() {
        let Ok(text) = std::str::from_utf8(file) else {
            return;
        };
        let path = format!("/etc/scope-router/endpoint-list-{i}.json");
        if catalog.add_json(text, Path::new(&path)).is_err() {
            // The error must render (it names the file and entry for the operator).
            let _ = catalog
                .add_json(text, Path::new(&path))
                .map_err(|e| e.to_string());
            return;
        }
    }
    let entries = catalog.entries();
    for (i, e) in entries.iter().enumerate() {
        check_clean(&e.url, e.scheme);
        assert!(
            !entries[..i].iter().any(|o| o.region == e.region
                && o.service_type == e.service_type
                && o.interface == e.interface),
            "duplicate entry {}",
            e.backend_name()
        );
        let found = catalog
            .find(&e.region, &e.service_type, &e.interface)
            .expect("every entry is found");
        assert_eq!(found, e);
        assert!(catalog.has_region(&e.region));
        assert!(catalog.regions().contains(&e.region));
    }
}

fn url_cleaning(url: &str) {
    let Ok((clean, scheme)) = CleanUrl::parse(url) else {
        return;
    };
    check_clean(&clean, scheme);
}

fn check_clean(clean: &CleanUrl, scheme: &str) {
    assert!(scheme == "http" || scheme == "https", "scheme {scheme}");
    let port = clean.port();
    assert_ne!(port, 0, "{clean}: a cleaned URL always has a port");
    assert!(
        clean.authority.ends_with(&format!(":{port}")),
        "{clean}: the authority ends with its port"
    );
    let host = clean.host();
    assert!(!host.is_empty(), "{clean}: empty host");
    assert_eq!(
        host,
        host.to_ascii_lowercase(),
        "{clean}: host not lowercased"
    );
    if host.contains(':') {
        assert!(
            host.parse::<std::net::Ipv6Addr>().is_ok(),
            "{clean}: a host with ':' is an IPv6 literal"
        );
        assert_eq!(&*clean.authority, format!("[{host}]:{port}"));
    } else {
        assert_eq!(&*clean.authority, format!("{host}:{port}"));
    }
    let _ = clean.ip();
    let path = &*clean.path;
    assert!(
        path.is_empty() || path.starts_with('/'),
        "{clean}: path {path:?}"
    );
    assert_ne!(path, "/", "{clean}: \"/\" is spelt \"\"");
    for cut in ["?", "#", "%(", "$("] {
        assert!(!path.contains(cut), "{clean}: path keeps {cut:?}");
    }
    assert!(
        !clean.authority.contains(['@', '/', '?', '#']),
        "{clean}: authority"
    );
    // The absolute form (what `X-Identity-Url` carries) cleans to the same URL.
    let absolute = format!("{scheme}://{}{}", clean.authority, clean.path);
    let (again, again_scheme) =
        CleanUrl::parse(&absolute).unwrap_or_else(|e| panic!("{absolute} no longer cleans: {e}"));
    assert_eq!(&again, clean, "{absolute} cleans to something else");
    assert_eq!(again_scheme, scheme);
}
