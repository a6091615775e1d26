//! What request metrics cost in scenarios a–c (issue 11: under 2 % of req/s), measured
//! with the router counting and not counting at the same time.
//!
//! Measured one after the other, two runs of the same build on a VM differ by up to
//! ±20 %: the rotated rounds once put the metrics-off router 25 % below and 6 % above the
//! metrics-on one, for metrics a micro-benchmark puts at about 20 ns a request. A 2 %
//! bound cannot be read from that. So two router sets, one with `[admin] metrics = true`
//! and one with `false`, share the proxy CPU while two wrk processes load them at once.
//! The scheduler shares that CPU evenly between two busy processes, so the ratio of their
//! req/s is the inverse ratio of their cost per request, and whatever the machine does
//! meanwhile hits both alike. Each round runs twice with the sets' addresses swapped:
//! being the second set is itself worth about 1 % (which wrk starts first), and the
//! geometric mean of the two ratios cancels that.

use std::path::Path;

use anyhow::{Context, Result, anyhow};

use super::netlab::{TWIN_VIP1, TWIN_VIP2, VIP1, VIP2};
use super::{
    BACKEND_IP, CLIENT, Env, Options, Proc, ROUTER, Run, Runs, frontend_catalog, load_headers,
    netlab, report, router_config, run_of_label, spawn_router, wrk,
};

/// The scenarios measured, as the issue names them.
pub(super) const SCENARIOS: &[&str] = &["a", "b", "c"];

/// The two router sets' frontends: RegionOne's, then RegionTwo's (scenario b's chain).
const SETS: [[(&str, &str); 2]; 2] = [
    [("RegionOne", VIP1), ("RegionTwo", VIP2)],
    [("RegionOne", TWIN_VIP1), ("RegionTwo", TWIN_VIP2)],
];

/// Runs per round: both sets, once with each counting.
pub(super) const RUNS_PER_ROUND: usize = 4;

/// The bound, as a share of req/s.
pub(super) const BOUND: f64 = 0.02;

/// The share of the proxy CPU both sets must keep busy for their req/s ratio to be their
/// cost ratio.
const MIN_BUSY: f64 = 0.9;

const ON: &str = "scope-router, metrics on (sharing CPU 0)";
const OFF: &str = "scope-router, metrics off (sharing CPU 0)";

/// The scenario name the pair's runs are kept under (their req/s is half a CPU's, so
/// they stay out of the scenario's own table).
fn scenario_key(scenario: &str) -> String {
    format!("{scenario}-metrics")
}

fn config_file(set: usize, region: &str, metrics: bool) -> String {
    let m = if metrics { "on" } else { "off" };
    format!("metrics-{m}-set{}-{region}.toml", set + 1)
}

/// Both sets' catalogs and their routers' configs, counting and not; each router its own
/// admin port, since all of them may run at once.
pub(super) fn write_configs(work: &Path) -> Result<()> {
    for (set, frontends) in SETS.iter().enumerate() {
        let catalog = format!("catalog-set{}.json", set + 1);
        report::write(
            &work.join(&catalog),
            &serde_json::to_string_pretty(&frontend_catalog(frontends))?,
        )?;
        for (i, (region, _)) in frontends.iter().enumerate() {
            let admin = format!("127.0.0.1:{}", 9111 + 2 * set + i);
            for metrics in [true, false] {
                report::write(
                    &work.join(config_file(set, region, metrics)),
                    &router_config(region, &catalog, BACKEND_IP, "off", &admin, metrics),
                )?;
            }
        }
    }
    Ok(())
}

/// One round in `scenario`: both sets at once, the first one counting, then the second.
pub(super) fn measure_round(
    env: &Env,
    opts: &Options,
    scenario: &str,
    round: u32,
    runs: &mut Runs,
) -> Result<()> {
    for counting in 0..2 {
        for run in run_pair(env, opts, scenario, round, counting)? {
            runs.record(run);
        }
    }
    Ok(())
}

/// Starts both sets (set `counting` with metrics), loads both at once, returns their runs.
fn run_pair(
    env: &Env,
    opts: &Options,
    scenario: &str,
    round: u32,
    counting: usize,
) -> Result<[Run; 2]> {
    let headers = load_headers(scenario, &[])?;
    let regions = if scenario == "b" { 2 } else { 1 };
    // Half the scenario's connections each: the same offered load as its other runs.
    let connections = (opts.connections / 2).max(1);
    let mut sets: Vec<Vec<Proc>> = Vec::new();
    for (set, frontends) in SETS.iter().enumerate() {
        let metrics = set == counting;
        let mut procs = Vec::new();
        for (region, _) in &frontends[..regions] {
            let log = env.work.join(format!(
                "{scenario}-{round}-metrics-{}-set{}-{region}.log",
                if metrics { "on" } else { "off" },
                set + 1
            ));
            procs.push(spawn_router(
                env,
                region,
                &config_file(set, region, metrics),
                Some(ROUTER),
                log,
            )?);
        }
        for ((_, vip), p) in frontends.iter().zip(procs.iter_mut()) {
            netlab::wait_listening(Some(CLIENT), &format!("{vip}:8774"), &mut [p])?;
        }
        sets.push(procs);
    }
    let urls = SETS.map(|f| format!("http://{}:8774/v2.1/servers", f[0].1));
    let both = |seconds: u64| -> Result<[report::Wrk; 2]> {
        std::thread::scope(|s| {
            let load = |url: &str| {
                let headers = &headers;
                let url = url.to_owned();
                s.spawn(move || wrk(Some(CLIENT), connections, &url, headers, seconds, None))
            };
            let (first, second) = (load(&urls[0]), load(&urls[1]));
            let join = |h: std::thread::ScopedJoinHandle<'_, Result<report::Wrk>>| {
                h.join().map_err(|_| anyhow!("a wrk thread panicked"))?
            };
            Ok([join(first)?, join(second)?])
        })
    };
    // Warm-up: connection pools and page cache, not measured.
    both(1).context("warming up the metrics-cost pair")?;
    let cpu0 = cpu_of(&sets)?;
    let loads = both(opts.duration).context("loading the metrics-cost pair")?;
    let cpu1 = cpu_of(&sets)?;
    for p in sets.iter_mut().flatten() {
        p.check_alive()?;
    }
    let run = |set: usize| {
        let w = &loads[set];
        let requests = w.requests_per_sec * opts.duration as f64;
        let label = if set == counting { ON } else { OFF };
        run_of_label(
            &scenario_key(scenario),
            label,
            round,
            &[
                ("rps", w.requests_per_sec),
                ("p50_ms", w.p50_ms),
                ("p99_ms", w.p99_ms),
                ("errors", w.errors as f64),
                ("set", (set + 1) as f64),
                (
                    "cpu_us_per_request",
                    (cpu1[set] - cpu0[set]) / requests.max(1.0) * 1e6,
                ),
                ("cpu_share", (cpu1[set] - cpu0[set]) / opts.duration as f64),
            ],
        )
    };
    Ok([run(0), run(1)])
}

/// CPU seconds so far of each set's routers.
fn cpu_of(sets: &[Vec<Proc>]) -> Result<[f64; 2]> {
    let mut out = [0.0; 2];
    for (o, procs) in out.iter_mut().zip(sets) {
        *o = procs.iter().map(Proc::cpu_seconds).sum::<Result<f64>>()?;
    }
    Ok(out)
}

/// What metrics cost in one scenario, from its rounds.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Cost {
    /// Per round: 1 − (req/s with ÷ req/s without), geometric mean over the swap.
    pub rounds: Vec<f64>,
    /// The median of `rounds`.
    pub median: f64,
    /// The median over rounds of (CPU per request with ÷ without) − 1.
    pub cpu_median: f64,
    /// The median over runs of the share of the proxy CPU both sets used together: the
    /// method holds only when they kept it busy (near 1).
    pub busy: f64,
}

/// The cost in `scenario`, from the rounds that have all four runs.
pub(super) fn cost(runs: &[Run], scenario: &str) -> Option<Cost> {
    let key = scenario_key(scenario);
    let mut rounds = Vec::new();
    let mut cpu = Vec::new();
    let mut busy = Vec::new();
    let last = runs.iter().map(|r| r.round).max()?;
    for round in 1..=last {
        let of = |label: &str, set: f64, metric: &str| {
            runs.iter()
                .find(|r| {
                    r.scenario == key
                        && r.round == round
                        && r.target == label
                        && r.metrics.get("set") == Some(&set)
                })
                .and_then(|r| r.metrics.get(metric).copied())
        };
        // The ratio of each swap, then their geometric mean.
        let ratio = |metric: &str| -> Option<f64> {
            let first = of(ON, 1.0, metric)? / of(OFF, 2.0, metric)?;
            let second = of(ON, 2.0, metric)? / of(OFF, 1.0, metric)?;
            Some((first * second).sqrt())
        };
        if let (Some(rps), Some(c)) = (ratio("rps"), ratio("cpu_us_per_request")) {
            rounds.push(1.0 - rps);
            cpu.push(c - 1.0);
            for (on, off) in [(1.0, 2.0), (2.0, 1.0)] {
                if let (Some(a), Some(b)) = (of(ON, on, "cpu_share"), of(OFF, off, "cpu_share")) {
                    busy.push(a + b);
                }
            }
        }
    }
    let median = report::median(&mut rounds.clone())?;
    let cpu_median = report::median(&mut cpu)?;
    let busy = report::median(&mut busy).unwrap_or(f64::NAN);
    Some(Cost {
        rounds,
        median,
        cpu_median,
        busy,
    })
}

/// The report's section: one row per scenario measured.
pub(super) fn markdown(runs: &[Run]) -> String {
    let rows: Vec<(&str, Cost)> = SCENARIOS
        .iter()
        .filter_map(|s| cost(runs, s).map(|c| (*s, c)))
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let mut out = String::from(
        "### Request metrics cost (a–c): with and without, both at once on CPU 0\n\n\
         Two router sets share the proxy CPU, one with `[admin] metrics = true` and one \
         with `false`, each loaded by its own wrk; every round runs twice with the sets \
         swapped. Cost = 1 − req/s with ÷ req/s without (geometric mean of the swap); \
         negative: the counting router served more.\n\n\
         | scenario | cost per round | median cost | CPU per request, with ÷ without − 1 | CPU 0 busy |\n\
         |---|---|---|---|---|\n",
    );
    for (s, c) in rows {
        let per_round: Vec<String> = c.rounds.iter().map(|r| pct(*r)).collect();
        out.push_str(&format!(
            "| ({s}) | {} | {} | {} | {:.0} % |\n",
            per_round.join(", "),
            pct(c.median),
            pct(c.cpu_median),
            c.busy * 100.0
        ));
    }
    out
}

/// The JSON report's `metrics_cost`: per scenario, the rounds' costs and their medians.
pub(super) fn json(runs: &[Run]) -> serde_json::Value {
    SCENARIOS
        .iter()
        .filter_map(|s| {
            let c = cost(runs, s)?;
            Some((
                (*s).to_owned(),
                serde_json::json!({
                    "rounds": c.rounds, "median": c.median, "cpu_per_request_median": c.cpu_median,
                    "cpu0_busy": c.busy,
                    "bound": BOUND, "met": c.median < BOUND,
                }),
            ))
        })
        .collect::<serde_json::Map<_, _>>()
        .into()
}

fn pct(share: f64) -> String {
    format!("{:+.2} %", share * 100.0)
}

/// The check line for `scenario`, when it was measured.
pub(super) fn check(runs: &[Run], scenario: &str) -> Option<String> {
    let c = cost(runs, scenario)?;
    let verdict = if c.busy < MIN_BUSY {
        // Not sharing a saturated CPU, the two sets' req/s follow the clients instead.
        format!(
            "NOT shown: CPU 0 was {:.0} % busy, under {:.0} %",
            c.busy * 100.0,
            MIN_BUSY * 100.0
        )
    } else if c.median < BOUND {
        "met".to_owned()
    } else {
        "NOT met".to_owned()
    };
    Some(format!(
        "({scenario}) request metrics cost < {:.0} % of req/s (both at once, swapped): {} median over {} rounds (CPU per request {}) — {verdict}",
        BOUND * 100.0,
        pct(c.median),
        c.rounds.len(),
        pct(c.cpu_median),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(label: &str, round: u32, set: f64, rps: f64, cpu: f64) -> Run {
        run_of_label(
            &scenario_key("a"),
            label,
            round,
            &[
                ("rps", rps),
                ("set", set),
                ("cpu_us_per_request", cpu),
                ("cpu_share", 0.49),
            ],
        )
    }

    #[test]
    fn the_swap_cancels_what_the_position_is_worth() {
        // Set 2 serves 10 % more whatever it runs; counting costs 1 %.
        let runs = vec![
            run(ON, 1, 1.0, 990.0, 10.1),
            run(OFF, 1, 2.0, 1100.0, 9.0),
            run(OFF, 1, 1.0, 1000.0, 10.0),
            run(ON, 1, 2.0, 1089.0, 9.09),
        ];
        let c = cost(&runs, "a").expect("a complete round");
        assert_eq!(c.rounds.len(), 1);
        assert!((c.median - 0.01).abs() < 1e-9, "{c:?}");
        assert!((c.cpu_median - 0.01).abs() < 1e-3, "{c:?}");
        assert!((c.busy - 0.98).abs() < 1e-9, "{c:?}");
        let line = check(&runs, "a").unwrap();
        assert!(
            line.contains("+1.00 %") && line.ends_with("— met"),
            "{line}"
        );
    }

    #[test]
    fn a_cost_over_the_bound_is_not_met_and_incomplete_rounds_are_left_out() {
        let mut runs = vec![
            run(ON, 1, 1.0, 950.0, 10.5),
            run(OFF, 1, 2.0, 1000.0, 10.0),
            run(OFF, 1, 1.0, 1000.0, 10.0),
            run(ON, 1, 2.0, 950.0, 10.5),
            // Round 2 lost its second half.
            run(ON, 2, 1.0, 1000.0, 10.0),
            run(OFF, 2, 2.0, 1000.0, 10.0),
        ];
        let c = cost(&runs, "a").unwrap();
        assert_eq!(c.rounds.len(), 1, "{c:?}");
        assert!((c.median - 0.05).abs() < 1e-9, "{c:?}");
        assert!(check(&runs, "a").unwrap().ends_with("— NOT met"));
        // Sets that left the CPU idle say nothing about their cost.
        for r in &mut runs {
            r.metrics.insert("cpu_share".into(), 0.3);
        }
        let line = check(&runs, "a").unwrap();
        assert!(
            line.ends_with("NOT shown: CPU 0 was 60 % busy, under 90 %"),
            "{line}"
        );
        assert_eq!(cost(&runs, "b"), None);
        runs.clear();
        assert_eq!(markdown(&runs), "");
    }

    #[test]
    fn every_router_of_both_sets_has_its_own_config_and_admin_port() {
        let dir = tempfile::tempdir().unwrap();
        write_configs(dir.path()).unwrap();
        let mut admins = std::collections::BTreeSet::new();
        for (set, frontends) in SETS.iter().enumerate() {
            let catalog =
                std::fs::read_to_string(dir.path().join(format!("catalog-set{}.json", set + 1)))
                    .unwrap();
            for (region, vip) in frontends {
                assert!(catalog.contains(&format!("http://{vip}:8774")), "{catalog}");
                for metrics in [true, false] {
                    let text =
                        std::fs::read_to_string(dir.path().join(config_file(set, region, metrics)))
                            .unwrap();
                    let config: toml::Table = text.parse().unwrap();
                    assert_eq!(config["region"].as_str(), Some(*region));
                    assert_eq!(config["admin"]["metrics"].as_bool(), Some(metrics));
                    admins.insert(config["admin"]["bind"][0].as_str().unwrap().to_owned());
                }
            }
        }
        // Four routers can run at once (scenario b): four admin addresses.
        assert_eq!(admins.len(), 4, "{admins:?}");
    }
}
