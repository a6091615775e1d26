//! The endpoint catalog: `openstack endpoint list -f json` files, cleaned and merged (DESIGN §2).

use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A catalog URL without scheme, with an explicit port and cut at the first template
/// placeholder: `http://h:8774/v2.1/%(tenant_id)s` → authority `h:8774`, path `/v2.1/`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CleanUrl {
    /// `host:port`; IPv6 hosts keep their brackets (`[::1]:5000`), hostnames are lowercased.
    pub authority: Arc<str>,
    /// `""` or a path starting with `/` (`/v2.1/`, `/identity`).
    pub path: Arc<str>,
}

/// One catalog row after cleaning.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub region: Arc<str>,
    pub service_type: Arc<str>,
    pub interface: Arc<str>,
    pub url: CleanUrl,
    /// `"http"` or `"https"`: the scheme the catalog gave, kept for `X-Identity-Url`.
    pub scheme: &'static str,
    /// The file this entry was first read from (for error messages).
    pub source: Arc<Path>,
}

/// All entries of all catalog files, in file order, duplicates merged.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    entries: Vec<Endpoint>,
}

/// Why a catalog file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    #[error("cannot read catalog file {}: {source}; check the `catalog` paths in the config", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "catalog file {} is not valid JSON ({source}); regenerate it with \
         `openstack endpoint list -f json -c Region -c \"Service Type\" -c Interface -c URL`",
        path.display()
    )]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("catalog file {}: {message}", path.display())]
    Shape { path: PathBuf, message: String },
    #[error("catalog file {}, entry #{index}: {message}", path.display())]
    Entry {
        path: PathBuf,
        index: usize,
        message: String,
    },
    #[error("{0}")]
    Conflict(Box<Conflict>),
    #[error("no catalog file given; set `catalog = [\"endpoint-list-RegionOne.json\", ...]`")]
    Empty,
}

/// Two files (or two rows) give different URLs for the same region/service type/interface.
#[derive(Debug)]
pub struct Conflict {
    pub region: String,
    pub service_type: String,
    pub interface: String,
    pub first_url: String,
    pub first: PathBuf,
    pub second_url: String,
    pub second: PathBuf,
}

impl fmt::Display for Conflict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "conflicting catalog entries for {} {} {}: {} in {} but {} in {}; fix or remove one \
             of them",
            self.region,
            self.service_type,
            self.interface,
            self.first_url,
            self.first.display(),
            self.second_url,
            self.second.display()
        )
    }
}

/// Why a URL could not be cleaned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("URL `{0}` has an unsupported scheme; only http:// and https:// are routable")]
    Scheme(String),
    #[error("URL `{0}` has no host")]
    NoHost(String),
    #[error("URL `{0}` has an invalid port")]
    Port(String),
    #[error("URL `{0}` carries user information, which a catalog URL must not")]
    UserInfo(String),
    #[error("URL `{0}` has an invalid IPv6 host")]
    Ipv6(String),
}

impl CleanUrl {
    /// Cleans a catalog URL (DESIGN §2).
    ///
    /// A URL without scheme is accepted only when it already carries a port (it is
    /// then assumed to be cleaned already).
    pub fn parse(url: &str) -> Result<(CleanUrl, &'static str), UrlError> {
        let cut = template_start(url).map_or(url, |i| &url[..i]);
        let (scheme, rest, default_port) = if let Some(rest) = strip_prefix_ci(cut, "http://") {
            ("http", rest, Some(80))
        } else if let Some(rest) = strip_prefix_ci(cut, "https://") {
            ("https", rest, Some(443))
        } else if cut.contains("://") {
            return Err(UrlError::Scheme(url.to_owned()));
        } else {
            ("http", cut, None)
        };
        // Query and fragment are never part of a routing prefix.
        let rest = rest.split(['?', '#']).next().unwrap_or("");
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, ""),
        };
        if authority.contains('@') {
            return Err(UrlError::UserInfo(url.to_owned()));
        }
        let (host, port) = split_host_port(authority).map_err(|e| match e {
            HostPortError::Port => UrlError::Port(url.to_owned()),
            HostPortError::Ipv6 => UrlError::Ipv6(url.to_owned()),
        })?;
        if host.is_empty() {
            return Err(UrlError::NoHost(url.to_owned()));
        }
        let port = match (port, default_port) {
            (Some(p), _) => p,
            (None, Some(p)) => p,
            (None, None) => return Err(UrlError::Scheme(url.to_owned())),
        };
        let host = host.to_ascii_lowercase();
        let authority = if host.contains(':') {
            format!("[{host}]:{port}")
        } else {
            format!("{host}:{port}")
        };
        // "/" as a whole path routes exactly like "": keep one spelling.
        let path = if path == "/" { "" } else { path };
        Ok((
            CleanUrl {
                authority: authority.into(),
                path: path.into(),
            },
            scheme,
        ))
    }

    /// The host without brackets or port.
    pub fn host(&self) -> &str {
        match split_host_port(&self.authority) {
            Ok((host, _)) => host,
            Err(_) => &self.authority,
        }
    }

    /// The port (always present after cleaning).
    pub fn port(&self) -> u16 {
        match split_host_port(&self.authority) {
            Ok((_, Some(port))) => port,
            _ => 0,
        }
    }

    /// The host as an IP literal, when it is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.host().parse().ok()
    }
}

impl fmt::Display for CleanUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.authority, self.path)
    }
}

impl Endpoint {
    /// The HAProxy-style backend name, `Region_ServiceType_Interface`.
    pub fn backend_name(&self) -> String {
        format!("{}_{}_{}", self.region, self.service_type, self.interface)
    }

    /// The endpoint as an absolute URL (`http://host:port/path`), used for `X-Identity-Url`.
    pub fn absolute_url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.url.authority, self.url.path)
    }
}

impl Catalog {
    /// Reads, cleans and merges every file, in order.
    pub fn load(paths: &[PathBuf]) -> Result<Catalog, CatalogError> {
        if paths.is_empty() {
            return Err(CatalogError::Empty);
        }
        let mut catalog = Catalog::default();
        for path in paths {
            let text = std::fs::read_to_string(path).map_err(|source| CatalogError::Read {
                path: path.clone(),
                source,
            })?;
            catalog.add_json(&text, path)?;
        }
        Ok(catalog)
    }

    /// Parses one file's content and merges it into the catalog.
    pub fn add_json(&mut self, text: &str, path: &Path) -> Result<(), CatalogError> {
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|source| CatalogError::Json {
                path: path.to_owned(),
                source,
            })?;
        let serde_json::Value::Array(rows) = value else {
            return Err(CatalogError::Shape {
                path: path.to_owned(),
                message: "expected a JSON array of endpoint objects".to_owned(),
            });
        };
        let source: Arc<Path> = Arc::from(path);
        for (index, row) in rows.iter().enumerate() {
            let entry_err = |message: String| CatalogError::Entry {
                path: path.to_owned(),
                index,
                message,
            };
            let serde_json::Value::Object(obj) = row else {
                return Err(entry_err("expected an object".to_owned()));
            };
            let field = |key: &str| -> Result<&str, CatalogError> {
                match obj.get(key) {
                    Some(serde_json::Value::String(s)) if !s.trim().is_empty() => Ok(s.trim()),
                    Some(serde_json::Value::String(_)) => {
                        Err(entry_err(format!("key \"{key}\" is empty")))
                    }
                    Some(_) => Err(entry_err(format!("key \"{key}\" must be a string"))),
                    None => Err(entry_err(format!("missing key \"{key}\""))),
                }
            };
            let region = field("Region")?;
            let service_type = field("Service Type")?;
            let interface = field("Interface")?;
            let raw_url = field("URL")?;
            let (url, scheme) = CleanUrl::parse(raw_url).map_err(|e| entry_err(e.to_string()))?;
            let endpoint = Endpoint {
                region: region.into(),
                service_type: service_type.into(),
                interface: interface.into(),
                url,
                scheme,
                source: Arc::clone(&source),
            };
            self.merge(endpoint)?;
        }
        Ok(())
    }

    fn merge(&mut self, new: Endpoint) -> Result<(), CatalogError> {
        let existing = self.entries.iter().find(|e| {
            e.region == new.region
                && e.service_type == new.service_type
                && e.interface == new.interface
        });
        match existing {
            None => {
                self.entries.push(new);
                Ok(())
            }
            Some(old) if old.url == new.url => Ok(()),
            Some(old) => Err(CatalogError::Conflict(Box::new(Conflict {
                region: new.region.to_string(),
                service_type: new.service_type.to_string(),
                interface: new.interface.to_string(),
                first_url: old.url.to_string(),
                first: old.source.to_path_buf(),
                second_url: new.url.to_string(),
                second: new.source.to_path_buf(),
            }))),
        }
    }

    /// Entries in file order.
    pub fn entries(&self) -> &[Endpoint] {
        &self.entries
    }

    /// Distinct regions, in order of first appearance.
    pub fn regions(&self) -> Vec<Arc<str>> {
        let mut regions: Vec<Arc<str>> = Vec::new();
        for e in &self.entries {
            if !regions.contains(&e.region) {
                regions.push(Arc::clone(&e.region));
            }
        }
        regions
    }

    /// Whether any entry belongs to `region`.
    pub fn has_region(&self, region: &str) -> bool {
        self.entries.iter().any(|e| &*e.region == region)
    }

    /// The entry for `region`/`service_type`/`interface`, if any.
    pub fn find(&self, region: &str, service_type: &str, interface: &str) -> Option<&Endpoint> {
        self.entries.iter().find(|e| {
            &*e.region == region && &*e.service_type == service_type && &*e.interface == interface
        })
    }
}

/// Index of the first `%(` or `$(` placeholder.
fn template_start(url: &str) -> Option<usize> {
    let bytes = url.as_bytes();
    bytes
        .windows(2)
        .position(|w| (w[0] == b'%' || w[0] == b'$') && w[1] == b'(')
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

pub(crate) enum HostPortError {
    Port,
    Ipv6,
}

/// Splits `host[:port]` / `[v6][:port]`; the host comes back without brackets.
pub(crate) fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), HostPortError> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let end = rest.find(']').ok_or(HostPortError::Ipv6)?;
        let host = &rest[..end];
        if host.parse::<std::net::Ipv6Addr>().is_err() {
            return Err(HostPortError::Ipv6);
        }
        let after = &rest[end + 1..];
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(HostPortError::Port),
        }
    } else {
        match authority.rsplit_once(':') {
            // A bare IPv6 literal without brackets cannot carry a port.
            Some((host, _)) if host.contains(':') => return Err(HostPortError::Ipv6),
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        }
    };
    let port = match port {
        None | Some("") => None,
        Some(p) if p.bytes().all(|b| b.is_ascii_digit()) => match p.parse::<u16>() {
            Ok(p) if p != 0 => Some(p),
            _ => return Err(HostPortError::Port),
        },
        Some(_) => return Err(HostPortError::Port),
    };
    Ok((host, port))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    pub(crate) fn fixtures() -> Vec<PathBuf> {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../config"));
        vec![
            dir.join("endpoint-list-RegionOne.json"),
            dir.join("endpoint-list-RegionTwo.json"),
        ]
    }

    fn catalog(files: &[(&str, &str)]) -> Result<Catalog, CatalogError> {
        let mut c = Catalog::default();
        for (name, text) in files {
            c.add_json(text, Path::new(name))?;
        }
        Ok(c)
    }

    fn row(region: &str, st: &str, iface: &str, url: &str) -> String {
        format!(
            r#"{{"Region": "{region}", "Service Type": "{st}", "Interface": "{iface}", "URL": "{url}"}}"#
        )
    }

    #[test]
    fn cleans_urls() {
        let cases = [
            (
                "http://192.168.142.244:8774/v2.1/%(tenant_id)s",
                "192.168.142.244:8774",
                "/v2.1/",
                "http",
            ),
            ("http://h:8774/v2/%(tenant_id)s", "h:8774", "/v2/", "http"),
            ("http://h:9292/v2/$(project_id)s", "h:9292", "/v2/", "http"),
            ("http://h:8774/v2.1/%(a)s/$(b)s", "h:8774", "/v2.1/", "http"),
            ("http://h:8774/v2.1/x$(b)s", "h:8774", "/v2.1/x", "http"),
            (
                "https://keystone.example.com/identity",
                "keystone.example.com:443",
                "/identity",
                "https",
            ),
            (
                "https://10.0.0.1:8443/identity/v3",
                "10.0.0.1:8443",
                "/identity/v3",
                "https",
            ),
            ("http://10.0.0.1", "10.0.0.1:80", "", "http"),
            ("http://10.0.0.1/", "10.0.0.1:80", "", "http"),
            ("http://10.0.0.1:5000", "10.0.0.1:5000", "", "http"),
            ("HTTP://Keystone:5000/v3", "keystone:5000", "/v3", "http"),
            ("http://h:5000/v3?x=1", "h:5000", "/v3", "http"),
            (
                "http://[fd00::1]:5000/identity",
                "[fd00::1]:5000",
                "/identity",
                "http",
            ),
            ("https://[FD00::1]/x", "[fd00::1]:443", "/x", "https"),
            ("10.0.0.1:5000/v3", "10.0.0.1:5000", "/v3", "http"),
        ];
        for (url, authority, path, scheme) in cases {
            let (clean, s) = CleanUrl::parse(url).unwrap_or_else(|e| panic!("{url}: {e}"));
            assert_eq!(
                (&*clean.authority, &*clean.path, s),
                (authority, path, scheme),
                "{url}"
            );
        }
    }

    #[test]
    fn rejects_bad_urls() {
        let cases = [
            "ftp://h:21/x",
            "http://:80/x",
            "http:///x",
            "http://h:abc/",
            "http://h:0/",
            "http://h:+80/",
            "http://h:70000/",
            "http://user@h:80/",
            "http://[::1:5000/",
            "http://[nothost]:5000/",
            "http://fd00::1:5000/",
            "keystone/v3",
        ];
        for url in cases {
            assert!(CleanUrl::parse(url).is_err(), "{url} should be rejected");
        }
    }

    #[test]
    fn host_port_and_ip() {
        let (u, _) = CleanUrl::parse("http://[fd00::1]:5000/x").unwrap();
        assert_eq!(u.host(), "fd00::1");
        assert_eq!(u.port(), 5000);
        assert_eq!(u.ip(), Some("fd00::1".parse().unwrap()));
        let (u, _) = CleanUrl::parse("http://keystone/x").unwrap();
        assert_eq!((u.host(), u.port(), u.ip()), ("keystone", 80, None));
        assert_eq!(u.to_string(), "keystone:80/x");
    }

    #[test]
    fn loads_fixtures() {
        let c = Catalog::load(&fixtures()).unwrap();
        assert_eq!(c.entries().len(), 36);
        assert_eq!(
            &*c.regions()
                .iter()
                .map(|r| r.to_string())
                .collect::<Vec<_>>(),
            ["RegionOne", "RegionTwo"]
        );
        let e = c.find("RegionTwo", "compute", "admin").unwrap();
        assert_eq!(e.url.to_string(), "192.168.144.244:8774/v2.1/");
        assert_eq!(e.backend_name(), "RegionTwo_compute_admin");
        assert!(e.source.ends_with("endpoint-list-RegionTwo.json"));
        let id = c.find("RegionOne", "identity", "admin").unwrap();
        assert_eq!(id.absolute_url(), "http://192.168.142.244:35357");
        // File order is kept: RegionOne's rows first.
        assert_eq!(&*c.entries()[0].region, "RegionOne");
        assert_eq!(&*c.entries()[18].region, "RegionTwo");
    }

    #[test]
    fn loading_the_same_file_twice_merges() {
        let mut files = fixtures();
        files.extend(fixtures());
        assert_eq!(Catalog::load(&files).unwrap().entries().len(), 36);
    }

    #[test]
    fn equivalent_urls_merge() {
        let a = format!(
            "[{}]",
            row("R", "identity", "public", "http://10.0.0.1/identity")
        );
        let b = format!(
            "[{}]",
            row("R", "identity", "public", "HTTP://10.0.0.1:80/identity")
        );
        let c = catalog(&[("a.json", &a), ("b.json", &b)]).unwrap();
        assert_eq!(c.entries().len(), 1);
        assert_eq!(&*c.entries()[0].source, Path::new("a.json"));
    }

    #[test]
    fn conflicting_duplicates_name_both_files() {
        let a = format!(
            "[{}]",
            row("R", "compute", "public", "http://10.0.0.1:8774/v2.1")
        );
        let b = format!(
            "[{}]",
            row("R", "compute", "public", "http://10.0.0.2:8774/v2.1")
        );
        let err = catalog(&[("one.json", &a), ("two.json", &b)]).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, CatalogError::Conflict(_)), "{msg}");
        for needle in [
            "one.json",
            "two.json",
            "10.0.0.1:8774",
            "10.0.0.2:8774",
            "R compute public",
        ] {
            assert!(msg.contains(needle), "{needle} missing from: {msg}");
        }
        // Within one file too.
        let both = format!(
            "[{}, {}]",
            row("R", "compute", "public", "http://10.0.0.1:8774/v2.1"),
            row("R", "compute", "public", "http://10.0.0.1:8775/v2.1")
        );
        let msg = catalog(&[("same.json", &both)]).unwrap_err().to_string();
        assert!(
            msg.contains("same.json") && msg.contains("10.0.0.1:8775"),
            "{msg}"
        );
        // Same key differing only in interface is not a conflict.
        let c = format!(
            "[{}]",
            row("R", "compute", "admin", "http://10.0.0.2:8774/v2.1")
        );
        assert_eq!(
            catalog(&[("one.json", &a), ("three.json", &c)])
                .unwrap()
                .entries()
                .len(),
            2
        );
    }

    #[test]
    fn malformed_files_name_file_and_entry() {
        let good = row("R", "identity", "public", "http://10.0.0.1:5000");
        let cases: Vec<(String, &str)> = vec![
            ("[{".to_owned(), "not valid JSON"),
            ("{}".to_owned(), "JSON array"),
            (format!("[{good}, 3]"), "entry #1: expected an object"),
            (format!("[{good}, {{\"Region\": \"R\"}}]"), "entry #1: missing key \"Service Type\""),
            (
                r#"[{"Region": "R", "Service Type": "x", "Interface": "public"}]"#.to_owned(),
                "entry #0: missing key \"URL\"",
            ),
            (
                r#"[{"Region": 1, "Service Type": "x", "Interface": "public", "URL": "http://h"}]"#
                    .to_owned(),
                "entry #0: key \"Region\" must be a string",
            ),
            (
                r#"[{"Region": "", "Service Type": "x", "Interface": "public", "URL": "http://h"}]"#
                    .to_owned(),
                "entry #0: key \"Region\" is empty",
            ),
            (format!("[{}]", row("R", "x", "public", "ftp://h/")), "entry #0: URL `ftp://h/`"),
        ];
        for (text, needle) in cases {
            let msg = catalog(&[("bad.json", &text)]).unwrap_err().to_string();
            assert!(msg.contains("bad.json"), "{msg}");
            assert!(msg.contains(needle), "{needle} missing from: {msg}");
        }
    }

    #[test]
    fn missing_file_and_empty_list() {
        let err = Catalog::load(&[PathBuf::from("/nonexistent/x.json")]).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.json"), "{err}");
        assert!(matches!(Catalog::load(&[]), Err(CatalogError::Empty)));
    }
}
