//! Config parsing (`config.rs`, `Config::from_str`): any text is refused with an error
//! or parsed into a config that keeps its documented promises (durations > 0, server
//! weights 0 to 256, TLS paths resolved, certificates with their keys, redirects' exempt
//! paths absolute and routed somewhere), the same every time; an accepted config is
//! then checked against the project's own catalogs, as `check` and `run` do.
#![no_main]

use std::path::Path;
use std::sync::LazyLock;

use libfuzzer_sys::fuzz_target;
use scope_router::catalog::Catalog;
use scope_router::config::Config;

/// The catalogs of `config/`, as the shipped configs name them.
static CATALOG: LazyLock<Catalog> = LazyLock::new(|| {
    let mut catalog = Catalog::default();
    for (name, text) in [
        (
            "endpoint-list-RegionOne.json",
            include_str!("../../config/endpoint-list-RegionOne.json"),
        ),
        (
            "endpoint-list-RegionTwo.json",
            include_str!("../../config/endpoint-list-RegionTwo.json"),
        ),
    ] {
        catalog
            .add_json(text, Path::new(name))
            .expect("the project's catalogs load");
    }
    catalog
});

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("/etc/scope-router/fuzz.toml");
    let config = match Config::from_str(text, path) {
        Ok(config) => config,
        Err(err) => {
            // Every refusal names the file (the operator's first question).
            let message = err.to_string();
            assert!(message.contains("fuzz.toml"), "{message}");
            return;
        }
    };
    let again = Config::from_str(text, path).expect("the same text parses again");
    assert_eq!(config, again, "parsing is deterministic");
    let t = config.timeouts;
    for d in [t.request_header, t.connect, t.idle] {
        assert!(!d.is_zero(), "a zero global timeout was accepted");
    }
    for server in &config.backend {
        assert!(
            server.weight <= 256,
            "weight {} was accepted",
            server.weight
        );
    }
    for (port, o) in &config.ports {
        for d in [o.request_header, o.connect, o.idle].into_iter().flatten() {
            assert!(!d.is_zero(), "a zero timeout was accepted for port {port}");
        }
        let t = config.port_timeouts(*port);
        assert!(!t.request_header.is_zero() && !t.connect.is_zero() && !t.idle.is_zero());
        for server in config.port_backend(*port) {
            assert!(
                server.weight <= 256,
                "weight {} on port {port}",
                server.weight
            );
        }
        let _ = config.port_balance(*port);
        let _ = config.port_health(*port);
    }
    // Every TLS path is resolved against the config file's directory.
    let tls_paths = [&config.tls.certificate, &config.tls.key, &config.tls.ca_file]
        .into_iter()
        .flatten()
        .chain(config.tls.sni.iter().flat_map(|f| [&f.certificate, &f.key]))
        .chain(config.ports.values().flat_map(|o| {
            [&o.certificate, &o.key, &o.ca_file].into_iter().flatten()
        }));
    for p in tls_paths {
        assert!(p.is_absolute(), "{} was left relative", p.display());
    }
    for (port, o) in &config.ports {
        // A port's certificate comes with its key, and its CA file with backend_tls.
        assert_eq!(o.certificate.is_some(), o.key.is_some(), "port {port}");
        assert!(o.ca_file.is_none() || o.backend_tls, "port {port}");
    }
    for r in &config.redirect {
        assert!(r.https_port != 0);
        assert!(r.exempt.iter().all(|p| p.starts_with('/')), "{:?}", r.exempt);
        assert!(r.exempt.is_empty() || r.exempt_backend.is_some());
    }
    if let Err(err) = config.check_catalog(&CATALOG) {
        let _ = err.to_string();
    }
});
