//! End-to-end routing per scope source and the rewrites the backend sees
//! (docs/ARCHITECTURE.md §3).

use integration_tests::client::get;
use integration_tests::lab::{Lab, LabOptions, TWO_COMPUTE_PREFIX};

#[tokio::test]
async fn no_scope_goes_to_the_local_backend_with_host_unchanged() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let vip = lab.one.addr(8774);
    let r = get(vip, "/v2.1/servers?limit=1", &[]).await.unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let e = r.echo();
    assert_eq!(e.backend(), lab.one.backend_name(8774));
    assert_eq!(e.path(), "/v2.1/servers?limit=1");
    assert_eq!(e.header("host").as_deref(), Some(vip.to_string().as_str()));
    assert_eq!(e.header("x-forwarded-for").as_deref(), Some("127.0.0.1"));
    assert_eq!(
        e.header("via").as_deref(),
        Some("1.1 scope-router-RegionOne")
    );
    assert_eq!(e.header("x-identity-region").as_deref(), Some("RegionOne"));
    let identity_url = e.header("x-identity-url").unwrap();
    assert!(
        identity_url.contains(&lab.one.addr(35357).to_string()),
        "{identity_url}"
    );
}

#[tokio::test]
async fn x_scope_sends_compute_to_the_other_region_with_prefix_rewrite() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let scope = r#"{"compute": "RegionTwo"}"#;
    let r = get(
        lab.one.addr(8774),
        "/v2.1/servers/detail?all_tenants=1",
        &[("X-Scope", scope)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200, "{:?}", r.body);
    let e = r.echo();
    assert_eq!(e.backend(), lab.two.backend_name(8774));
    assert_eq!(
        e.path(),
        format!("{TWO_COMPUTE_PREFIX}/v2.1/servers/detail?all_tenants=1")
    );
    // The remote router got Host = its own frontend and passed it through.
    assert_eq!(
        e.header("host").as_deref(),
        Some(lab.two.addr(8774).to_string().as_str())
    );
    assert_eq!(
        e.header("via").as_deref(),
        Some(
            "1.1 scope-router-RegionOne (compute=RegionTwo from X-Scope), \
             1.1 scope-router-RegionTwo"
        )
    );
    assert_eq!(
        e.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1, 127.0.0.1")
    );
    // The scope names no identity region, so RegionOne decided it from its defaults
    // (the current region) and pinned that in X-Scope: RegionTwo decides the same.
    assert_eq!(
        e.header("x-scope").as_deref(),
        Some(r#"{"compute":"RegionTwo","identity":"RegionOne"}"#),
    );
    assert_eq!(e.header("x-identity-region").as_deref(), Some("RegionOne"));
}

#[tokio::test]
async fn service_type_absent_from_scope_uses_the_default() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    // compute_legacy (/v2/) is not in the scope: it stays in RegionOne.
    let r = get(
        lab.one.addr(8774),
        "/v2/tenant/servers",
        &[("X-Scope", r#"{"compute": "RegionTwo"}"#)],
    )
    .await
    .unwrap();
    assert_eq!(r.echo().backend(), lab.one.backend_name(8774));
    assert_eq!(r.echo().path(), "/v2/tenant/servers");
}

#[tokio::test]
async fn auth_token_scope_is_kept_for_non_identity_services() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let token = r#"gAAAAtoken!SCOPE!{"image": "RegionTwo", "identity": "RegionTwo"}"#;
    let r = get(lab.one.addr(9292), "/v2/images", &[("X-Auth-Token", token)])
        .await
        .unwrap();
    let e = r.echo();
    assert_eq!(e.backend(), lab.two.backend_name(9292));
    assert_eq!(
        e.header("x-auth-token").as_deref(),
        Some(token),
        "glance needs the scope for its own calls"
    );
    assert_eq!(e.header("x-identity-region").as_deref(), Some("RegionTwo"));
    let identity_url = e.header("x-identity-url").unwrap();
    assert!(
        identity_url.contains(&lab.two.addr(35357).to_string()),
        "{identity_url}"
    );
}

#[tokio::test]
async fn auth_token_scope_is_stripped_for_identity() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let token = r#"gAAAAtoken!SCOPE!{"identity": "RegionTwo"}"#;
    let r = get(
        lab.one.addr(5000),
        "/v3/auth/projects",
        &[("X-Auth-Token", token)],
    )
    .await
    .unwrap();
    let e = r.echo();
    assert_eq!(e.backend(), lab.two.backend_name(5000));
    // RegionOne forwarded it whole; RegionTwo, the last hop, cut the scope off.
    assert_eq!(e.header("x-auth-token").as_deref(), Some("gAAAAtoken"));
}

#[tokio::test]
async fn subject_token_scope_routes_token_validation_and_is_stripped() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let subject = r#"gAAAAsubject!SCOPE!{"identity": "RegionTwo"}"#;
    let r = get(
        lab.one.addr(5000),
        "/v3/auth/tokens",
        &[
            ("X-Auth-Token", "gAAAAservice"),
            ("X-Subject-Token", subject),
        ],
    )
    .await
    .unwrap();
    let e = r.echo();
    assert_eq!(e.backend(), lab.two.backend_name(5000));
    assert_eq!(e.header("x-subject-token").as_deref(), Some("gAAAAsubject"));
    assert_eq!(e.header("x-auth-token").as_deref(), Some("gAAAAservice"));
}

#[tokio::test]
async fn x_scope_wins_over_tokens() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let r = get(
        lab.one.addr(9696),
        "/v2.0/networks",
        &[
            ("X-Scope", r#"{"network": "RegionOne"}"#),
            ("X-Auth-Token", r#"t!SCOPE!{"network": "RegionTwo"}"#),
        ],
    )
    .await
    .unwrap();
    assert_eq!(r.echo().backend(), lab.one.backend_name(9696));
}

#[tokio::test]
async fn percent_encoded_scope_is_decoded() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let r = get(
        lab.one.addr(8780),
        "/resource_providers",
        &[("X-Scope", "%7B%22placement%22%3A%22RegionTwo%22%7D")],
    )
    .await
    .unwrap();
    assert_eq!(r.echo().backend(), lab.two.backend_name(8780));
}

#[tokio::test]
async fn unscoped_path_falls_back_to_the_local_backend() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    // Version discovery on 8774 matches no catalog prefix; even a scope for
    // compute cannot move it.
    let r = get(
        lab.one.addr(8774),
        "/",
        &[("X-Scope", r#"{"compute": "RegionTwo"}"#)],
    )
    .await
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.echo().backend(), lab.one.backend_name(8774));
    assert_eq!(r.echo().path(), "/");
}

#[tokio::test]
async fn region_two_router_serves_its_own_region_by_default() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let r = get(lab.two.addr(9292), "/v2/images", &[]).await.unwrap();
    let e = r.echo();
    assert_eq!(e.backend(), lab.two.backend_name(9292));
    assert_eq!(
        e.header("via").as_deref(),
        Some("1.1 scope-router-RegionTwo")
    );
    assert_eq!(e.header("x-identity-region").as_deref(), Some("RegionTwo"));
}

#[tokio::test]
async fn identity_region_from_the_scope_survives_the_second_hop() {
    let lab = Lab::start(LabOptions::default()).await.unwrap();
    let scope = r#"{"compute": "RegionTwo", "identity": "RegionOne"}"#;
    let r = get(lab.one.addr(8774), "/v2.1/flavors", &[("X-Scope", scope)])
        .await
        .unwrap();
    let e = r.echo();
    assert_eq!(e.backend(), lab.two.backend_name(8774));
    assert_eq!(e.header("x-identity-region").as_deref(), Some("RegionOne"));
    let identity_url = e.header("x-identity-url").unwrap();
    assert!(
        identity_url.contains(&lab.one.addr(35357).to_string()),
        "{identity_url}"
    );
}

/// The issue's reproduction: RegionTwo sends identity to RegionOne by default, RegionOne
/// has no defaults. A token scoped to RegionTwo must reach RegionTwo's keystone; before,
/// RegionOne stripped the scope, RegionTwo applied its default and sent it back (508).
#[tokio::test]
async fn token_scope_reaches_the_issuing_region_whatever_its_defaults() {
    let lab = Lab::start(LabOptions {
        two_extra_toml: "[scope.defaults]\nidentity = \"RegionOne\"\n".into(),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    for (name, value, cleaned) in [
        (
            "X-Auth-Token",
            r#"tok!SCOPE!{"identity": "RegionTwo"}"#,
            "tok",
        ),
        (
            "X-Subject-Token",
            r#"sub!SCOPE!{"identity": "RegionTwo"}"#,
            "sub",
        ),
    ] {
        let r = get(lab.one.addr(5000), "/v3/auth/tokens", &[(name, value)])
            .await
            .unwrap();
        assert_eq!(r.status, 200, "{name}: {:?}", r.body);
        let e = r.echo();
        assert_eq!(e.backend(), lab.two.backend_name(5000), "{name}");
        let field = name.to_ascii_lowercase();
        assert_eq!(e.header(&field).as_deref(), Some(cleaned), "{name}");
        assert_eq!(
            e.header("x-identity-region").as_deref(),
            Some("RegionTwo"),
            "{name}"
        );
    }
}

/// Every service type of the catalog: (listener port, request path, service type, the
/// path RegionTwo's backend must see).
const SERVICES: &[(u16, &str, &str, &str)] = &[
    (5000, "/v3/auth/tokens", "identity", "/v3/auth/tokens"),
    (35357, "/v3/users", "identity", "/v3/users"),
    (9292, "/v2/images", "image", "/v2/images"),
    (8774, "/v2.1/servers", "compute", "/two/v2.1/servers"),
    (
        8774,
        "/v2/t1/servers",
        "compute_legacy",
        "/two/v2/t1/servers",
    ),
    (9696, "/v2.0/networks", "network", "/v2.0/networks"),
    (
        8780,
        "/resource_providers",
        "placement",
        "/resource_providers",
    ),
];

/// `[scope.defaults]` sending every service type of the catalog to `region`.
fn all_defaults(region: &str) -> String {
    let mut toml = String::from("[scope.defaults]\n");
    for (_, _, st, _) in SERVICES {
        if !toml.contains(&format!("\n{st} =")) {
            toml.push_str(&format!("{st} = \"{region}\"\n"));
        }
    }
    toml
}

/// How a row sends its scope.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    XScope,
    AuthToken,
    SubjectToken,
    /// No scope: RegionOne's defaults send the service to RegionTwo.
    Defaults,
}

/// A scope carried by any source reaches RegionTwo's backend for every service type,
/// though RegionTwo's defaults send every service type back to RegionOne: the remote
/// hop keeps the scope, the last hop strips it.
#[tokio::test]
async fn every_service_and_scope_source_survives_the_remote_hop() {
    // RegionOne: defaults to itself (header sources) or to RegionTwo (defaults source).
    let header_lab = Lab::start(LabOptions {
        two_extra_toml: all_defaults("RegionOne"),
        ..LabOptions::default()
    })
    .await
    .unwrap();
    let defaults_lab = Lab::start(LabOptions {
        one_extra_toml: all_defaults("RegionTwo"),
        two_extra_toml: all_defaults("RegionOne"),
        ..LabOptions::default()
    })
    .await
    .unwrap();

    let mut failures = Vec::new();
    for &(port, path, st, two_path) in SERVICES {
        for source in [
            Source::XScope,
            Source::AuthToken,
            Source::SubjectToken,
            Source::Defaults,
        ] {
            let lab = if source == Source::Defaults {
                &defaults_lab
            } else {
                &header_lab
            };
            let scope = format!(r#"{{"{st}": "RegionTwo"}}"#);
            let auth_scoped = format!("tok!SCOPE!{scope}");
            let subject_scoped = format!("sub!SCOPE!{scope}");
            let headers: Vec<(&str, &str)> = match source {
                Source::XScope => vec![("X-Scope", &scope), ("X-Auth-Token", "tok")],
                Source::AuthToken => vec![("X-Auth-Token", &auth_scoped)],
                Source::SubjectToken => {
                    vec![
                        ("X-Auth-Token", "tok"),
                        ("X-Subject-Token", &subject_scoped),
                    ]
                }
                Source::Defaults => vec![("X-Auth-Token", "tok")],
            };
            let row = format!("{st} on :{port} by {source:?}");
            let r = match get(lab.one.addr(port), path, &headers).await {
                Ok(r) => r,
                Err(e) => {
                    failures.push(format!("{row}: {e}"));
                    continue;
                }
            };
            if r.status != 200 {
                failures.push(format!("{row}: {} {:?}", r.status, r.body));
                continue;
            }
            let e = r.echo();
            // Only the identity service's backend gets the auth token without its scope.
            let auth = match source {
                Source::AuthToken if st != "identity" => auth_scoped.as_str(),
                _ => "tok",
            };
            // The identity region: the scope's when it names identity, else RegionOne's
            // decision (its defaults), pinned for RegionTwo.
            let identity = if st == "identity" || source == Source::Defaults {
                "RegionTwo"
            } else {
                "RegionOne"
            };
            let via_source = match source {
                Source::XScope => "X-Scope",
                Source::AuthToken => "X-Auth-Token",
                Source::SubjectToken => "X-Subject-Token",
                Source::Defaults => "defaults",
            };
            let via = format!(
                "1.1 scope-router-RegionOne ({st}=RegionTwo from {via_source}), \
                 1.1 scope-router-RegionTwo"
            );
            let got = (
                e.backend().to_owned(),
                e.path().to_owned(),
                e.header("x-auth-token"),
                e.header("x-subject-token"),
                e.header("x-identity-region"),
                e.header("via"),
            );
            let want = (
                lab.two.backend_name(port),
                two_path.to_owned(),
                Some(auth.to_owned()),
                (source == Source::SubjectToken).then(|| "sub".to_owned()),
                Some(identity.to_owned()),
                Some(via),
            );
            if got != want {
                failures.push(format!("{row}:\n  got  {got:?}\n  want {want:?}"));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failing row(s):\n{}",
        failures.len(),
        failures.join("\n")
    );
}
