//! End-to-end routing per scope source and the rewrites the backend sees (DESIGN §3).

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
        Some("1.1 scope-router-RegionOne, 1.1 scope-router-RegionTwo")
    );
    assert_eq!(
        e.header("x-forwarded-for").as_deref(),
        Some("127.0.0.1, 127.0.0.1")
    );
    assert_eq!(
        e.header("x-scope").as_deref(),
        Some(scope),
        "X-Scope travels on for sub-requests"
    );
    // The scope names no identity region, so the last router applies its own
    // default (DESIGN §3.2: every service type defaults to the current region).
    assert_eq!(e.header("x-identity-region").as_deref(), Some("RegionTwo"));
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
