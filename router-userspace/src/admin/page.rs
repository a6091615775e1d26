//! The status page (`/`): `/status` rendered as one self-contained HTML document, in the
//! spirit of HAProxy's stats page. Server-rendered with inline CSS and no script or
//! external asset, so it works on an air-gapped controller; it reloads itself every
//! [`REFRESH_SECONDS`]. Every value is escaped: names come from the config and catalog.

use std::fmt::Write as _;

use super::AdminStatus;
use crate::ebpf::ProgramKind;
use crate::health_state::Role;
use crate::status::ServerStatus;

/// How often the page reloads itself.
pub const REFRESH_SECONDS: u32 = 5;

/// Escapes `&`, `<`, `>`, `"` and `'` for element content and quoted attributes.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

const STYLE: &str = "
body{font-family:system-ui,sans-serif;font-size:14px;margin:1em 2em;color:#222;background:#fafafa}
h1{font-size:20px;margin:.2em 0}h2{font-size:16px;margin:1.2em 0 .4em;border-bottom:1px solid #ccc}
h3{font-size:14px;margin:1em 0 .3em}
table{border-collapse:collapse;margin:.3em 0 .8em;background:#fff}
th,td{border:1px solid #ccc;padding:2px 8px;text-align:left;vertical-align:top}
th{background:#e8e8f0}td.n{text-align:right;font-variant-numeric:tabular-nums}
.up{background:#c8f0c8}.down{background:#f4b4b4;font-weight:bold}.warn{background:#f8e0a0}
td.t{white-space:nowrap}.meta{color:#555}.tag{display:inline-block;padding:0 6px;border-radius:3px}
";

/// The whole page.
pub fn render(s: &AdminStatus) -> String {
    let mut h = String::with_capacity(16 * 1024);
    let r = &s.report;
    let _ = write!(
        h,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta http-equiv=\"refresh\" content=\"{REFRESH_SECONDS}\">\
         <link rel=\"icon\" href=\"data:,\">\
         <title>scope-router {region}</title><style>{STYLE}</style></head><body>\n",
        region = esc(&r.region)
    );
    header(&mut h, s);
    vip(&mut h, s);
    certificates(&mut h, s);
    kernel(&mut h, s);
    listeners(&mut h, s);
    let _ = write!(
        h,
        "<p class=\"meta\">Reloads every {REFRESH_SECONDS} s. The same data: \
         <a href=\"/status\">/status</a> (JSON), <a href=\"/metrics\">/metrics</a> \
         (Prometheus), <a href=\"/healthz\">/healthz</a>.</p>\n</body></html>\n"
    );
    h
}

fn header(h: &mut String, s: &AdminStatus) {
    let r = &s.report;
    let (state_class, state) = if s.draining {
        ("down", "DRAINING")
    } else if s.healthy {
        ("up", "serving")
    } else {
        ("warn", "serving, degraded")
    };
    let _ = write!(
        h,
        "<h1 id=\"region\">scope-router {region} \
         <span class=\"tag {state_class}\" id=\"state\">{state}</span></h1>\n\
         <table id=\"router\"><tr><th>version</th><td>{version}</td><th>pid</th><td>{pid}</td>\
         <th>ebpf.mode</th><td>{mode}</td></tr>\
         <tr><th>config</th><td colspan=\"3\">{config}</td><th>loaded</th><td>{loaded}</td></tr>\
         <tr><th>regions</th><td colspan=\"5\">{regions}</td></tr>\
         <tr><th>connections</th><td id=\"connections\" class=\"{conn_class}\" colspan=\"5\">\
         {open} open of {max}{at_limit}; limit reached {reached} times</td></tr></table>\n",
        region = esc(&r.region),
        version = esc(s.version),
        pid = s.pid,
        mode = esc(r.ebpf_mode),
        config = esc(&s.config.display().to_string()),
        loaded = esc(&s.loaded_at),
        regions = esc(&s.regions.join(", ")),
        conn_class = if s.connections.at_limit { "warn" } else { "" },
        open = s.connections.open,
        max = s.connections.max,
        at_limit = if s.connections.at_limit {
            ", AT THE LIMIT"
        } else {
            ""
        },
        reached = s.connections.reached,
    );
}

fn vip(h: &mut String, s: &AdminStatus) {
    h.push_str("<h2>VIP</h2>\n");
    match &s.report.vip {
        None => h.push_str("<p id=\"vip\">none configured (<code>[vip]</code> absent)</p>\n"),
        Some(Err(why)) => {
            let _ = writeln!(
                h,
                "<p id=\"vip\" class=\"warn\">cannot read: {}</p>",
                esc(why)
            );
        }
        Some(Ok(v)) => {
            let (class, present) = if v.present {
                ("up", "present")
            } else if v.interface_present {
                ("down", "ABSENT")
            } else {
                ("down", "INTERFACE MISSING")
            };
            let managed = match v.managed {
                Some(true) => "yes",
                Some(false) => "no (manage = false)",
                None => "unknown (no state file)",
            };
            let owner = match (v.owner_pid, v.owned) {
                (Some(pid), _) => format!("pid {pid}"),
                (None, true) => "a router starting up".to_owned(),
                (None, false) => "nobody".to_owned(),
            };
            let _ = writeln!(
                h,
                "<table id=\"vip\"><tr><th>address</th><th>interface</th><th>state</th>\
                 <th>managed</th><th>owner</th><th>last announced</th><th>GARP bursts</th>\
                 <th>re-added</th></tr><tr><td>{addr}</td><td>{iface}</td>\
                 <td class=\"{class}\">{present}</td><td>{managed}</td><td>{owner}</td>\
                 <td>{announced}</td><td class=\"n\">{bursts}</td><td class=\"n\">{readded}</td>\
                 </tr></table>",
                addr = v.address,
                iface = esc(&v.interface),
                owner = esc(&owner),
                announced = esc(v.last_announced.as_deref().unwrap_or("never")),
                bursts = v.announcements,
                readded = v.readded,
            );
        }
    }
}

/// The certificates served, soonest expiry first; one within 14 days is marked.
fn certificates(h: &mut String, s: &AdminStatus) {
    let mut certs: Vec<_> = s.report.certificates.iter().collect();
    if certs.is_empty() {
        return;
    }
    certs.sort_by_key(|c| c.days_left);
    h.push_str(
        "<h2>Certificates</h2>\n<table id=\"certificates\"><tr><th>certificate</th>\
         <th>names</th><th>not after</th><th>days left</th></tr>\n",
    );
    for c in certs {
        let class = match c.days_left {
            ..0 => "down",
            0..14 => "warn",
            _ => "up",
        };
        let _ = writeln!(
            h,
            "<tr class=\"certificate\"><td>{file}</td><td>{names}</td><td class=\"t\">{after}</td>\
             <td class=\"n {class}\">{days}</td></tr>",
            file = esc(&c.certificate.display().to_string()),
            names = esc(&c.names.join(", ")),
            after = esc(&c.not_after),
            days = c.days_left,
        );
    }
    h.push_str("</table>\n");
}

fn kernel(h: &mut String, s: &AdminStatus) {
    h.push_str("<h2>eBPF</h2>\n");
    let k = match &s.report.kernel {
        Ok(k) => k,
        Err(why) => {
            let _ = writeln!(h, "<p id=\"ebpf\" class=\"meta\">{}</p>", esc(why));
            return;
        }
    };
    h.push_str(
        "<table id=\"ebpf\"><tr><th>program</th><th>state</th><th>program id</th>\
         <th>link id</th><th>where</th></tr>\n",
    );
    for p in &k.programs {
        let (name, place) = match p.kind {
            ProgramKind::SkLookup => (
                "sk_lookup (steer)",
                p.netns_inode
                    .map(|n| format!("netns {n}"))
                    .unwrap_or_default(),
            ),
            ProgramKind::Xdp => (
                "XDP (guard)",
                format!(
                    "{}{}",
                    p.interface.as_deref().unwrap_or("?"),
                    p.mode.map(|m| format!(", {m}")).unwrap_or_default()
                ),
            ),
        };
        let (class, state) = if p.attached {
            ("up", "attached")
        } else {
            ("down", "DETACHED")
        };
        let id = |v: Option<u32>| v.map(|v| v.to_string()).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            h,
            "<tr><td>{name}</td><td class=\"{class}\">{state}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td>{}</td></tr>",
            id(p.program_id),
            id(p.link_id),
            esc(&place)
        );
    }
    h.push_str("</table>\n");
    let _ = writeln!(
        h,
        "<table id=\"counters\"><tr><th>VIP:port</th><th>kind</th><th>packets</th>\
         <th>bytes</th><th>SYNs</th><th>drops</th></tr>"
    );
    for c in &k.counters {
        let port = c.port.map_or_else(|| "*".to_owned(), |p| p.to_string());
        let _ = writeln!(
            h,
            "<tr><td>{}:{port}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
             <td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
            c.vip,
            esc(&format!("{:?}", c.kind).to_lowercase()),
            c.packets,
            c.bytes,
            c.syns,
            c.drops
        );
    }
    h.push_str("</table>\n");
}

fn role(server: &ServerStatus) -> String {
    let p = &server.placement;
    let mut text = match p.role {
        Role::Local => "local".to_owned(),
        Role::Remote => format!("{} frontend", p.region),
        Role::Passthrough => "passthrough".to_owned(),
    };
    if p.backup {
        text.push_str(", backup");
    }
    if p.weight != 1 {
        let _ = write!(text, ", weight {}", p.weight);
    }
    text
}

/// `3 of 8 in use, 2 queued, 0 queue timeouts`, or `no limit`.
fn slots(server: &ServerStatus) -> String {
    match &server.slots {
        Some(s) => format!(
            "{} of {} in use, {} queued, {} queue timeouts",
            s.in_use, s.maxconn, s.queued, s.queue_timeouts
        ),
        None => "no limit".to_owned(),
    }
}

fn listeners(h: &mut String, s: &AdminStatus) {
    h.push_str("<h2>Listeners</h2>\n");
    for l in &s.listeners {
        let title = match &l.name {
            Some(name) => format!("{} ({} {})", l.address, l.kind, name),
            None => format!("{} ({})", l.address, l.kind),
        };
        let _ = writeln!(
            h,
            "<h3 class=\"listener\" data-address=\"{addr}\">{title}</h3>",
            addr = esc(&l.address),
            title = esc(&title)
        );
        if let Some(r) = &l.redirect {
            let _ = writeln!(h, "<p class=\"redirect\">{}</p>", esc(&r.summary()));
        }
        if l.backends.is_empty() {
            h.push_str("<p class=\"meta\">traffic not counted (<code>[admin] metrics = false</code>)</p>\n");
        } else {
            h.push_str(
                "<table class=\"backends\"><tr><th>backend</th><th>service type</th>\
                 <th>region</th><th>requests</th><th>1xx</th><th>2xx</th><th>3xx</th>\
                 <th>4xx</th><th>5xx</th><th>bytes in</th><th>bytes out</th></tr>\n",
            );
            for b in &l.backends {
                let name = if b.backend == "-" {
                    "(refused before routing)"
                } else {
                    &b.backend
                };
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td>",
                    esc(name),
                    esc(&b.service_type),
                    esc(&b.region),
                    b.requests
                );
                for class in super::CLASSES {
                    let _ = write!(
                        h,
                        "<td class=\"n\">{}</td>",
                        b.responses.get(class).copied().unwrap_or(0)
                    );
                }
                let _ = writeln!(
                    h,
                    "<td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    b.bytes_in, b.bytes_out
                );
            }
            h.push_str("</table>\n");
        }
        let servers: Vec<&ServerStatus> = s
            .report
            .servers
            .iter()
            .filter(|srv| srv.placement.listener.to_string() == l.address)
            .collect();
        if servers.is_empty() {
            continue;
        }
        h.push_str(
            "<table class=\"servers\"><tr><th>server</th><th>for</th><th>backends</th>\
             <th>state</th><th>since</th><th>last check</th><th>checks</th><th>failed</th>\
             <th>requests</th><th>slots (maxconn)</th></tr>\n",
        );
        for srv in servers {
            let (class, state) = if srv.up {
                ("up", "UP")
            } else {
                ("down", "DOWN")
            };
            let mut last = srv
                .last_result
                .clone()
                .unwrap_or_else(|| "(no check yet)".to_owned());
            if let Some(why) = &srv.degraded {
                let _ = write!(last, "; degraded: {why}");
            }
            let _ = writeln!(
                h,
                "<tr class=\"server\"><td>{addr}</td><td>{role}</td><td>{backends}</td>\
                 <td class=\"{class}\">{state}</td><td class=\"t\">{since}</td><td>{last}</td>\
                 <td class=\"n\">{checks}</td><td class=\"n\">{failures}</td>\
                 <td class=\"n\">{requests}</td><td class=\"slots\">{slots}</td></tr>",
                addr = esc(&srv.placement.addr),
                role = esc(&role(srv)),
                backends = esc(&srv.placement.backends.join(", ")),
                since = esc(srv.since.as_deref().unwrap_or("-")),
                last = esc(&last),
                checks = srv.checks.unwrap_or(0),
                failures = srv.failures.unwrap_or(0),
                requests = srv.requests.unwrap_or(0),
                slots = esc(&slots(srv)),
            );
        }
        h.push_str("</table>\n");
    }
}

#[cfg(test)]
mod tests {
    use super::esc;

    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(
            esc(r#"<script>alert('x')</script> & "q""#),
            "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"
        );
    }
}
