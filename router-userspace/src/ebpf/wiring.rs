//! Turns the parsed `[ebpf]` section, the routing table's listeners and the passthrough
//! binds into a [`SteeringConfig`], and says which addresses eBPF cannot cover.

use std::net::{IpAddr, SocketAddr};

use crate::{
    config::{Cidr, EbpfConfig, EbpfMode, Passthrough},
    routing::ListenerSpec,
};

use super::{Ipv4Cidr, Mode, SteeringConfig};

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
    pub unenforced_deny: Vec<Cidr>,
}

/// Maps config types onto the steering layer's own input.
pub fn plan(
    ebpf: &EbpfConfig,
    listeners: &[ListenerSpec],
    passthrough: &[Passthrough],
) -> SteeringPlan {
    let mode = match ebpf.mode {
        EbpfMode::Auto => Mode::Auto,
        EbpfMode::Required => Mode::Required,
        EbpfMode::Off => Mode::Off,
    };
    let mut deny = Vec::new();
    let mut unenforced_deny = Vec::new();
    for cidr in &ebpf.deny {
        match cidr.addr {
            IpAddr::V4(addr) => match Ipv4Cidr::new(addr, cidr.prefix_len) {
                Some(v4) => deny.push(v4),
                None => unenforced_deny.push(*cidr),
            },
            IpAddr::V6(_) => unenforced_deny.push(*cidr),
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
    // Passthrough listeners are always bound directly; XDP only has to let them through.
    let passthrough = passthrough
        .iter()
        .filter_map(|p| steerable(p.bind))
        .collect();
    SteeringPlan {
        steering: SteeringConfig {
            mode,
            pin_path: ebpf.pin_path.clone(),
            interface: ebpf.interface.clone(),
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
    use std::{path::PathBuf, time::Duration};

    use super::*;
    use crate::config::{PassthroughMode, Timeouts};

    fn listener(addr: &str) -> ListenerSpec {
        ListenerSpec {
            addr: addr.parse().unwrap(),
            local_backend: "127.0.0.1:1".parse().unwrap(),
            timeouts: Timeouts::default(),
        }
    }

    #[test]
    fn splits_steerable_listeners_and_v6_deny_entries() {
        let ebpf = EbpfConfig {
            mode: EbpfMode::Required,
            pin_path: PathBuf::from("/sys/fs/bpf/scope-router"),
            interface: "eth2".into(),
            deny: vec![
                Cidr {
                    addr: "198.51.100.0".parse().unwrap(),
                    prefix_len: 24,
                },
                Cidr {
                    addr: "2001:db8::".parse().unwrap(),
                    prefix_len: 32,
                },
            ],
        };
        let passthrough = Passthrough {
            name: "mariadb".into(),
            bind: "192.0.2.10:3306".parse().unwrap(),
            backend: "192.0.2.11:3306".parse().unwrap(),
            mode: PassthroughMode::Tcp,
            timeouts: Timeouts {
                request_header: Duration::from_secs(1),
                ..Timeouts::default()
            },
        };
        let plan = plan(
            &ebpf,
            &[
                listener("192.0.2.10:8774"),
                listener("[2001:db8::1]:8774"),
                listener("0.0.0.0:9292"),
            ],
            &[passthrough],
        );
        assert_eq!(plan.steering.mode, Mode::Required);
        assert_eq!(
            plan.steering.services,
            vec!["192.0.2.10:8774".parse().unwrap()]
        );
        assert_eq!(
            plan.steering.passthrough,
            vec!["192.0.2.10:3306".parse().unwrap()]
        );
        assert_eq!(plan.steering.deny.len(), 1);
        assert_eq!(plan.steering.deny[0].to_string(), "198.51.100.0/24");
        assert_eq!(plan.unenforced_deny.len(), 1);
        assert_eq!(plan.bind_directly.len(), 2);
    }
}
