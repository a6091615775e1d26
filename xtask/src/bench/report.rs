//! Benchmark results: wrk output parsing, medians over rounds, and the terminal table,
//! Markdown and JSON renderings (`target/bench/report.{md,json}`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::{Context, Result, anyhow};
use serde_json::{Value, json};

/// What one wrk run reported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wrk {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Socket errors + non-2xx/3xx responses.
    pub errors: u64,
}

/// Parses `wrk --latency` output.
pub fn parse_wrk(text: &str) -> Result<Wrk> {
    let rps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .ok_or_else(|| anyhow!("no `Requests/sec:` in wrk output:\n{text}"))?;
    let percentile = |p: &str| -> Result<f64> {
        text.lines()
            .find_map(|l| {
                let mut words = l.split_whitespace();
                (words.next() == Some(p)).then(|| words.next()).flatten()
            })
            .and_then(duration_ms)
            .ok_or_else(|| anyhow!("no {p} latency in wrk output (was --latency given?)"))
    };
    let mut errors = 0;
    for l in text.lines() {
        let l = l.trim();
        if let Some(rest) = l.strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(rest) = l.strip_prefix("Socket errors:") {
            // "connect 0, read 0, write 0, timeout 0"
            errors += rest
                .split(',')
                .filter_map(|kv| kv.split_whitespace().nth(1)?.parse::<u64>().ok())
                .sum::<u64>();
        }
    }
    Ok(Wrk {
        requests_per_sec: rps,
        p50_ms: percentile("50%")?,
        p99_ms: percentile("99%")?,
        errors,
    })
}

/// `635.00us`, `2.50ms`, `1.02s`, `1.00m` → milliseconds.
fn duration_ms(v: &str) -> Option<f64> {
    let split = v.find(|c: char| c.is_ascii_alphabetic())?;
    let (n, unit) = v.split_at(split);
    let n: f64 = n.parse().ok()?;
    Some(match unit {
        "us" => n / 1000.0,
        "ms" => n,
        "s" => n * 1000.0,
        "m" => n * 60_000.0,
        _ => return None,
    })
}

pub fn median(values: &mut [f64]) -> Option<f64> {
    if values.is_empty() {
        return None;
    }
    values.sort_by(|a, b| a.total_cmp(b));
    let n = values.len();
    Some(if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    })
}

/// One measured run: a target in a scenario in a round, with named metrics.
#[derive(Debug, Clone)]
pub struct Run {
    pub scenario: String,
    pub target: String,
    pub round: u32,
    pub metrics: BTreeMap<String, f64>,
}

/// A scenario's table: which metrics to show and how.
pub struct Layout {
    pub scenario: &'static str,
    pub title: &'static str,
    /// (metric key, column header, decimals)
    pub columns: &'static [(&'static str, &'static str, usize)],
    /// Metric the ratios are computed on (higher is better), if any.
    pub ratio_on: Option<&'static str>,
}

/// Medians per (scenario, target, metric), in first-seen target order.
pub fn medians(runs: &[Run], scenario: &str) -> Vec<(String, BTreeMap<String, f64>)> {
    let mut targets: Vec<String> = Vec::new();
    for r in runs.iter().filter(|r| r.scenario == scenario) {
        if !targets.contains(&r.target) {
            targets.push(r.target.clone());
        }
    }
    targets
        .into_iter()
        .map(|t| {
            let mut per_metric: BTreeMap<String, Vec<f64>> = BTreeMap::new();
            for r in runs
                .iter()
                .filter(|r| r.scenario == scenario && r.target == t)
            {
                for (k, v) in &r.metrics {
                    per_metric.entry(k.clone()).or_default().push(*v);
                }
            }
            let med = per_metric
                .into_iter()
                .filter_map(|(k, mut v)| median(&mut v).map(|m| (k, m)))
                .collect();
            (t, med)
        })
        .collect()
}

pub const HAPROXY_LUA: &str = "haproxy+lua";
pub const CEILING: &str = "direct (ceiling)";

/// Markdown table of one scenario (also printed on the terminal).
pub fn markdown_table(runs: &[Run], layout: &Layout) -> String {
    let rows = medians(runs, layout.scenario);
    let mut out = String::new();
    let _ = writeln!(out, "### {}\n", layout.title);
    if rows.is_empty() {
        out.push_str("_not measured_\n");
        return out;
    }
    let mut header = vec!["target".to_owned()];
    header.extend(layout.columns.iter().map(|(_, h, _)| (*h).to_owned()));
    if layout.ratio_on.is_some() {
        header.push("vs HAProxy+Lua".to_owned());
        header.push("vs ceiling".to_owned());
    }
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    let base = |name: &str, key: &str| {
        rows.iter()
            .find(|(t, _)| t == name)
            .and_then(|(_, m)| m.get(key).copied())
    };
    for (target, m) in &rows {
        let mut cells = vec![target.clone()];
        for (key, _, decimals) in layout.columns {
            cells.push(match m.get(*key) {
                Some(v) => format!("{v:.decimals$}"),
                None => "–".to_owned(),
            });
        }
        if let Some(key) = layout.ratio_on {
            for b in [HAPROXY_LUA, CEILING] {
                cells.push(match (m.get(key), base(b, key)) {
                    (Some(v), Some(b)) if b > 0.0 => format!("{:.2}×", v / b),
                    _ => "–".to_owned(),
                });
            }
        }
        let _ = writeln!(out, "| {} |", cells.join(" | "));
    }
    out
}

/// The JSON report: every run plus the medians.
pub fn json_report(runs: &[Run], layouts: &[Layout], machine: &Value, settings: &Value) -> Value {
    let scenarios: Vec<Value> = layouts
        .iter()
        .map(|l| {
            let med: serde_json::Map<String, Value> = medians(runs, l.scenario)
                .into_iter()
                .map(|(t, m)| (t, json!(m)))
                .collect();
            json!({ "scenario": l.scenario, "title": l.title, "medians": med })
        })
        .collect();
    let all: Vec<Value> = runs
        .iter()
        .map(|r| json!({ "scenario": r.scenario, "target": r.target, "round": r.round, "metrics": r.metrics }))
        .collect();
    json!({ "machine": machine, "settings": settings, "scenarios": scenarios, "runs": all })
}

pub fn write(path: &std::path::Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WRK: &str = "Running 5s test @ http://10.77.1.100:8774/v2.1/servers
  1 threads and 50 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     1.10ms  300.00us   9.00ms   90.00%
  Latency Distribution
     50%  635.00us
     75%    1.00ms
     90%    1.50ms
     99%    2.50ms
  200000 requests in 5.00s, 30.00MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 4
Requests/sec:  40000.50
Transfer/sec:      6.00MB
";

    #[test]
    fn wrk_output_is_parsed() {
        let w = parse_wrk(WRK).expect("parses");
        assert_eq!(w.requests_per_sec, 40000.5);
        assert!((w.p50_ms - 0.635).abs() < 1e-9);
        assert_eq!(w.p99_ms, 2.5);
        assert_eq!(w.errors, 7);
        assert!(parse_wrk("garbage").is_err());
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&mut [4.0, 1.0, 2.0, 3.0]), Some(2.5));
        let run = |t: &str, round, rps| Run {
            scenario: "a".into(),
            target: t.into(),
            round,
            metrics: [("rps".to_owned(), rps)].into_iter().collect(),
        };
        let runs = vec![
            run("scope-router", 1, 300.0),
            run(HAPROXY_LUA, 1, 100.0),
            run(CEILING, 1, 600.0),
            run("scope-router", 2, 100.0),
            run("scope-router", 3, 200.0),
        ];
        let layout = Layout {
            scenario: "a",
            title: "A",
            columns: &[("rps", "req/s", 0)],
            ratio_on: Some("rps"),
        };
        let table = markdown_table(&runs, &layout);
        assert!(
            table.contains("| scope-router | 200 | 2.00× | 0.33× |"),
            "{table}"
        );
    }
}
