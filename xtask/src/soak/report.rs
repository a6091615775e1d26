//! What a soak run measured, its verdict, and the report: `target/soak/report.md` for a
//! person, `report.json` for a machine, a few summary lines for the terminal.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::{Value, json};

use super::classify::{self, Bounds, Class, Record, Window};
use super::hostile::{self, HostileRecord, Judged, Kind, Limits, Seen};
use super::resources::{Sample, Tolerance};
use super::traffic::{ScopeKind, Source, Spec};

/// How the run was set up.
#[derive(Debug, Clone)]
pub struct Settings {
    pub duration: Duration,
    pub warmup: Duration,
    /// Quiet time before each resource sample.
    pub settle: Duration,
    pub clients: usize,
    pub pace: Duration,
    /// `debug`, `release` or `release + BOLT`.
    pub build: String,
    pub ebpf: String,
    pub regions: Vec<String>,
    pub limits: Limits,
    pub bounds: Bounds,
    pub tolerance: Tolerance,
    /// The config settings the soak adds to the lab's.
    pub soak_settings: String,
}

/// A fault or lifecycle event the soak caused.
#[derive(Debug, Clone)]
pub struct Event {
    pub at: Duration,
    pub what: String,
    pub ok: bool,
    pub detail: String,
}

/// One router role's memory and descriptors.
#[derive(Debug, Clone)]
pub struct RoleResources {
    pub label: String,
    pub baseline_pid: u32,
    pub baseline: Option<Sample>,
    /// The process holding the role at the end (`None`: the role ended, e.g. the standby
    /// became the master).
    pub pid: Option<u32>,
    pub end: Option<Sample>,
    pub peak_kib: u64,
    pub note: String,
}

/// A router's counters from its `/metrics`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Counters {
    /// `scope_router_requests_total` by status class.
    pub requests: BTreeMap<String, u64>,
    /// `scope_router_errors_total` by kind (the router's own statuses).
    pub errors: BTreeMap<String, u64>,
    pub failovers: u64,
    pub retries: u64,
    pub redispatches: u64,
    /// `scope_router_client_connections{state="open"}`.
    pub open_connections: u64,
    /// The VRRP state whose `scope_router_vrrp_state` is 1.
    pub vrrp: Option<String>,
    /// Why the scrape failed.
    pub error: Option<String>,
}

impl Counters {
    /// Reads the Prometheus text exposition.
    pub fn parse(text: &str) -> Counters {
        let mut c = Counters::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.trim().parse::<f64>() else {
                continue;
            };
            let (name, labels) = match series.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            let label = |key: &str| {
                labels.split(',').find_map(|pair| {
                    let (k, v) = pair.split_once('=')?;
                    (k.trim() == key).then(|| v.trim().trim_matches('"').to_owned())
                })
            };
            let n = value as u64;
            match name {
                "scope_router_requests_total" => {
                    if let Some(class) = label("status_class") {
                        *c.requests.entry(class).or_default() += n;
                    }
                }
                "scope_router_errors_total" if n > 0 => {
                    if let Some(kind) = label("kind") {
                        *c.errors.entry(kind).or_default() += n;
                    }
                }
                "scope_router_failovers_total" => c.failovers += n,
                "scope_router_retries_total" => c.retries += n,
                "scope_router_redispatches_total" => c.redispatches += n,
                "scope_router_client_connections" if label("state").as_deref() == Some("open") => {
                    c.open_connections += n;
                }
                "scope_router_vrrp_state" if n == 1 => c.vrrp = label("state"),
                _ => {}
            }
        }
        c
    }
}

/// Everything a run produced.
pub struct Report {
    pub settings: Settings,
    /// Wall-clock start (RFC 3339).
    pub started: String,
    /// When the faults and hostile clients began, from the start of the good traffic.
    pub main_start: Duration,
    pub specs: Vec<Spec>,
    pub records: Vec<Record>,
    pub hostile: Vec<HostileRecord>,
    pub windows: Vec<Window>,
    pub events: Vec<Event>,
    pub resources: Vec<RoleResources>,
    /// Unexpected exits.
    pub crashes: Vec<String>,
    /// Intended exits.
    pub exits: Vec<String>,
    pub counters: Vec<(String, Counters)>,
    pub settled_after: Duration,
}

impl Report {
    pub fn new(settings: Settings, specs: Vec<Spec>) -> Report {
        Report {
            settings,
            started: String::new(),
            main_start: Duration::ZERO,
            specs,
            records: Vec::new(),
            hostile: Vec::new(),
            windows: Vec::new(),
            events: Vec::new(),
            resources: Vec::new(),
            crashes: Vec::new(),
            exits: Vec::new(),
            counters: Vec::new(),
            settled_after: Duration::ZERO,
        }
    }

    fn classes(&self) -> Vec<Class> {
        self.records
            .iter()
            .map(|r| {
                classify::classify(&self.specs[r.spec], r, &self.windows, &self.settings.bounds)
            })
            .collect()
    }

    /// Whether a region's router was being failed over or restarted around `at`.
    fn lifecycle(&self, entry: usize, at: Duration) -> bool {
        let b = &self.settings.bounds;
        self.windows.iter().any(|w| {
            matches!(w.fault, classify::Fault::Failover { region } | classify::Fault::Restart { region } if region == entry)
                && at + b.in_flight >= w.start
                && at <= w.end + b.recover
        })
    }

    fn judged(&self) -> Vec<Judged> {
        self.hostile
            .iter()
            .map(|r| hostile::judge(r, &self.settings.limits, |e, at| self.lifecycle(e, at)))
            .collect()
    }

    /// Why the soak failed; empty when it passed.
    pub fn verdict(&self) -> Vec<String> {
        let mut reasons = Vec::new();
        let classes = self.classes();
        if self.records.is_empty() {
            reasons.push("no good request was sent".into());
        }
        let mut failed: BTreeMap<String, u64> = BTreeMap::new();
        for class in &classes {
            if let Class::Failed(f) = class {
                *failed.entry(f.label()).or_default() += 1;
            }
        }
        if !failed.is_empty() {
            let total: u64 = failed.values().sum();
            reasons.push(format!(
                "{total} good request(s) failed: {}",
                failed
                    .iter()
                    .map(|(k, n)| format!("{n} {k}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        let never: Vec<String> = self
            .specs
            .iter()
            .enumerate()
            .filter(|(i, _)| {
                !self.records.iter().zip(&classes).any(|(r, c)| {
                    r.spec == *i && matches!(c, Class::Served | Class::ServedByAlternative)
                })
            })
            .map(|(_, s)| self.shape(s))
            .collect();
        if !never.is_empty() && !self.records.is_empty() {
            reasons.push(format!(
                "{} request shape(s) never served: {}",
                never.len(),
                never.join("; ")
            ));
        }
        let mut unexpected: BTreeMap<String, u64> = BTreeMap::new();
        for (r, j) in self.hostile.iter().zip(self.judged()) {
            if j == Judged::Unexpected {
                *unexpected
                    .entry(format!(
                        "{} {}: {}",
                        r.kind.label(),
                        r.variant,
                        seen_label(&r.seen)
                    ))
                    .or_default() += 1;
            }
        }
        for (what, n) in unexpected {
            reasons.push(format!(
                "hostile client got an unexpected answer {n}×: {what}"
            ));
        }
        for r in &self.resources {
            match (r.baseline, r.pid, r.end) {
                (Some(base), Some(_), Some(end)) => {
                    for excess in self.settings.tolerance.excess(&base, &end) {
                        reasons.push(format!("{}: not back to baseline: {excess}", r.label));
                    }
                }
                (None, _, _) => reasons.push(format!("{}: no baseline sample", r.label)),
                (_, Some(pid), None) => {
                    reasons.push(format!(
                        "{}: pid {pid} could not be sampled at the end",
                        r.label
                    ));
                }
                (_, None, _) => {}
            }
        }
        reasons.extend(self.crashes.iter().map(|c| format!("crash: {c}")));
        reasons.extend(
            self.events
                .iter()
                .filter(|e| !e.ok)
                .map(|e| format!("{} failed: {}", e.what, e.detail)),
        );
        reasons
    }

    fn shape(&self, s: &Spec) -> String {
        format!(
            "{} {} {} {}",
            s.addr,
            s.service_type,
            s.kind.label(),
            s.source.label()
        )
    }

    fn secs(&self, at: Duration) -> String {
        let t = at.as_secs_f64() - self.main_start.as_secs_f64();
        format!("{t:+.1} s")
    }

    /// A few lines for the terminal.
    pub fn summary(&self) -> String {
        let classes = self.classes();
        let mut counts: BTreeMap<String, u64> = BTreeMap::new();
        for c in &classes {
            *counts.entry(c.label()).or_default() += 1;
        }
        let judged = self.judged();
        let hostile_unexpected = judged.iter().filter(|j| **j == Judged::Unexpected).count();
        let mut out = format!(
            "good requests: {} ({})\nhostile attempts: {} ({} unexpected)\n",
            self.records.len(),
            counts
                .iter()
                .map(|(k, n)| format!("{n} {k}"))
                .collect::<Vec<_>>()
                .join(", "),
            self.hostile.len(),
            hostile_unexpected
        );
        for r in &self.resources {
            let _ = writeln!(out, "{}: {}", r.label, resources_line(r));
        }
        let reasons = self.verdict();
        if reasons.is_empty() {
            out.push_str("verdict: PASS");
        } else {
            let _ = write!(out, "verdict: FAIL\n  - {}", reasons.join("\n  - "));
        }
        out
    }

    pub fn markdown(&self) -> String {
        let s = &self.settings;
        let classes = self.classes();
        let reasons = self.verdict();
        let mut md = String::new();
        let _ = writeln!(md, "# Soak report\n");
        let _ = writeln!(
            md,
            "`cargo xtask soak --duration {}`, started {}: **{}**\n",
            humantime::format_duration(s.duration),
            self.started,
            if reasons.is_empty() { "PASS" } else { "FAIL" }
        );
        if !reasons.is_empty() {
            for r in &reasons {
                let _ = writeln!(md, "- {r}");
            }
            md.push('\n');
        }

        let _ = writeln!(md, "## Settings\n");
        md.push_str(&table(
            &["setting", "value"],
            vec![
                row(["regions", &s.regions.join(", ")]),
                row([
                    "routers",
                    "two per region sharing the VIP over VRRP (priorities 150/100, 1 s adverts)",
                ]),
                row([
                    "build, eBPF",
                    &format!("{}, ebpf.mode = {}", s.build, s.ebpf),
                ]),
                row([
                    "warm-up, then soak",
                    &format!("{} s, then {} s", s.warmup.as_secs(), s.duration.as_secs()),
                ]),
                row([
                    "good traffic",
                    &format!(
                        "{} client threads, {} ms between a thread's requests, {} request shapes",
                        s.clients,
                        s.pace.as_millis(),
                        self.specs.len()
                    ),
                ]),
                row([
                    "router timeouts",
                    &format!(
                        "request_header {} s, request_body {} s, max_header_bytes {}",
                        s.limits.request_header.as_secs(),
                        s.limits.request_body.as_secs(),
                        s.limits.max_header_bytes
                    ),
                ]),
                row([
                    "fault reach",
                    &format!(
                        "in flight {} s before, detected within {} s, recovered within {} s",
                        s.bounds.in_flight.as_secs(),
                        s.bounds.detect.as_secs_f64(),
                        s.bounds.recover.as_secs_f64()
                    ),
                ]),
                row([
                    "resource tolerance",
                    &format!(
                        "RSS ≤ baseline + max({:.0} %, {} MiB); fds ≤ baseline + {}",
                        s.tolerance.rss_share * 100.0,
                        s.tolerance.rss_floor_kib / 1024,
                        s.tolerance.fd_slack
                    ),
                ]),
                row([
                    "settled after",
                    &format!("{:.1} s", self.settled_after.as_secs_f64()),
                ]),
            ],
        ));
        let _ = writeln!(
            md,
            "\nConfig settings added to the lab's (`config/Region*.toml` with the lab overrides):\n\n```toml\n{}\n```\n",
            s.soak_settings
        );

        let _ = writeln!(md, "## How a good request is judged\n");
        let b = &s.bounds;
        let _ = writeln!(
            md,
            "- Served by a region its scope names, at the first try (a later `A|B` alternative \
             counts).\n\
             - Allowed: the router's fast JSON 503 (`x-scope-router-health: down`) while every \
             region of the scope was dead for it: from {in_flight} s before a fault until \
             {recover} s after it ended.\n\
             - Allowed: a router's JSON 504, or its 502 for a connection the backend broke, for a \
             request sent from {in_flight} s before a fault to {detect} s after it began (sent into \
             a backend that would never answer). A 502 for a refused connection never is.\n\
             - VRRP failover: connections to the killed master are lost; the client retries on \
             new connections (any method while connecting fails, a GET also when its connection \
             died unanswered; up to 12 s) and such a request counts as *retried across \
             failover*; a POST whose connection died with the master is *lost with the killed \
             master*. Both only for requests entering that region from {in_flight} s before the \
             kill to {recover} s after the backup served.\n\
             - A reused keep-alive connection closed before any byte of the answer is retried \
             once (GET), allowed only around the restart or the failover.\n\
             - Anything else fails the soak.\n",
            in_flight = b.in_flight.as_secs(),
            detect = b.detect.as_secs_f64(),
            recover = b.recover.as_secs_f64(),
        );

        let _ = writeln!(md, "## Good traffic\n");
        let mut totals: BTreeMap<String, u64> = BTreeMap::new();
        for c in &classes {
            *totals.entry(c.label()).or_default() += 1;
        }
        let span = self
            .records
            .last()
            .map(|r| r.sent)
            .unwrap_or_default()
            .saturating_sub(self.records.first().map(|r| r.sent).unwrap_or_default());
        let _ = writeln!(
            md,
            "{} requests in {:.0} s ({:.0}/s), every one judged by the rules of README *Soak it*:\n",
            self.records.len(),
            span.as_secs_f64(),
            self.records.len() as f64 / span.as_secs_f64().max(1.0)
        );
        md.push_str(&table(
            &["outcome", "requests"],
            totals
                .iter()
                .map(|(k, n)| row([k.as_str(), &n.to_string()]))
                .collect(),
        ));
        md.push('\n');

        // Per traffic class: scope kind × source.
        let _ = writeln!(
            md,
            "\nBy traffic class (latency of requests served at the first try):\n"
        );
        let mut by_class: BTreeMap<(ScopeKind, Source), Vec<(usize, &Class)>> = BTreeMap::new();
        for (i, (r, c)) in self.records.iter().zip(&classes).enumerate() {
            let spec = &self.specs[r.spec];
            by_class
                .entry((spec.kind, spec.source))
                .or_default()
                .push((i, c));
        }
        md.push_str(&table(
            &[
                "scope",
                "via",
                "requests",
                "served",
                "by alternative",
                "allowed failures",
                "failed",
                "p50",
                "p90",
                "p99",
                "max",
            ],
            by_class
                .iter()
                .map(|((kind, source), items)| {
                    let lat = self.latencies(items.iter().map(|(i, c)| (*i, *c)));
                    let mut row = vec![kind.label().to_owned(), source.label().to_owned()];
                    row.extend(counts_row(items.iter().map(|(_, c)| *c)));
                    row.extend(lat);
                    row
                })
                .collect(),
        ));

        let _ = writeln!(
            md,
            "\nBy scope (region entered → regions the scope names):\n"
        );
        let mut by_route: BTreeMap<String, Vec<&Class>> = BTreeMap::new();
        for (r, c) in self.records.iter().zip(&classes) {
            by_route
                .entry(self.specs[r.spec].route(&s.regions))
                .or_default()
                .push(c);
        }
        md.push_str(&table(
            &[
                "scope",
                "requests",
                "served",
                "by alternative",
                "allowed failures",
                "failed",
            ],
            by_route
                .iter()
                .map(|(route, items)| {
                    let mut row = vec![route.clone()];
                    row.extend(counts_row(items.iter().copied()));
                    row
                })
                .collect(),
        ));

        let _ = writeln!(md, "\nBy listener:\n");
        let mut by_listener: BTreeMap<String, Vec<&Class>> = BTreeMap::new();
        for (r, c) in self.records.iter().zip(&classes) {
            let spec = &self.specs[r.spec];
            by_listener
                .entry(format!("{} {}", s.regions[spec.entry], spec.addr))
                .or_default()
                .push(c);
        }
        md.push_str(&table(
            &[
                "listener",
                "requests",
                "served",
                "by alternative",
                "allowed failures",
                "failed",
            ],
            by_listener
                .iter()
                .map(|(l, items)| {
                    let mut row = vec![l.clone()];
                    row.extend(counts_row(items.iter().copied()));
                    row
                })
                .collect(),
        ));

        let _ = writeln!(md, "\n## Faults and lifecycle events\n");
        md.push_str(&table(
            &["at", "event", "result"],
            self.events
                .iter()
                .map(|e| {
                    row([
                        self.secs(e.at).as_str(),
                        &e.what,
                        &if e.ok {
                            e.detail.clone()
                        } else {
                            format!("**FAILED**: {}", e.detail)
                        },
                    ])
                })
                .collect(),
        ));
        let _ = writeln!(
            md,
            "\nGood requests each fault reached (sent from {} s before it until {} s after it ended):\n",
            s.bounds.in_flight.as_secs(),
            s.bounds.recover.as_secs_f64()
        );
        md.push_str(&table(
            &["fault", "from", "to", "requests", "served", "by alternative", "fast 503", "caught at onset", "retried", "failed"],
            self.windows
                .iter()
                .enumerate()
                .map(|(wi, w)| {
                    let touched: Vec<&Class> = self
                        .records
                        .iter()
                        .zip(&classes)
                        .filter(|(r, _)| w.touches(&self.specs[r.spec], r.sent, &s.bounds))
                        .map(|(_, c)| c)
                        .collect();
                    let n = |f: &dyn Fn(&Class) -> bool| touched.iter().filter(|c| f(c)).count().to_string();
                    vec![
                        w.label.clone(),
                        self.secs(w.start),
                        self.secs(w.end),
                        touched.len().to_string(),
                        n(&|c| *c == Class::Served),
                        n(&|c| *c == Class::ServedByAlternative),
                        n(&|c| *c == Class::DeadTarget503(wi)),
                        n(&|c| *c == Class::CaughtAtOnset(wi)),
                        n(&|c| matches!(c, Class::RetriedStale(x) | Class::RetriedAcrossFailover(x) | Class::LostWithMaster(x) if *x == wi)),
                        n(&|c| !c.allowed()),
                    ]
                })
                .collect(),
        ));
        let retried: Vec<&Record> = self
            .records
            .iter()
            .zip(&classes)
            .filter(|(_, c)| matches!(c, Class::RetriedAcrossFailover(_) | Class::RetriedStale(_)))
            .map(|(r, _)| r)
            .collect();
        if !retried.is_empty() {
            let attempts: usize = retried.iter().map(|r| r.failures.len()).sum();
            let longest = retried.iter().map(|r| r.took).max().unwrap_or_default();
            let _ = writeln!(
                md,
                "\nRetried by the client and then served: {} requests, after {} failed attempts in all; the longest was served {:.1} s after it was first sent.",
                retried.len(),
                attempts,
                longest.as_secs_f64()
            );
        }
        for e in &self.exits {
            let _ = writeln!(md, "\n{e}.");
        }

        let _ = writeln!(md, "\n## Hostile clients\n");
        let judged = self.judged();
        let mut by_kind: BTreeMap<Kind, Vec<(&HostileRecord, &Judged)>> = BTreeMap::new();
        for (r, j) in self.hostile.iter().zip(&judged) {
            by_kind.entry(r.kind).or_default().push((r, j));
        }
        md.push_str(&table(
            &[
                "client",
                "attempts",
                "as expected",
                "excused (failover/restart)",
                "unexpected",
                "expected",
                "seen",
            ],
            Kind::ALL
                .iter()
                .map(|k| {
                    let items = by_kind.get(k).map(Vec::as_slice).unwrap_or(&[]);
                    let n = |j: Judged| items.iter().filter(|(_, x)| **x == j).count().to_string();
                    vec![
                        k.label().to_owned(),
                        items.len().to_string(),
                        n(Judged::Expected),
                        n(Judged::Excused),
                        n(Judged::Unexpected),
                        k.expectation(&s.limits),
                        seen_summary(items.iter().map(|(r, _)| *r)),
                    ]
                })
                .collect(),
        ));
        let variants: BTreeMap<(&str, String), u64> = self
            .hostile
            .iter()
            .filter(|r| !r.variant.is_empty())
            .fold(BTreeMap::new(), |mut m, r| {
                *m.entry((r.variant, seen_label(&r.seen))).or_default() += 1;
                m
            });
        if !variants.is_empty() {
            let _ = writeln!(md, "\nBy variant:\n");
            md.push_str(&table(
                &["variant", "answer", "times"],
                variants
                    .iter()
                    .map(|((v, seen), n)| row([*v, seen.as_str(), &n.to_string()]))
                    .collect(),
            ));
        }

        let _ = writeln!(md, "\n## Memory and file descriptors\n");
        let _ = writeln!(
            md,
            "Baseline: after the warm-up, clients paused {} s. End: every client stopped, then settled. A role follows its router across the restart and the failover (the new master is held to the old master's baseline).\n",
            s.settle.as_secs()
        );
        md.push_str(&table(
            &[
                "router",
                "pid (baseline → end)",
                "RSS baseline",
                "RSS peak",
                "RSS end",
                "RSS limit",
                "fds baseline",
                "fds end",
                "fds limit",
                "verdict",
            ],
            self.resources
                .iter()
                .map(|r| {
                    let kib = |k: u64| format!("{:.1} MiB", k as f64 / 1024.0);
                    let base = r.baseline;
                    let t = &s.tolerance;
                    let verdict = match (base, r.end) {
                        (Some(b), Some(e)) => {
                            let x = t.excess(&b, &e);
                            if x.is_empty() {
                                "back to baseline".to_owned()
                            } else {
                                format!("**{}**", x.join("; "))
                            }
                        }
                        (Some(_), None) if r.pid.is_none() => r.note.clone(),
                        _ => "**not sampled**".into(),
                    };
                    vec![
                        r.label.clone(),
                        format!(
                            "{} → {}",
                            r.baseline_pid,
                            r.pid.map_or("-".into(), |p| p.to_string())
                        ),
                        base.map_or("-".into(), |b| kib(b.rss_kib)),
                        kib(r.peak_kib),
                        r.end.map_or("-".into(), |e| kib(e.rss_kib)),
                        base.map_or("-".into(), |b| kib(t.rss_limit(&b))),
                        base.map_or("-".into(), |b| b.fds.to_string()),
                        r.end.map_or("-".into(), |e| e.fds.to_string()),
                        base.map_or("-".into(), |b| t.fd_limit(&b).to_string()),
                        verdict,
                    ]
                })
                .collect(),
        ));
        let notes: Vec<&RoleResources> = self
            .resources
            .iter()
            .filter(|r| !r.note.is_empty())
            .collect();
        for r in notes {
            let _ = writeln!(md, "\n{}: {}.", r.label, r.note);
        }

        let _ = writeln!(
            md,
            "\n## Router counters (`/metrics` at the end, or just before a router was killed)\n"
        );
        md.push_str(&table(
            &[
                "router",
                "VRRP",
                "requests by class",
                "router errors by status",
                "A|B failovers",
                "pool retries",
                "redispatches",
                "open client connections",
            ],
            self.counters
                .iter()
                .map(|(name, c)| match &c.error {
                    Some(e) => vec![
                        name.clone(),
                        format!("scrape failed: {e}"),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                        String::new(),
                    ],
                    None => vec![
                        name.clone(),
                        c.vrrp.clone().unwrap_or_else(|| "-".into()),
                        join_counts(&c.requests),
                        join_counts(&c.errors),
                        c.failovers.to_string(),
                        c.retries.to_string(),
                        c.redispatches.to_string(),
                        c.open_connections.to_string(),
                    ],
                })
                .collect(),
        ));

        let _ = writeln!(md, "\n## Crashes\n");
        if self.crashes.is_empty() {
            let _ = writeln!(
                md,
                "None: every router and backend the soak did not stop on purpose ran to the end."
            );
        } else {
            for c in &self.crashes {
                let _ = writeln!(md, "```text\n{c}\n```");
            }
        }

        let failures: Vec<(&Record, &Class)> = self
            .records
            .iter()
            .zip(&classes)
            .filter(|(_, c)| !c.allowed())
            .collect();
        if !failures.is_empty() {
            let _ = writeln!(
                md,
                "\n## Failed good requests (first 30 of {})\n",
                failures.len()
            );
            md.push_str(&table(
                &[
                    "sent",
                    "request",
                    "scope",
                    "outcome",
                    "attempts before",
                    "took",
                ],
                failures
                    .iter()
                    .take(30)
                    .map(|(r, c)| {
                        let spec = &self.specs[r.spec];
                        vec![
                            self.secs(r.sent),
                            self.shape(spec),
                            spec.route(&s.regions),
                            format!("{} ({})", c.label(), outcome_label(&r.outcome)),
                            r.failures
                                .iter()
                                .map(|(t, reused)| {
                                    format!(
                                        "{}{}",
                                        t.label(),
                                        if *reused { " (reused)" } else { "" }
                                    )
                                })
                                .collect::<Vec<_>>()
                                .join(", "),
                            format!("{:.2} s", r.took.as_secs_f64()),
                        ]
                    })
                    .collect(),
            ));
        }
        md
    }

    /// p50, p90, p99 and max of the first-try served requests among `items`.
    fn latencies<'a>(&self, items: impl Iterator<Item = (usize, &'a Class)>) -> Vec<String> {
        let mut took: Vec<Duration> = items
            .filter(|(i, c)| {
                matches!(c, Class::Served | Class::ServedByAlternative)
                    && self.records[*i].failures.is_empty()
            })
            .map(|(i, _)| self.records[i].took)
            .collect();
        took.sort();
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        [0.50, 0.90, 0.99, 1.0]
            .iter()
            .map(|q| percentile(&took, *q).map_or("-".into(), ms))
            .collect()
    }

    pub fn json(&self) -> String {
        let s = &self.settings;
        let classes = self.classes();
        let mut outcomes: BTreeMap<String, u64> = BTreeMap::new();
        for c in &classes {
            *outcomes.entry(c.label()).or_default() += 1;
        }
        let mut took: Vec<Duration> = self
            .records
            .iter()
            .zip(&classes)
            .filter(|(r, c)| {
                matches!(c, Class::Served | Class::ServedByAlternative) && r.failures.is_empty()
            })
            .map(|(r, _)| r.took)
            .collect();
        took.sort();
        let ms = |q: f64| percentile(&took, q).map(|d| d.as_secs_f64() * 1000.0);
        let judged = self.judged();
        let mut hostile: BTreeMap<&str, Value> = BTreeMap::new();
        for k in Kind::ALL {
            let items: Vec<&Judged> = self
                .hostile
                .iter()
                .zip(&judged)
                .filter(|(r, _)| r.kind == k)
                .map(|(_, j)| j)
                .collect();
            let n = |j: Judged| items.iter().filter(|x| ***x == j).count();
            hostile.insert(
                k.label(),
                json!({"attempts": items.len(), "expected": n(Judged::Expected), "excused": n(Judged::Excused), "unexpected": n(Judged::Unexpected)}),
            );
        }
        let verdict = self.verdict();
        let doc = json!({
            "started": self.started,
            "pass": verdict.is_empty(),
            "reasons": verdict,
            "settings": {
                "duration_s": s.duration.as_secs(),
                "warmup_s": s.warmup.as_secs(),
                "clients": s.clients,
                "pace_ms": s.pace.as_millis() as u64,
                "build": s.build,
                "ebpf": s.ebpf,
                "regions": s.regions,
                "request_header_s": s.limits.request_header.as_secs_f64(),
                "request_body_s": s.limits.request_body.as_secs_f64(),
                "max_header_bytes": s.limits.max_header_bytes,
                "in_flight_s": s.bounds.in_flight.as_secs_f64(),
                "detect_s": s.bounds.detect.as_secs_f64(),
                "recover_s": s.bounds.recover.as_secs_f64(),
                "rss_tolerance_share": s.tolerance.rss_share,
                "rss_tolerance_floor_kib": s.tolerance.rss_floor_kib,
                "fd_tolerance": s.tolerance.fd_slack,
            },
            "good": {
                "requests": self.records.len(),
                "outcomes": outcomes,
                "latency_ms": {"p50": ms(0.5), "p90": ms(0.9), "p99": ms(0.99), "max": ms(1.0)},
            },
            "hostile": hostile,
            "events": self.events.iter().map(|e| json!({"at_s": e.at.as_secs_f64() - self.main_start.as_secs_f64(), "what": e.what, "ok": e.ok, "detail": e.detail})).collect::<Vec<_>>(),
            "resources": self.resources.iter().map(|r| json!({
                "role": r.label,
                "baseline_pid": r.baseline_pid,
                "end_pid": r.pid,
                "baseline_rss_kib": r.baseline.map(|b| b.rss_kib),
                "baseline_fds": r.baseline.map(|b| b.fds),
                "peak_rss_kib": r.peak_kib,
                "end_rss_kib": r.end.map(|e| e.rss_kib),
                "end_fds": r.end.map(|e| e.fds),
                "note": r.note,
            })).collect::<Vec<_>>(),
            "crashes": self.crashes,
            "counters": self.counters.iter().map(|(name, c)| json!({
                "router": name, "vrrp": c.vrrp, "requests": c.requests, "errors": c.errors,
                "failovers": c.failovers, "retries": c.retries, "redispatches": c.redispatches,
                "open_connections": c.open_connections, "error": c.error,
            })).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&doc).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }
}

fn resources_line(r: &RoleResources) -> String {
    match (r.baseline, r.end) {
        (Some(b), Some(e)) => format!(
            "RSS {:.1} → {:.1} MiB (peak {:.1}), fds {} → {}",
            b.rss_kib as f64 / 1024.0,
            e.rss_kib as f64 / 1024.0,
            r.peak_kib as f64 / 1024.0,
            b.fds,
            e.fds
        ),
        _ => r.note.clone(),
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Option<Duration> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    Some(sorted[rank - 1])
}

/// requests, served, by alternative, allowed failures, failed.
fn counts_row<'a>(classes: impl Iterator<Item = &'a Class>) -> Vec<String> {
    let (mut n, mut served, mut alt, mut allowed, mut failed) = (0, 0, 0, 0, 0);
    for c in classes {
        n += 1;
        match c {
            Class::Served => served += 1,
            Class::ServedByAlternative => alt += 1,
            c if c.allowed() => allowed += 1,
            _ => failed += 1,
        }
    }
    [n, served, alt, allowed, failed]
        .map(|x: u64| x.to_string())
        .to_vec()
}

fn join_counts(m: &BTreeMap<String, u64>) -> String {
    if m.is_empty() {
        return "-".into();
    }
    m.iter()
        .map(|(k, n)| format!("{k}: {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn outcome_label(o: &classify::Outcome) -> String {
    match o {
        classify::Outcome::Served { region } => format!("served by region #{region}"),
        classify::Outcome::Misrouted {
            answered_by,
            status,
        } => format!("{status} from {answered_by}"),
        classify::Outcome::RouterError {
            status,
            down,
            message,
        } => format!(
            "router {status}{}: {}",
            if *down { " (health: down)" } else { "" },
            message.chars().take(120).collect::<String>()
        ),
        classify::Outcome::Other { status, detail } => format!("{status}: {detail}"),
        classify::Outcome::Transport(t) => t.label().into(),
    }
}

fn seen_label(seen: &Seen) -> String {
    match seen {
        Seen::Answered {
            status,
            json,
            backend,
        } => format!(
            "{status}{}",
            if *backend {
                " from a backend"
            } else if *json {
                " JSON"
            } else {
                " (not JSON)"
            }
        ),
        Seen::Cut {
            status: Some(s), ..
        } => format!("cut after answering {s}"),
        Seen::Cut { status: None, .. } => "cut".into(),
        Seen::NotCut { .. } => "not cut".into(),
        Seen::Abandoned => "abandoned".into(),
        Seen::Transport(t) => t.label().into(),
    }
}

/// Answers seen, with counts; for cuts, when they came (min / median / max).
fn seen_summary<'a>(records: impl Iterator<Item = &'a HostileRecord>) -> String {
    let mut labels: BTreeMap<String, u64> = BTreeMap::new();
    let mut cuts: Vec<Duration> = Vec::new();
    for r in records {
        *labels.entry(seen_label(&r.seen)).or_default() += 1;
        if let Seen::Cut { after, .. } = r.seen {
            cuts.push(after);
        }
    }
    let mut out = labels
        .iter()
        .map(|(k, n)| format!("{k} ×{n}"))
        .collect::<Vec<_>>()
        .join(", ");
    cuts.sort();
    if let (Some(min), Some(med), Some(max)) = (cuts.first(), percentile(&cuts, 0.5), cuts.last()) {
        let _ = write!(
            out,
            "; cut at {:.1} / {:.1} / {:.1} s (min / median / max)",
            min.as_secs_f64(),
            med.as_secs_f64(),
            max.as_secs_f64()
        );
    }
    out
}

fn row<const N: usize>(cells: [&str; N]) -> Vec<String> {
    cells.iter().map(|c| (*c).to_owned()).collect()
}

/// A markdown table; `|` in cells escaped.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let cell = |c: &str| c.replace('|', "\\|").replace('\n', " ");
    let mut out = format!(
        "| {} |\n",
        headers
            .iter()
            .map(|h| cell(h))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let _ = writeln!(out, "|{}", "---|".repeat(headers.len()));
    for r in rows {
        let _ = writeln!(
            out,
            "| {} |",
            r.iter().map(|c| cell(c)).collect::<Vec<_>>().join(" | ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddrV4};

    use super::*;
    use crate::soak::classify::{Fault, Outcome};
    use crate::soak::http::Transport;

    fn settings() -> Settings {
        Settings {
            duration: Duration::from_secs(90),
            warmup: Duration::from_secs(10),
            settle: Duration::from_secs(6),
            clients: 6,
            pace: Duration::from_millis(10),
            build: "debug".into(),
            ebpf: "auto".into(),
            regions: vec!["RegionOne".into(), "RegionTwo".into()],
            limits: Limits {
                request_header: Duration::from_secs(10),
                request_body: Duration::from_secs(5),
                max_header_bytes: 16384,
            },
            bounds: Bounds {
                in_flight: Duration::from_secs(2),
                detect: Duration::from_secs(8),
                recover: Duration::from_secs(8),
            },
            tolerance: Tolerance::default(),
            soak_settings: String::new(),
        }
    }

    fn spec(entry: usize, targets: &[usize]) -> Spec {
        Spec {
            entry,
            addr: SocketAddrV4::new(Ipv4Addr::new(192, 168, 142, 244), 9292),
            service_type: "image".into(),
            kind: ScopeKind::Remote,
            source: Source::XScope,
            targets: targets.to_vec(),
            names: Vec::new(),
            post: false,
            request: Vec::new(),
        }
    }

    fn record(spec: usize, sent: u64, outcome: Outcome) -> Record {
        Record {
            spec,
            sent: Duration::from_secs(sent),
            took: Duration::from_millis(2),
            outcome,
            failures: Vec::new(),
        }
    }

    fn passing() -> Report {
        let mut r = Report::new(settings(), vec![spec(0, &[1])]);
        r.records = vec![
            record(0, 1, Outcome::Served { region: 1 }),
            record(
                0,
                105,
                Outcome::RouterError {
                    status: 503,
                    down: true,
                    message: "Every server of RegionTwo_image_public is down".into(),
                },
            ),
        ];
        r.windows = vec![Window {
            fault: Fault::Backend {
                region: 1,
                service_types: vec!["image".into()],
                hung: false,
            },
            start: Duration::from_secs(100),
            end: Duration::from_secs(110),
            label: "kill RegionTwo's backend RegionTwo:9292".into(),
        }];
        let sample = Sample {
            rss_kib: 20_000,
            fds: 50,
        };
        r.resources = vec![RoleResources {
            label: "RegionOne master".into(),
            baseline_pid: 10,
            baseline: Some(sample),
            pid: Some(11),
            end: Some(Sample {
                rss_kib: 21_000,
                fds: 52,
            }),
            peak_kib: 30_000,
            note: "restarted: pid 10 → 11".into(),
        }];
        r.hostile = vec![HostileRecord {
            kind: Kind::Oversized,
            at: Duration::from_secs(3),
            entry: 0,
            variant: "head over max_header_bytes",
            seen: Seen::Answered {
                status: 431,
                json: true,
                backend: false,
            },
            want: Some(431),
        }];
        r
    }

    #[test]
    fn a_clean_run_passes_and_the_report_shows_its_figures() {
        let r = passing();
        assert_eq!(r.verdict(), Vec::<String>::new());
        let md = r.markdown();
        assert!(md.contains("**PASS**"), "{md}");
        assert!(
            md.contains("from 2 s before a fault until 8 s after it ended"),
            "{md}"
        );
        assert!(
            md.contains("| fast 503, every scope region dead (allowed) | 1 |"),
            "{md}"
        );
        assert!(
            md.contains("| kill RegionTwo's backend RegionTwo:9292 |"),
            "{md}"
        );
        assert!(
            md.contains("| RegionOne master | 10 → 11 | 19.5 MiB | 29.3 MiB | 20.5 MiB |"),
            "{md}"
        );
        assert!(
            md.contains("| head over max_header_bytes | 431 JSON | 1 |"),
            "{md}"
        );
        let json: Value = serde_json::from_str(&r.json()).expect("valid JSON");
        assert_eq!(json["pass"], true);
        assert_eq!(json["good"]["requests"], 2);
        assert_eq!(json["resources"][0]["end_pid"], 11);
        assert!(r.summary().ends_with("verdict: PASS"), "{}", r.summary());
    }

    #[test]
    fn each_kind_of_trouble_fails_the_verdict_with_its_reason() {
        let mut r = passing();
        r.records
            .push(record(0, 50, Outcome::Transport(Transport::Timeout)));
        let reasons = r.verdict();
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(
            reasons[0].contains("1 good request(s) failed: 1 no answer in time"),
            "{reasons:?}"
        );
        let md = r.markdown();
        assert!(
            md.contains("**FAIL**") && md.contains("## Failed good requests"),
            "{md}"
        );

        let mut r = passing();
        r.resources[0].end = Some(Sample {
            rss_kib: 40_000,
            fds: 52,
        });
        assert!(
            r.verdict()[0].contains("RegionOne master: not back to baseline: RSS 40000 KiB"),
            "{:?}",
            r.verdict()
        );

        let mut r = passing();
        r.hostile[0].seen = Seen::Answered {
            status: 200,
            json: false,
            backend: true,
        };
        assert!(
            r.verdict()[0].contains("hostile client got an unexpected answer 1×"),
            "{:?}",
            r.verdict()
        );

        let mut r = passing();
        r.crashes
            .push("scope-router RegionOne exited (signal 11)".into());
        assert!(r.verdict()[0].starts_with("crash: "), "{:?}", r.verdict());

        let mut r = passing();
        r.events.push(Event {
            at: Duration::from_secs(40),
            what: "reload RegionOne's master".into(),
            ok: false,
            detail: "exit 1".into(),
        });
        assert_eq!(r.verdict(), ["reload RegionOne's master failed: exit 1"]);

        let mut r = passing();
        r.specs.push(spec(1, &[0]));
        assert!(
            r.verdict()[0].contains("1 request shape(s) never served"),
            "{:?}",
            r.verdict()
        );
    }

    #[test]
    fn metrics_are_summed_by_label() {
        let text = "\
# HELP scope_router_requests_total Requests.
scope_router_requests_total{listener=\"a\",status_class=\"2xx\"} 10
scope_router_requests_total{listener=\"b\",status_class=\"2xx\"} 5
scope_router_requests_total{listener=\"b\",status_class=\"5xx\"} 2
scope_router_errors_total{listener=\"b\",kind=\"503\"} 2
scope_router_errors_total{listener=\"b\",kind=\"502\"} 0
scope_router_failovers_total{listener=\"b\"} 3
scope_router_client_connections{state=\"open\"} 4
scope_router_client_connections{state=\"parked\"} 1
scope_router_vrrp_state{vrid=\"51\",state=\"backup\"} 0
scope_router_vrrp_state{vrid=\"51\",state=\"master\"} 1
";
        let c = Counters::parse(text);
        assert_eq!(c.requests.get("2xx"), Some(&15));
        assert_eq!(c.requests.get("5xx"), Some(&2));
        assert_eq!(c.errors.len(), 1, "zero counts are left out");
        assert_eq!(c.failovers, 3);
        assert_eq!(c.open_connections, 4);
        assert_eq!(c.vrrp.as_deref(), Some("master"));
    }

    #[test]
    fn percentiles_take_the_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&d, 0.5), Some(Duration::from_millis(50)));
        assert_eq!(percentile(&d, 0.99), Some(Duration::from_millis(99)));
        assert_eq!(percentile(&d, 1.0), Some(Duration::from_millis(100)));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
