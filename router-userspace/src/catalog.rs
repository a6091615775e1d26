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
