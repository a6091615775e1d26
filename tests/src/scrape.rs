//! Reading a Prometheus text exposition the way a test asserts on it: one sample by name
//! and labels.

use scope_router::metrics;
use scope_router::proxy::RouterHandle;

/// The running router's `/metrics` text, encoded in-process (what the admin listener
/// serves, without the scrape-time VIP and eBPF series).
pub fn scrape(handle: &RouterHandle) -> String {
    metrics::encode(&metrics::registry(handle.collector()))
}

/// The value of the sample `name{labels…}`: every given label must match, others may be
/// present. `None` when no sample matches; panics when several do (ambiguous labels in
/// a test are a bug of the test).
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let (series_name, series_labels) = match series.split_once('{') {
            Some((n, rest)) => (n, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if series_name != name {
            continue;
        }
        let matches = labels
            .iter()
            .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
        if matches {
            assert!(
                found.is_none(),
                "several samples of {name} match {labels:?}:\n{text}"
            );
            found = value.parse::<f64>().ok();
        }
    }
    found
}
