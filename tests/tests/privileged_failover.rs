//! Privileged scope-failover suite (docs/ARCHITECTURE.md §3.8, §3.9): a remote region
//! whose packets are dropped (a blackhole, not a refusal) is marked down by health
//! checks, `RegionTwo|RegionOne` is served by RegionOne, a plain RegionTwo scope gets
//! the fast 503, and everything recovers when the blackhole is lifted. Before any check
//! has noticed, `RegionTwo|RegionOne` still fails over once connecting times out.
//!
//! The two-router lab of `integration_tests::lab` (RegionOne on 127.0.0.1, RegionTwo on
//! 127.0.0.2, echo backends on 127.0.0.1) runs inside a private network namespace per
//! test, where loopback is the namespace's own and an nftables rule can drop everything
//! addressed to RegionTwo without touching the host. Needs root and `nft`; without them
//! each test prints why it is skipped (a failure under `CI=true`).

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::client::{Reply, get};
use integration_tests::lab::{Lab, LabOptions};
use scope_router::health::{Health, Probe};
use test_support::netns::{self, Netns};

/// Checks fast enough for a test (down after 2 failed checks, up after 2 good ones), and
/// a check timeout well below the connect timeout: a blackholed check fails by timing
/// out, and a request the router did try to connect would wait the full second, so only
/// a router that used its health state answers without connecting.
const FAST_CHECKS: &str = "[health]\ninter = \"100ms\"\nrise = 2\nfall = 2\ntimeout = \"300ms\"\n\
                           \n[timeouts]\nconnect = \"1s\"\n";

/// Only the check at start runs (the next is an hour away): a blackhole stays unnoticed
/// and only a request's own connect can find it.
const NO_CHECKS: &str = "[health]\ninter = \"1h\"\n\n[timeouts]\nconnect = \"1s\"\n";

/// The fixture port of the image service.
const IMAGE: u16 = 9292;

/// Bound on waiting for a health transition (a few hundred milliseconds with
/// [`FAST_CHECKS`]); it bounds the wait and never asserts a speed.
const WAIT: Duration = Duration::from_secs(10);

/// Bound on one request: far above anything the router should take here, so that a
/// request stuck on a dropped connection fails the test instead of hanging it.
const REQUEST_BOUND: Duration = Duration::from_secs(15);

/// Long enough for a SYN on loopback to be answered many times over: a connect that
/// outlasts it was dropped, not refused.
const CONNECT_PROBE: Duration = Duration::from_millis(500);

const EITHER: (&str, &str) = ("X-Scope", r#"{"image": "RegionTwo|RegionOne"}"#);
const TWO_ONLY: (&str, &str) = ("X-Scope", r#"{"image": "RegionTwo"}"#);

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_max_level(tracing_subscriber::filter::LevelFilter::INFO)
        .try_init();
}

/// Whether `nft` can run at all (the `nftables` package, installed by `cargo xtask setup`).
fn nft_available() -> bool {
    Command::new("nft")
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// An nftables table in `ns` dropping every packet the namespace sends to `addr`: a
/// connect there gets no answer at all, as when a remote region's network is cut.
/// Deleting the namespace deletes the table too, so a failed test leaves nothing behind.
struct Blackhole<'a> {
    ns: &'a Netns,
}

impl<'a> Blackhole<'a> {
    /// The table's name inside the namespace (unique there: the namespace is ours).
    const TABLE: &'static str = "scope_router_blackhole";

    fn drop_to(ns: &'a Netns, addr: std::net::IpAddr) -> Blackhole<'a> {
        // `output` sees loopback traffic before it is looped back: the SYN never arrives.
        nft(ns, &format!("add table inet {}", Self::TABLE));
        nft(
            ns,
            &format!(
                "add chain inet {} out {{ type filter hook output priority 0 ; }}",
                Self::TABLE
            ),
        );
        nft(
            ns,
            &format!("add rule inet {} out ip daddr {addr} drop", Self::TABLE),
        );
        Blackhole { ns }
    }

    fn lift(self) {
        nft(self.ns, &format!("delete table inet {}", Self::TABLE));
    }
}

/// Runs `nft <command>` inside `ns`, failing the test with nft's own message.
fn nft(ns: &Netns, command: &str) {
    let out = ns
        .command("nft")
        .arg(command)
        .output()
        .expect("run nft through nsenter");
    assert!(
        out.status.success(),
        "nft {command}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// RegionOne's view of RegionTwo's image service: the health state its checker keeps
/// for RegionTwo's frontend, which the request path reads.
fn remote_image_health(lab: &Lab) -> Arc<Health> {
    let far = lab.two.addr(IMAGE).to_string();
    let handle = lab.one.handle.as_ref().expect("RegionOne is running");
    handle
        .router()
        .health_checks()
        .iter()
        .find(|check| {
            matches!(
                &check.probe,
                Probe::ScopeRouter { service_type, interface, .. }
                    if service_type == "image" && interface == "public"
            ) && check.health.addr() == far
        })
        .map(|check| Arc::clone(&check.health))
        .unwrap_or_else(|| panic!("RegionOne checks no RegionTwo image frontend at {far}"))
}

/// Polls RegionOne's health state of RegionTwo's image until it reads `up`.
async fn wait_for(health: &Health, up: bool, label: &str) {
    let deadline = Instant::now() + WAIT;
    while health.is_up() != up {
        assert!(
            Instant::now() < deadline,
            "never happened: {label} (last check: {:?})",
            health.last_result()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One image request to RegionOne with `scope`.
async fn image(lab: &Lab, scope: (&str, &str)) -> Reply {
    tokio::time::timeout(
        REQUEST_BOUND,
        get(lab.one.addr(IMAGE), "/v2/images", &[scope]),
    )
    .await
    .unwrap_or_else(|_| panic!("no answer to {scope:?} within {REQUEST_BOUND:?}"))
    .unwrap_or_else(|err| panic!("request with {scope:?}: {err}"))
}

/// Asserts that the echo backend called `backend` answered.
fn served_by(reply: &Reply, backend: &str, what: &str) {
    assert_eq!(reply.status, 200, "{what}: {:?}", reply.body);
    assert_eq!(reply.echo().backend(), backend, "{what}");
}

/// Whether connecting to `addr` from inside the namespace gets no answer at all.
async fn unanswered(addr: SocketAddr) -> bool {
    tokio::time::timeout(CONNECT_PROBE, tokio::net::TcpStream::connect(addr))
        .await
        .is_err()
}

/// The namespace a test runs in, or `None` (printed) when it must skip.
fn namespace(test: &str) -> Option<Netns> {
    init_logs();
    if !netns::privileged(test) {
        return None;
    }
    if !nft_available() {
        netns::skip(
            test,
            "needs the `nft` command (Debian `nftables`; `cargo xtask setup` installs it)",
        );
        return None;
    }
    Some(Netns::create("srt-blackhole").expect("create the namespace"))
}

/// Runs `scenario` to completion on a runtime whose only thread is inside `ns`: the
/// routers, their backends and the client are all the namespace's, and the runtime (with
/// every router task) is gone before `ns` is deleted, also when an assertion fails.
fn run_inside<F: std::future::Future<Output = ()>>(
    ns: &Netns,
    scenario: impl FnOnce() -> F + Send,
) {
    ns.run(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(scenario());
    });
}

/// Both regions inside the namespace, each with `health` (checks and connect timeout).
async fn lab(health: &str) -> Lab {
    Lab::start(LabOptions {
        one_extra_toml: health.into(),
        two_extra_toml: health.into(),
        ..LabOptions::default()
    })
    .await
    .expect("start both regions inside the namespace")
}

#[test]
fn privileged_a_blackholed_region_is_marked_down_fails_over_and_recovers() {
    let Some(ns) =
        namespace("privileged_a_blackholed_region_is_marked_down_fails_over_and_recovers")
    else {
        return;
    };
    run_inside(&ns, || blackhole_scenario(&ns));
}

async fn blackhole_scenario(ns: &Netns) {
    let lab = lab(FAST_CHECKS).await;
    let one_image = lab.one.backend_name(IMAGE);
    let two_image = lab.two.backend_name(IMAGE);
    let health = remote_image_health(&lab);

    // Both scopes reach RegionTwo while its network is fine.
    wait_for(&health, true, "RegionTwo's image is up to start with").await;
    served_by(
        &image(&lab, EITHER).await,
        &two_image,
        "the first alternative serves",
    );
    served_by(&image(&lab, TWO_ONLY).await, &two_image, "RegionTwo scope");

    let blackhole = Blackhole::drop_to(ns, lab.two.vip);
    // The harness itself: packets to RegionTwo vanish, nothing refuses them.
    assert!(
        unanswered(lab.two.addr(IMAGE)).await,
        "a connect to RegionTwo was answered through the blackhole"
    );

    // No request is sent while the checks catch up: one could ride a pooled connection
    // into the blackhole. The state polled is the one the request path reads.
    wait_for(&health, false, "RegionOne marks RegionTwo's image down").await;
    let last = health.last_result().unwrap_or_default();
    assert!(
        last.contains("no answer within"),
        "the checks failed by timing out, as a blackhole makes them: {last}"
    );

    // A plain RegionTwo scope: the router answers 503 itself from the health state,
    // naming the backend; trying to connect would have been a 504 after `connect`.
    let r = image(&lab, TWO_ONLY).await;
    let msg = r.problem(503);
    assert!(msg.contains("RegionTwo_image_public"), "{msg}");
    assert!(msg.contains("no answer within"), "{msg}");

    // The alternative serves, locally: RegionOne's own image backend, no remote hop.
    let r = image(&lab, EITHER).await;
    served_by(
        &r,
        &one_image,
        "RegionTwo|RegionOne while RegionTwo is cut off",
    );
    assert_eq!(
        r.echo().header("via").as_deref(),
        Some("1.1 scope-router-RegionOne")
    );

    blackhole.lift();
    wait_for(&health, true, "RegionOne marks RegionTwo's image up again").await;
    served_by(
        &image(&lab, EITHER).await,
        &two_image,
        "RegionTwo|RegionOne after recovery",
    );
    served_by(
        &image(&lab, TWO_ONLY).await,
        &two_image,
        "RegionTwo scope after recovery",
    );
}

/// The blackhole before any check notices it: RegionTwo still reads as up, so the router
/// does try to connect. Nothing was sent when the connect times out, so
/// `RegionTwo|RegionOne` moves on to RegionOne; a plain RegionTwo scope has nowhere else
/// to go and gets the gateway timeout (the slow answer the health state spares clients).
#[test]
fn privileged_an_unnoticed_blackhole_fails_over_once_connecting_times_out() {
    let Some(ns) =
        namespace("privileged_an_unnoticed_blackhole_fails_over_once_connecting_times_out")
    else {
        return;
    };
    run_inside(&ns, || unnoticed_blackhole_scenario(&ns));
}

async fn unnoticed_blackhole_scenario(ns: &Netns) {
    let lab = lab(NO_CHECKS).await;
    let health = remote_image_health(&lab);
    // No request reaches RegionTwo before the blackhole: a pooled keep-alive connection
    // would carry the next request into it, and a request that may have been sent is
    // never failed over (it would wait out `idle` instead). Every connect below is fresh.
    let _blackhole = Blackhole::drop_to(ns, lab.two.vip);
    assert!(
        unanswered(lab.two.addr(IMAGE)).await,
        "a connect to RegionTwo was answered through the blackhole"
    );

    let r = image(&lab, EITHER).await;
    served_by(
        &r,
        &lab.one.backend_name(IMAGE),
        "RegionTwo|RegionOne once connecting to RegionTwo timed out",
    );
    assert_eq!(
        r.echo().header("via").as_deref(),
        Some("1.1 scope-router-RegionOne")
    );
    // The health state had nothing to do with it: the failover was the connect's.
    assert!(
        health.is_up(),
        "RegionTwo was marked down: {:?}",
        health.last_result()
    );

    let r = image(&lab, TWO_ONLY).await;
    let msg = r.problem(504);
    assert!(msg.contains("RegionTwo_image_public"), "{msg}");
}
