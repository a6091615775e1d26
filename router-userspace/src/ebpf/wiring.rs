//! Turns the configuration's `[ebpf]` section, the routing table's listeners and the
//! passthrough binds into a [`SteeringConfig`], and says which addresses eBPF cannot cover.

use std::net::SocketAddr;

use ipnet::IpNet;

use crate::{config::Config, routing::ListenerSpec};

use super::SteeringConfig;

/// What [`plan`] produced.
#[derive(Clone, Debug)]
pub struct SteeringPlan {
    /// Input for [`super::start`].
    pub steering: SteeringConfig,
    /// Listener addresses sk_lookup cannot steer (IPv6 or wildcard): bind these directly
    /// even when eBPF steering is active.
    pub bind_directly: Vec<SocketAddr>,
    /// Deny entries XDP does not enforce (IPv6: the XDP program passes IPv6 untouched);
    /// log them once at startup.
    pub unenforced_deny: Vec<IpNet>,
}

/// The steering input for `config`, serving `listeners` (the routing table's).
pub fn plan(config: &Config, listeners: &[ListenerSpec]) -> SteeringPlan {
    let ebpf = &config.ebpf;
    let mut deny = Vec::new();
    let mut unenforced_deny = Vec::new();
    for net in &ebpf.deny {
        match net {
            IpNet::V4(v4) => deny.push(*v4),
            IpNet::V6(_) => unenforced_deny.push(*net),
        }
    }
    let steerable = |addr: SocketAddr| match addr {
        SocketAddr::V4(v4) if !v4.ip().is_unspecified() && v4.port() != 0 => Some(v4),
        _ => None,
    };
    let mut services = Vec::new();
    let mut bind_directly = Vec::new();
    for listener in listeners {
        match steerable(listener.addr) {
            Some(v4) => services.push(v4),
            None => bind_directly.push(listener.addr),
        }
    }
    // Passthrough and redirect listeners are always bound directly; XDP only has to let
    // them through.
    let passthrough = config
        .passthrough
        .iter()
        .map(|p| p.bind)
        .chain(config.redirect.iter().map(|r| r.bind))
        .filter_map(steerable)
        .collect();
    SteeringPlan {
        steering: SteeringConfig {
            mode: ebpf.mode,
            pin_path: ebpf.pin_path.clone(),
            interface: ebpf.interface(config.vip.as_ref()).to_owned(),
            deny,
            services,
            passthrough,
        },
        bind_directly,
        unenforced_deny,
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Timeouts;
    use crate::ebpf::Mode;

    fn listener(addr: &str) -> ListenerSpec {
        ListenerSpec {
            addr: addr.parse().unwrap(),
            local_backend: "127.0.0.1:1".parse().unwrap(),
            timeouts: Timeouts::default(),
        }
    }

    fn config(extra: &str) -> Config {
        let text = format!(
            r#"
region = "RegionOne"
catalog = ["catalog.json"]
backend = "192.0.2.11"
[[passthrough]]
name = "mariadb"
bind = "192.0.2.10:3306"
backend = "192.0.2.11:3306"
mode = "tcp"
[[redirect]]
bind = "192.0.2.10:80"
{extra}"#
        );
        Config::from_str(&text, Path::new("/etc/scope-router/router.toml")).unwrap()
    }

    #[test]
    fn splits_steerable_listeners_and_v6_deny_entries() {
        let config = config(
            r#"[ebpf]
mode = "required"
deny = ["198.51.100.0/24", "2001:db8::/32"]
"#,
        );
        let plan = plan(
            &config,
            &[
                listener("192.0.2.10:8774"),
                listener("[2001:db8::1]:8774"),
                listener("0.0.0.0:9292"),
            ],
        );
        assert_eq!(plan.steering.mode, Mode::Required);
        assert_eq!(
            plan.steering.services,
            vec!["192.0.2.10:8774".parse().unwrap()]
        );
        // The redirect listener too: XDP would drop its port otherwise.
        assert_eq!(
            plan.steering.passthrough,
            vec![
                "192.0.2.10:3306".parse().unwrap(),
                "192.0.2.10:80".parse().unwrap()
            ]
        );
        assert_eq!(plan.steering.deny.len(), 1);
        assert_eq!(plan.steering.deny[0].to_string(), "198.51.100.0/24");
        assert_eq!(plan.unenforced_deny.len(), 1);
        assert_eq!(plan.bind_directly.len(), 2);
        assert_eq!(
            plan.steering.pin_path,
            Path::new("/sys/fs/bpf/scope-router")
        );
        assert_eq!(plan.steering.interface, "eth2");
    }

    #[test]
    fn xdp_follows_the_vip_interface_unless_told_otherwise() {
        let vip = "[vip]\naddress = \"192.0.2.10\"\ninterface = \"ens3\"\n";
        let follows = plan(&config(vip), &[]);
        assert_eq!(follows.steering.interface, "ens3");
        let told = plan(
            &config(&format!("{vip}[ebpf]\ninterface = \"ens4\"\n")),
            &[],
        );
        assert_eq!(told.steering.interface, "ens4");
    }
}
