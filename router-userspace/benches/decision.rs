//! Per-request decision path: scope parse + service lookup (`Router::decide`) and the
//! header/path rewrite (`Plan::apply_to`) over the seed catalogs in `config/`.
//!
//! Target (docs/ARCHITECTURE.md §9, perf issue): < 2 µs per request for every case.
//! Run: `cargo bench -p router-userspace --bench decision`.

use std::hint::black_box;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use http::request::Parts;
use scope_router::config::Config;
use scope_router::decision::{RequestHead, ScopeSource};
use scope_router::metrics::{Observation, TrafficStats};
use scope_router::routing::Router;

/// A keystone fernet token is ~180 characters; the scope rides after it.
const TOKEN: &str = "gAAAAABlR2x0b2tlbl9mb3JfYmVuY2htYXJrc19vbmx5X3RoaXNfaXNfbm90X2FfcmVhbF90b2tlbl\
                     9idXRfaXRfaGFzX3RoZV9yaWdodF9zaXplX2Zvcl9hX2Zlcm5ldF90b2tlbl9rZXlzdG9uZV9pc3N1ZXN\
                     fdGhlbV9saWtlX3RoaXM";

fn router() -> Router {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/RegionOne.toml");
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => panic!("bench config {}: {e}", path.display()),
    };
    match Router::from_config(&config) {
        Ok(r) => r,
        Err(e) => panic!("bench routing table: {e}"),
    }
}

/// The head an OpenStack client sends (python-requests / keystoneauth style).
fn request(authority: &str, path: &str, extra: &[(&str, String)]) -> Parts {
    let mut b = http::Request::builder()
        .method("GET")
        .uri(path)
        .header("host", authority)
        .header(
            "user-agent",
            "python-novaclient keystoneauth1/5.1.2 python-requests/2.28.1 CPython/3.11.2",
        )
        .header("accept-encoding", "gzip, deflate")
        .header("accept", "application/json")
        .header("connection", "keep-alive")
        .header("x-openstack-nova-api-version", "2.1");
    for (k, v) in extra {
        b = b.header(*k, v.as_str());
    }
    match b.body(()) {
        Ok(r) => r.into_parts().0,
        Err(e) => panic!("bench request: {e}"),
    }
}

fn bench(c: &mut Criterion) {
    let router = router();
    let vip = "192.168.142.244";
    let peer: SocketAddr = ([192, 168, 142, 10], 40000).into();
    let scope = r#"{"compute": "RegionTwo", "image": "RegionOne", "identity": "RegionOne"}"#;
    let cases: Vec<(&str, u16, Parts)> = vec![
        (
            "no_scope_local",
            8774,
            request(
                &format!("{vip}:8774"),
                "/v2.1/servers/detail?limit=20",
                &[("x-auth-token", TOKEN.to_owned())],
            ),
        ),
        (
            "x_scope_remote",
            8774,
            request(
                &format!("{vip}:8774"),
                "/v2.1/servers/detail?limit=20",
                &[
                    ("x-auth-token", TOKEN.to_owned()),
                    ("x-scope", scope.to_owned()),
                ],
            ),
        ),
        (
            "token_piggyback_remote",
            8774,
            request(
                &format!("{vip}:8774"),
                "/v2.1/servers/detail?limit=20",
                &[("x-auth-token", format!("{TOKEN}!SCOPE!{scope}"))],
            ),
        ),
        (
            "token_validation_identity",
            5000,
            request(
                &format!("{vip}:5000"),
                "/v3/auth/tokens",
                &[
                    ("x-auth-token", format!("{TOKEN}!SCOPE!{scope}")),
                    (
                        "x-subject-token",
                        format!("{TOKEN}!SCOPE!{{\"identity\": \"RegionTwo\"}}"),
                    ),
                ],
            ),
        ),
        (
            "transparent_version_discovery",
            8774,
            request(&format!("{vip}:8774"), "/", &[]),
        ),
    ];

    // The incoming head is cloned per iteration (apply mutates it); `clone` measures
    // that alone so the decision's share is the difference. Criterion's batched setup
    // would keep the clone out of the timing but churns the allocator (page faults)
    // more than the real proxy does.
    let mut group = c.benchmark_group("clone");
    for (name, _, parts) in &cases {
        group.bench_function(*name, |b| b.iter(|| black_box(parts).clone()));
    }
    group.finish();

    let mut group = c.benchmark_group("clone+decide+apply");
    for (name, port, parts) in &cases {
        let local: SocketAddr = (([192, 168, 142, 244]), *port).into();
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut parts = black_box(parts).clone();
                {
                    let head = RequestHead {
                        local,
                        peer,
                        method: &parts.method,
                        uri: &parts.uri,
                        headers: &parts.headers,
                    };
                    if let Ok(plan) = router.decide(black_box(&head)) {
                        plan.apply_to(peer, &mut parts);
                    }
                }
                parts
            })
        });
    }
    group.finish();

    // Decision alone, to see where the time goes.
    let mut group = c.benchmark_group("decide");
    for (name, port, parts) in &cases {
        let local: SocketAddr = (([192, 168, 142, 244]), *port).into();
        let head = RequestHead {
            local,
            peer,
            method: &parts.method,
            uri: &parts.uri,
            headers: &parts.headers,
        };
        group.bench_function(*name, |b| b.iter(|| router.decide(black_box(&head))));
    }
    group.finish();
}

/// What `/metrics` adds per request: one [`TrafficStats::observe`] when the response body
/// ends (docs/ARCHITECTURE.md §13). Compared with the decision above, it says what
/// counting costs on the request path.
fn observe(c: &mut Criterion) {
    let stats = TrafficStats::new();
    let o = Observation {
        status: 200,
        from_router: false,
        duration: Duration::from_micros(850),
        bytes_in: 0,
        bytes_out: 312,
        scope_source: Some(ScopeSource::XScope),
        redispatches: 0,
        retries: 0,
    };
    c.bench_function("metrics/observe", |b| {
        b.iter(|| stats.observe(black_box(&o)))
    });
}

/// What a reloadable routing table adds per request: one `ArcSwap::load_full` (the
/// request keeps the table it started with, docs/ARCHITECTURE.md §14.4).
fn load_table(c: &mut Criterion) {
    let shared: scope_router::routing::SharedRouter =
        std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(router()));
    c.bench_function("reload/load_full", |b| {
        b.iter(|| black_box(shared.load_full()))
    });
}

criterion_group!(benches, bench, observe, load_table);
criterion_main!(benches);
