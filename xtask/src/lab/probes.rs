//! The scoped requests the lab sends from the client namespace, what each should reach,
//! and the table of what actually answered (as reported by the echo backends).

use std::process::Command;

use serde_json::Value;

use super::plan::{RegionPlan, client_ns};
use crate::exec;
use crate::netns::nsenter;

/// Where a request is expected to end up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The echo backend of this region and port answers.
    Backend(String),
    /// The router itself refuses with this status.
    Status(u16),
}

#[derive(Debug, Clone)]
pub struct Probe {
    pub title: String,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub expect: Expect,
    /// A header the answering backend must have received with this value (a cleaned
    /// token, the identity region).
    pub seen: Option<(String, String)>,
    /// What the answering backend must have seen: the Host and path it was sent, and the
    /// routers the request crossed (the table's "Host seen", "path seen" and "via").
    pub arrives: Option<Arrival>,
    /// `--tls`: the CA curl trusts (the URL is `https://`).
    pub ca_file: Option<std::path::PathBuf>,
}

/// The request as the expected backend must receive it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arrival {
    pub host: String,
    pub path: String,
    pub via: String,
}

/// For a probe sent to `url` and expected at backend `expect`: its own region's VIP:port
/// as Host (the router rewrites it to the target's catalog URL), the path unchanged, and
/// the entry router then, across regions, the target's.
fn arrival(regions: &[RegionPlan], url: &str, expect: &Expect) -> Option<Arrival> {
    let Expect::Backend(name) = expect else {
        return None;
    };
    let (region, port) = name.rsplit_once(':')?;
    let target = regions.iter().find(|r| r.name == region)?;
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let entry_vip = authority.split(':').next()?;
    let entry = regions.iter().find(|r| r.vip.to_string() == entry_vip)?;
    let via = if entry.name == target.name {
        entry.name.clone()
    } else {
        format!("{}>{}", entry.name, target.name)
    };
    Some(Arrival {
        host: format!("{}:{port}", target.vip),
        path: if path.is_empty() {
            "/".to_owned()
        } else {
            path.to_owned()
        },
        via,
    })
}

impl Probe {
    /// The curl command line, run from the client namespace.
    pub fn curl(&self) -> Command {
        let mut cmd = nsenter(&client_ns());
        cmd.args(["curl", "-sS", "--max-time", "15", "-w", r"\n%{http_code}"]);
        for (name, value) in &self.headers {
            cmd.arg("-H").arg(format!("{name}: {value}"));
        }
        if let Some(ca) = &self.ca_file {
            cmd.arg("--cacert").arg(ca);
        }
        cmd.arg(&self.url);
        cmd
    }

    /// The same request as an operator would type it inside `--keep`'s lab.
    pub fn shell_example(&self) -> String {
        exec::display(&self.curl())
    }
}

/// The probes for the first two regions: each scope source of docs/ARCHITECTURE.md §3.2, a path
/// rewrite, the transparent fallback and a refused scope. A probe is left out when the
/// catalog lacks its service.
pub fn probes(regions: &[RegionPlan]) -> Vec<Probe> {
    let [a, b, ..] = regions else {
        return Vec::new();
    };
    let url = |r: &RegionPlan, port: u16, path: &str| r.url(port, path);
    let header = |n: &str, v: String| (n.to_owned(), v);
    let mut out = Vec::new();
    let mut add = |title: String,
                   url: String,
                   headers: Vec<(String, String)>,
                   expect: Expect,
                   seen: Option<(&str, &str)>| {
        let arrives = arrival(regions, &url, &expect);
        out.push(Probe {
            title,
            url,
            headers,
            expect,
            seen: seen.map(|(n, v)| (n.to_owned(), v.to_owned())),
            arrives,
            ca_file: a.ca_file.clone(),
        });
    };

    if let Some(port) = a.port_of("image") {
        add(
            format!("no scope -> {} image", a.name),
            url(a, port, "/v2/images"),
            vec![],
            Expect::Backend(a.backend_name(port)),
            None,
        );
        if let Some(b_port) = b.port_of("image") {
            add(
                format!("X-Scope image={}", b.name),
                url(a, port, "/v2/images"),
                vec![header("X-Scope", format!(r#"{{"image":"{}"}}"#, b.name))],
                Expect::Backend(b.backend_name(b_port)),
                None,
            );
            add(
                format!("token piggyback image={}", b.name),
                url(a, port, "/v2/images?limit=1"),
                vec![header(
                    "X-Auth-Token",
                    format!(r#"tok!SCOPE!{{"image":"{}"}}"#, b.name),
                )],
                Expect::Backend(b.backend_name(b_port)),
                None,
            );
        }
        add(
            "unknown region -> 400".to_owned(),
            url(a, port, "/v2/images"),
            vec![header("X-Scope", r#"{"image":"RegionNowhere"}"#.to_owned())],
            Expect::Status(400),
            None,
        );
    }
    if let (Some(port), Some(b_port)) = (a.port_of("identity"), b.port_of("identity")) {
        add(
            format!("X-Scope identity={}", b.name),
            url(a, port, "/v3/auth/tokens"),
            vec![header("X-Scope", format!(r#"{{"identity":"{}"}}"#, b.name))],
            Expect::Backend(b.backend_name(b_port)),
            None,
        );
        add(
            format!("X-Subject-Token identity={}", b.name),
            url(a, port, "/v3/auth/tokens"),
            vec![
                header("X-Auth-Token", "admin".to_owned()),
                header(
                    "X-Subject-Token",
                    format!(r#"tok!SCOPE!{{"identity":"{}"}}"#, b.name),
                ),
            ],
            Expect::Backend(b.backend_name(b_port)),
            None,
        );
    }
    if let (Some(port), Some(b_port)) = (a.port_of("identity"), b.port_of("identity")) {
        // The lab gives the second region identity defaults pointing at the first (the
        // seed's identity-in-RegionOne setup), so the two routers' defaults differ: a
        // token scoped to the second region must still reach it, and arrive cleaned.
        add(
            format!(
                "defaults differ: token identity={} (validated there)",
                b.name
            ),
            url(a, port, "/v3/auth/tokens"),
            vec![header(
                "X-Subject-Token",
                format!(r#"sub!SCOPE!{{"identity":"{}"}}"#, b.name),
            )],
            Expect::Backend(b.backend_name(b_port)),
            Some(("x-subject-token", "sub")),
        );
        add(
            format!("defaults differ: X-Auth-Token identity={}", b.name),
            url(a, port, "/v3/auth/tokens"),
            vec![header(
                "X-Auth-Token",
                format!(r#"tok!SCOPE!{{"identity":"{}"}}"#, b.name),
            )],
            Expect::Backend(b.backend_name(b_port)),
            Some(("x-auth-token", "tok")),
        );
        add(
            format!(
                "defaults differ: no scope at {} -> {} identity",
                b.name, a.name
            ),
            url(b, b_port, "/v3/auth/tokens"),
            vec![],
            Expect::Backend(a.backend_name(port)),
            None,
        );
    }
    if let (Some(port), Some(b_port)) = (a.port_of("compute"), b.port_of("compute")) {
        add(
            "version discovery GET / (transparent)".to_owned(),
            url(a, port, "/"),
            vec![],
            Expect::Backend(a.backend_name(port)),
            None,
        );
        add(
            format!("X-Scope compute={}", b.name),
            url(a, port, "/v2.1/servers"),
            vec![header("X-Scope", format!(r#"{{"compute":"{}"}}"#, b.name))],
            Expect::Backend(b.backend_name(b_port)),
            None,
        );
    }
    if let Some(port) = b.port_of("network") {
        add(
            format!("no scope -> {} network", b.name),
            url(b, port, "/v2.0/networks"),
            vec![],
            Expect::Backend(b.backend_name(port)),
            None,
        );
    }
    if let (Some(port), Some(a_port)) = (b.port_of("image"), a.port_of("image")) {
        add(
            format!("via {}: X-Scope image={}", b.name, a.name),
            url(b, port, "/v2/images"),
            vec![header("X-Scope", format!(r#"{{"image":"{}"}}"#, a.name))],
            Expect::Backend(a.backend_name(a_port)),
            None,
        );
    }
    out
}

/// The failover demonstration: the second region's image backend stops, then
/// `{"image": "B|A"}` sent to the first region must be served by the first region and
/// `{"image": "B"}` must get the router's fast 503.
pub struct Failover {
    pub dead_region: String,
    /// The lab's name for the echo-backend process to stop.
    pub backend_process: String,
    url: String,
    either: String,
    plain: String,
    served_by: String,
    either_title: String,
    either_arrives: Option<Arrival>,
    ca_file: Option<std::path::PathBuf>,
}

impl Failover {
    /// `None` when the first two regions do not both serve `image`.
    pub fn plan(regions: &[RegionPlan]) -> Option<Failover> {
        let [a, b, ..] = regions else {
            return None;
        };
        let (a_port, b_port) = (a.port_of("image")?, b.port_of("image")?);
        let url = a.url(a_port, "/v2/images");
        let either_arrives = arrival(regions, &url, &Expect::Backend(a.backend_name(a_port)));
        Some(Failover {
            dead_region: b.name.clone(),
            backend_process: format!("echo-backend {}", b.backend_name(b_port)),
            url,
            either: format!(r#"{{"image":"{}|{}"}}"#, b.name, a.name),
            plain: format!(r#"{{"image":"{}"}}"#, b.name),
            served_by: a.backend_name(a_port),
            either_title: format!(
                "failover: image={}|{} while {} is down",
                b.name, a.name, b.name
            ),
            either_arrives,
            ca_file: a.ca_file.clone(),
        })
    }

    /// The plain scope to the dead region: 503 once the first router knows.
    pub fn plain_probe(&self) -> Probe {
        Probe {
            title: format!(
                "failover: image={} while it is down -> 503",
                self.dead_region
            ),
            url: self.url.clone(),
            headers: vec![("X-Scope".to_owned(), self.plain.clone())],
            expect: Expect::Status(503),
            seen: None,
            arrives: None,
            ca_file: self.ca_file.clone(),
        }
    }

    /// `B|A` to the first region: served by the first region once B's image is down.
    pub fn either_probe(&self) -> Probe {
        Probe {
            title: self.either_title.clone(),
            url: self.url.clone(),
            headers: vec![("X-Scope".to_owned(), self.either.clone())],
            expect: Expect::Backend(self.served_by.clone()),
            seen: None,
            arrives: self.either_arrives.clone(),
            ca_file: self.ca_file.clone(),
        }
    }

    pub fn probes(&self) -> Vec<Probe> {
        vec![self.either_probe(), self.plain_probe()]
    }
}

/// What came back for one probe.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub status: Option<u16>,
    pub answered_by: String,
    pub host_seen: String,
    pub path_seen: String,
    /// The routers the request went through, from the `Via` the backend saw.
    pub hops: String,
    pub ok: bool,
}

pub fn send(probe: &Probe) -> Outcome {
    let mut cmd = probe.curl();
    exec::announce(&cmd);
    match exec::query(&mut cmd) {
        Ok(stdout) => judge(probe, &stdout),
        Err(err) => Outcome {
            answered_by: format!("(no answer: {})", brief(&format!("{err:#}"))),
            ..Outcome::default()
        },
    }
}

/// One short line of an error for a table cell.
fn brief(text: &str) -> String {
    truncate(text, 100)
}

/// What an echo-backend reported about the request it received.
#[derive(Debug, PartialEq, Eq)]
struct Echo {
    name: String,
    host: String,
    path: String,
    via: String,
}

/// Reads curl's output (body, then the status on the last line) and compares it with
/// the expectation.
fn judge(probe: &Probe, stdout: &str) -> Outcome {
    let (body, status) = stdout.rsplit_once('\n').unwrap_or(("", stdout));
    let status = status.trim().parse::<u16>().ok();
    let json: Option<Value> = serde_json::from_str(body).ok();
    let echo = json.as_ref().and_then(echo_fields);
    let mut out = Outcome {
        status,
        ..Outcome::default()
    };
    match (&echo, &json) {
        (Some(echo), _) => {
            out.answered_by = echo.name.clone();
            out.host_seen = echo.host.clone();
            out.path_seen = echo.path.clone();
            out.hops = hops(&echo.via);
        }
        (None, Some(j)) if j.get("error").is_some() => {
            let title = j["error"]["title"].as_str().unwrap_or("error");
            out.answered_by = format!("router: {title}");
        }
        _ => out.answered_by = format!("(body: {})", truncate(body, 40)),
    }
    let seen_ok = match (&probe.seen, json.as_ref().and_then(|j| j.get("headers"))) {
        (None, _) => true,
        (Some((name, want)), Some(headers)) => header_values(headers, name) == *want,
        (Some(_), None) => false,
    };
    // What the table prints is what the verdict checks.
    let arrived_ok = probe
        .arrives
        .as_ref()
        .is_none_or(|a| a.host == out.host_seen && a.path == out.path_seen && a.via == out.hops);
    out.ok = match &probe.expect {
        Expect::Backend(name) => {
            status.is_some_and(|s| (200..300).contains(&s))
                && *name == out.answered_by
                && seen_ok
                && arrived_ok
        }
        Expect::Status(want) => status == Some(*want) && echo.is_none(),
    };
    out
}

/// The echo-backend's JSON: `{"backend": NAME, "path": "/p?q", "headers": {"host": ["h:p"], ...}}`.
fn echo_fields(json: &Value) -> Option<Echo> {
    let headers = json.get("headers");
    let header = |name: &str| headers.map(|h| header_values(h, name)).unwrap_or_default();
    Some(Echo {
        name: json.get("backend")?.as_str()?.to_owned(),
        path: json
            .get("path")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_owned(),
        host: header("host"),
        via: header("via"),
    })
}

/// All values of one header (the echo lists each header's values), joined by ", ".
fn header_values(headers: &Value, name: &str) -> String {
    let Some(map) = headers.as_object() else {
        return String::new();
    };
    let values: Vec<&str> = map
        .iter()
        .filter(|(k, _)| k.eq_ignore_ascii_case(name))
        .flat_map(|(_, v)| match v {
            Value::String(s) => vec![s.as_str()],
            Value::Array(items) => items.iter().filter_map(Value::as_str).collect(),
            _ => Vec::new(),
        })
        .collect();
    values.join(", ")
}

/// `1.1 scope-router-RegionOne, 1.1 scope-router-RegionTwo` -> `RegionOne>RegionTwo`.
fn hops(via: &str) -> String {
    via.split(',')
        .filter_map(|hop| hop.split_whitespace().nth(1))
        .map(|by| by.strip_prefix("scope-router-").unwrap_or(by))
        .collect::<Vec<_>>()
        .join(">")
}

fn truncate(text: &str, max: usize) -> String {
    let one_line = text.replace('\n', " ");
    if one_line.chars().count() <= max {
        one_line
    } else {
        format!("{}…", one_line.chars().take(max).collect::<String>())
    }
}

/// The results table, one row per probe.
pub fn table(results: &[(Probe, Outcome)]) -> String {
    let headers = [
        "#",
        "request",
        "to",
        "status",
        "answered by",
        "Host seen",
        "path seen",
        "via",
        "expected",
        "",
    ];
    let rows: Vec<Vec<String>> = results
        .iter()
        .enumerate()
        .map(|(i, (probe, out))| {
            let to = probe
                .url
                .trim_start_matches("http://")
                .trim_start_matches("https://")
                .split('/')
                .next()
                .unwrap_or("")
                .to_owned();
            vec![
                (i + 1).to_string(),
                probe.title.clone(),
                to,
                out.status
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| "-".into()),
                out.answered_by.clone(),
                out.host_seen.clone(),
                out.path_seen.clone(),
                out.hops.clone(),
                match &probe.expect {
                    Expect::Backend(name) => name.clone(),
                    Expect::Status(s) => s.to_string(),
                },
                if out.ok { "ok" } else { "MISMATCH" }.to_owned(),
            ]
        })
        .collect();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    let mut out = vec![line(headers.iter().map(|h| (*h).to_owned()).collect())];
    out.extend(rows.into_iter().map(line));
    out.join("\n")
}

/// `scope-router status` inside the region's router namespace; a failure becomes a
/// note, since the lab's verdict rests on the probes.
pub fn status_output(
    region: &RegionPlan,
    router: &std::path::Path,
    config: &std::path::Path,
) -> String {
    let mut cmd = nsenter(&region.router_ns());
    cmd.arg(router).arg("status").arg("--config").arg(config);
    exec::announce(&cmd);
    match cmd.output() {
        // Exit 1 with a report means "something is down" (after the failover step, the
        // dead image backend): the report is what the lab shows.
        Ok(out) if out.status.success() || !out.stdout.is_empty() => {
            String::from_utf8_lossy(&out.stdout).into_owned()
        }
        Ok(out) => {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let first = stderr.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
            format!(
                "(`scope-router status` failed, {}: {})",
                out.status,
                brief(first)
            )
        }
        Err(err) => format!("(`scope-router status` could not start: {err})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(expect: Expect) -> Probe {
        Probe {
            title: "t".into(),
            url: "http://192.168.142.244:9292/v2/images".into(),
            headers: vec![],
            expect,
            seen: None,
            arrives: None,
            ca_file: None,
        }
    }

    #[test]
    fn echo_answer_is_matched_by_backend_name() {
        // The shape tests/src/echo.rs produces.
        let body = r#"{"backend":"RegionTwo:9292","method":"GET","path":"/v2/images",
            "headers":{"host":["192.168.144.244:9292"],
                       "via":["1.1 scope-router-RegionOne","1.1 scope-router-RegionTwo"]}}"#
            .replace('\n', "");
        let out = judge(
            &probe(Expect::Backend("RegionTwo:9292".into())),
            &format!("{body}\n200"),
        );
        assert_eq!(out.status, Some(200));
        assert_eq!(out.answered_by, "RegionTwo:9292");
        assert_eq!(out.host_seen, "192.168.144.244:9292");
        assert_eq!(out.path_seen, "/v2/images");
        assert_eq!(out.hops, "RegionOne>RegionTwo");
        assert!(out.ok);

        let wrong = judge(
            &probe(Expect::Backend("RegionOne:9292".into())),
            &format!("{body}\n200"),
        );
        assert!(!wrong.ok, "another backend answering is a mismatch");

        // What arrived is part of the verdict: another Host, path or route is a mismatch.
        let arrived = |host: &str, path: &str, via: &str| {
            let mut p = probe(Expect::Backend("RegionTwo:9292".into()));
            p.arrives = Some(Arrival {
                host: host.into(),
                path: path.into(),
                via: via.into(),
            });
            judge(&p, &format!("{body}\n200")).ok
        };
        assert!(arrived(
            "192.168.144.244:9292",
            "/v2/images",
            "RegionOne>RegionTwo"
        ));
        assert!(!arrived(
            "192.168.142.244:9292",
            "/v2/images",
            "RegionOne>RegionTwo"
        ));
        assert!(!arrived(
            "192.168.144.244:9292",
            "/v2/other",
            "RegionOne>RegionTwo"
        ));
        assert!(!arrived("192.168.144.244:9292", "/v2/images", "RegionTwo"));
    }

    #[test]
    fn tls_probes_trust_the_lab_ca_and_read_https_urls() {
        let mut p = probe(Expect::Backend("RegionOne:9292".into()));
        p.url = "https://192.168.142.244:9292/v2/images".into();
        p.ca_file = Some("/tmp/lab/tls/ca.pem".into());
        let shown = p.shell_example();
        assert!(
            shown.contains("--cacert /tmp/lab/tls/ca.pem https://192.168.142.244:9292/"),
            "{shown}"
        );
        let table = table(&[(p, Outcome::default())]);
        assert!(table.contains("  192.168.142.244:9292  "), "{table}");
    }

    #[test]
    fn header_values_are_case_insensitive_and_joined() {
        let headers: Value =
            serde_json::from_str(r#"{"Host":"h:1","via":["1.1 a","1.1 b"]}"#).expect("test JSON");
        assert_eq!(header_values(&headers, "host"), "h:1");
        assert_eq!(header_values(&headers, "Via"), "1.1 a, 1.1 b");
        assert_eq!(header_values(&headers, "x-missing"), "");
        assert_eq!(hops("1.1 a, 1.1 scope-router-RegionTwo"), "a>RegionTwo");
    }

    #[test]
    fn router_error_is_expected_status_only_without_backend() {
        let body = r#"{"error":{"code":400,"title":"Bad Request","message":"unknown region"}}"#;
        let out = judge(&probe(Expect::Status(400)), &format!("{body}\n400"));
        assert!(out.ok);
        assert_eq!(out.answered_by, "router: Bad Request");
        let unexpected = judge(
            &probe(Expect::Backend("RegionOne:9292".into())),
            &format!("{body}\n400"),
        );
        assert!(!unexpected.ok);
    }

    #[test]
    fn table_marks_mismatches() {
        let p = probe(Expect::Status(400));
        let out = Outcome {
            status: Some(200),
            answered_by: "RegionOne:9292".into(),
            host_seen: "h".into(),
            path_seen: "/".into(),
            hops: String::new(),
            ok: false,
        };
        let text = table(&[(p, out)]);
        assert!(
            text.lines()
                .next()
                .is_some_and(|l| l.starts_with("#  request"))
        );
        assert!(text.contains("MISMATCH"));
        assert!(text.contains("192.168.142.244:9292"));
    }
}
