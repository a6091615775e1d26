//! `cargo xtask lab --tls`: a lab CA, a certificate per region for its VIP (an IP SAN),
//! the catalogs rewritten to `https://`, and each region config's `[tls]` (certificate,
//! key, and the lab CA as `ca_file`, so each router verifies the other region's).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use toml::{Table, Value};

use super::plan::RegionPlan;

/// Writes the lab's certificates and `https://` catalogs under `dir` and turns every
/// region's config to TLS; returns the CA file clients must trust.
pub fn apply(regions: &mut [RegionPlan], dir: &Path) -> Result<PathBuf> {
    let dir = dir.join("tls");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let ca = test_support::pki::Ca::new(&dir, "scope-router-lab");
    // Catalog files are shared by the regions' configs: each rewritten once.
    let mut catalogs: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    for region in regions.iter_mut() {
        let leaf = ca.leaf(&region.name, &[&region.vip.to_string()], 30);
        let mut table: Table = region.config.parse().context("re-reading the lab config")?;
        let sources: Vec<PathBuf> = table
            .get("catalog")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default();
        let mut rewritten = Vec::new();
        for source in sources {
            if !catalogs.contains_key(&source) {
                let text = std::fs::read_to_string(&source)
                    .with_context(|| format!("reading catalog {}", source.display()))?;
                let name = source.file_name().map_or_else(
                    || format!("catalog-{}.json", catalogs.len()),
                    |n| n.to_string_lossy().into_owned(),
                );
                let target = dir.join(format!("https-{name}"));
                std::fs::write(&target, https_catalog(&text)?)
                    .with_context(|| format!("writing {}", target.display()))?;
                catalogs.insert(source.clone(), target);
            }
            rewritten.push(catalogs[&source].clone());
        }
        set_tls(&mut table, &rewritten, &leaf, &ca.cert_path);
        region.config = format!(
            "# `cargo xtask lab --tls`: catalogs over https://, certificates from the lab CA \
             {}.\n{}",
            ca.cert_path.display(),
            toml::to_string(&table).context("serialising the TLS lab config")?
        );
        region.ca_file = Some(ca.cert_path.clone());
    }
    Ok(ca.cert_path)
}

/// The catalog with every `http://` URL turned `https://`.
fn https_catalog(text: &str) -> Result<String> {
    let mut entries: Vec<serde_json::Value> =
        serde_json::from_str(text).context("a catalog is not a JSON array")?;
    for e in &mut entries {
        if let Some(url) = e.get("URL").and_then(|u| u.as_str()) {
            let url = match url.strip_prefix("http://") {
                Some(rest) => format!("https://{rest}"),
                None => url.to_owned(),
            };
            e["URL"] = serde_json::Value::String(url);
        }
    }
    Ok(serde_json::to_string_pretty(&entries)?)
}

/// Points `catalog` at the `https://` catalogs and sets `[tls]`: the region's certificate
/// and key, and the lab CA for the hops to the other region.
fn set_tls(table: &mut Table, catalogs: &[PathBuf], leaf: &test_support::pki::Leaf, ca: &Path) {
    let path = |p: &Path| Value::String(p.to_string_lossy().into_owned());
    table.insert(
        "catalog".into(),
        Value::Array(catalogs.iter().map(|p| path(p)).collect()),
    );
    let tls = table
        .entry("tls")
        .or_insert_with(|| Value::Table(Table::new()));
    if let Value::Table(tls) = tls {
        tls.insert("certificate".into(), path(&leaf.certificate));
        tls.insert("key".into(), path(&leaf.key));
        tls.insert("ca_file".into(), path(ca));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogs_turn_https_and_configs_get_tls() {
        let catalog = r#"[{"Region": "RegionOne", "URL": "http://192.168.142.244:8774/v2.1/%(tenant_id)s"},
            {"Region": "RegionOne", "URL": "https://already.example"}]"#;
        let out: serde_json::Value =
            serde_json::from_str(&https_catalog(catalog).expect("rewrites")).expect("JSON");
        assert_eq!(
            out[0]["URL"],
            "https://192.168.142.244:8774/v2.1/%(tenant_id)s"
        );
        assert_eq!(out[1]["URL"], "https://already.example");

        let mut table: Table = "region = \"RegionOne\"\ncatalog = [\"/a.json\"]\n"
            .parse()
            .expect("TOML");
        let leaf = test_support::pki::Leaf {
            certificate: "/lab/tls/RegionOne.pem".into(),
            key: "/lab/tls/RegionOne.key".into(),
        };
        set_tls(
            &mut table,
            &[PathBuf::from("/lab/tls/https-a.json")],
            &leaf,
            Path::new("/lab/tls/ca.pem"),
        );
        assert_eq!(table["catalog"][0].as_str(), Some("/lab/tls/https-a.json"));
        assert_eq!(
            table["tls"]["certificate"].as_str(),
            Some("/lab/tls/RegionOne.pem")
        );
        assert_eq!(table["tls"]["key"].as_str(), Some("/lab/tls/RegionOne.key"));
        assert_eq!(table["tls"]["ca_file"].as_str(), Some("/lab/tls/ca.pem"));
    }
}
