//! Several servers per backend: HAProxy's `balance roundrobin|source`, weights and `backup`.
//!
//! A [`Balancer`] is built once per backend and shared by every request; choosing servers for a
//! request ([`Balancer::candidates`]) allocates nothing and, for the common single-server
//! backend, costs one atomic load.
//!
//! Servers fall into four tiers, tried in order: weighted non-backup servers, weight-0
//! non-backup servers, weighted backups, weight-0 backups. Backup tiers are only reached when
//! no non-backup server is up. Within a tier the first server is the balanced pick and the
//! rest follow it (for redispatch when the pick fails).

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use serde::Deserialize;

use crate::health::Health;
use crate::server_slots::Slots;

/// Largest weight honoured (HAProxy's maximum); larger weights are clamped to it. Bounds the
/// precomputed schedule at `MAX_WEIGHT` slots per server.
pub const MAX_WEIGHT: u32 = 256;

/// How a backend spreads requests over its servers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    /// Weighted round robin, interleaved (smooth), not in bursts.
    #[default]
    Roundrobin,
    /// Client address affinity (Kolla: keystone with federation, horizon): one client keeps
    /// its server while that server is up.
    Source,
}

/// One server of a backend.
#[derive(Debug, Clone)]
pub struct Server {
    pub health: Arc<Health>,
    /// Share of requests relative to the other servers of its tier (1 by default).
    ///
    /// 0 means "never the balanced pick while a weighted server of the same kind (backup or
    /// not) is up": a weight-0 server only gets requests for redispatch after every weighted
    /// one, or when every weighted one is down. It still counts as an up non-backup server,
    /// so backups stay unused while it is up.
    pub weight: u32,
    /// Only used when every non-backup server is down.
    pub backup: bool,
    /// Its `maxconn` slots; `None` when unlimited, which costs a request nothing.
    pub slots: Option<Arc<Slots>>,
    /// How it is reached over TLS; `None`: cleartext.
    pub tls: Option<Arc<crate::tls::TlsHop>>,
}

impl Server {
    /// A non-backup server of weight 1, unlimited.
    pub fn new(health: Arc<Health>) -> Server {
        Server {
            health,
            weight: 1,
            backup: false,
            slots: None,
            tls: None,
        }
    }
}

/// The servers of one backend and how to pick among them. Shared (`Arc`) by every request.
#[derive(Debug)]
pub struct Balancer {
    servers: Vec<Server>,
    balance: Balance,
    tiers: [Tier; 4],
}

/// Index of the first backup tier in [`Balancer::tiers`].
const FIRST_BACKUP_TIER: usize = 2;

/// Servers of the same kind (backup or not, weighted or weight 0).
#[derive(Debug, Default)]
struct Tier {
    /// Indices into [`Balancer::servers`], in configuration order.
    members: Box<[u32]>,
    /// One cycle of the weighted schedule, as positions in `members`.
    schedule: Box<[u32]>,
    /// Round-robin position in `schedule`; only touched when the tier has several members.
    cursor: AtomicUsize,
}

impl Tier {
    /// `members` with their weights (all weights > 0).
    fn new(members: Vec<(u32, u32)>) -> Tier {
        let schedule = smooth_schedule(&members.iter().map(|&(_, w)| w).collect::<Vec<_>>());
        Tier {
            members: members.into_iter().map(|(index, _)| index).collect(),
            schedule: schedule.into(),
            cursor: AtomicUsize::new(0),
        }
    }
}

/// One cycle of nginx's smooth weighted round robin over `weights` (reduced by their gcd):
/// each step every entry gains its weight, the largest is picked and loses the total. For
/// 5:1:1 this gives `a a b a c a a` rather than `a a a a a b c`.
fn smooth_schedule(weights: &[u32]) -> Vec<u32> {
    let gcd = weights.iter().copied().fold(0, gcd);
    if gcd == 0 {
        return Vec::new();
    }
    let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w / gcd)).collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0_i64; weights.len()];
    let mut schedule = Vec::with_capacity(usize::try_from(total).unwrap_or_default());
    for _ in 0..total {
        let mut best = 0;
        for (i, w) in weights.iter().enumerate() {
            current[i] += w;
            if current[i] > current[best] {
                best = i;
            }
        }
        current[best] -= total;
        // Positions fit: a backend has far fewer than 2^32 servers.
        schedule.push(best as u32);
    }
    schedule
}

fn gcd(a: u32, b: u32) -> u32 {
    if b == 0 { a } else { gcd(b, a % b) }
}

impl Balancer {
    pub fn new(servers: Vec<Server>, balance: Balance) -> Balancer {
        let mut tiers: [Vec<(u32, u32)>; 4] = Default::default();
        for (index, server) in servers.iter().enumerate() {
            let tier = usize::from(server.weight == 0) + 2 * usize::from(server.backup);
            // Weight-0 tiers are balanced evenly among themselves.
            let weight = server.weight.clamp(1, MAX_WEIGHT);
            let index = u32::try_from(index).expect("fewer than 2^32 servers");
            tiers[tier].push((index, weight));
        }
        Balancer {
            servers,
            balance,
            tiers: tiers.map(Tier::new),
        }
    }

    pub fn servers(&self) -> &[Server] {
        &self.servers
    }

    pub fn balance(&self) -> Balance {
        self.balance
    }

    /// The servers to try for one request, in order: the balanced pick first, then the other
    /// up non-backup servers (for redispatch), then, only when every non-backup server is
    /// down, the up backup servers (balanced among themselves). Down servers are never
    /// yielded; each server at most once. Empty when every server is down.
    ///
    /// Lazy and allocation-free: the work happens in [`Candidates::next`], so a request that
    /// succeeds on its first server pays for the first pick only.
    pub fn candidates(&self, client: IpAddr) -> Candidates<'_> {
        Candidates {
            balancer: self,
            hash: match self.balance {
                Balance::Roundrobin => 0,
                Balance::Source => hash_ip(client),
            },
            tier: 0,
            pick: None,
            step: 0,
            non_backup_up: false,
        }
    }

    /// Whether any server (backups included) may take a request now. Unlike
    /// `candidates().next()` it moves no round-robin cursor, so asking (a health answer
    /// to another router, `explain`) never shifts what requests get.
    pub fn any_up(&self) -> bool {
        self.servers.iter().any(|s| s.health.is_up())
    }

    /// The last check result of the first down server, for the 503 message; `None` when no
    /// server is down (or none has been checked yet).
    pub fn last_failure(&self) -> Option<String> {
        self.servers
            .iter()
            .find(|s| !s.health.is_up())
            .and_then(|s| s.health.last_result())
    }

    /// The balanced pick of `tier`: a position in its members whose server is up.
    fn pick(&self, tier: &Tier, hash: u64) -> Option<u32> {
        let members = tier.members.len();
        if members == 1 {
            // The common single-server backend: no cursor, one atomic load.
            return self.member_up(tier, 0).then_some(0);
        }
        let slots = tier.schedule.len();
        // Multiply-shift maps the hash uniformly onto the slots (no modulo bias).
        let home = ((u128::from(hash) * slots as u128) >> 64) as usize;
        // Look at up to one slot per member, so large weights do not make an all-down tier
        // expensive. Round robin takes a fresh cursor slot each time, so a down server's share
        // goes to the servers after it in turn rather than all to its neighbour; `source` walks
        // the schedule from the client's home slot, so the move is the same for every request
        // of that client.
        let mut first = None;
        for step in 0..members.min(slots) {
            let slot = match self.balance {
                Balance::Roundrobin => tier.cursor.fetch_add(1, Ordering::Relaxed) % slots,
                Balance::Source => (home + step) % slots,
            };
            let pos = tier.schedule[slot];
            if self.member_up(tier, pos) {
                return Some(pos);
            }
            first.get_or_insert(pos);
        }
        // Then every member in order after the first slot's, which finds any up one.
        let from = first.unwrap_or_default() as usize;
        (1..members)
            .map(|step| ((from + step) % members) as u32)
            .find(|&pos| self.member_up(tier, pos))
    }

    fn member(&self, tier: &Tier, pos: u32) -> &Server {
        &self.servers[tier.members[pos as usize] as usize]
    }

    fn member_up(&self, tier: &Tier, pos: u32) -> bool {
        self.member(tier, pos).health.is_up()
    }
}

/// A fixed hash of the client address: the same on every router and across restarts, so a
/// client keeps its server when the VIP moves or the router restarts.
fn hash_ip(ip: IpAddr) -> u64 {
    // `::ffff:a.b.c.d` is the same client as `a.b.c.d` (dual-stack listeners).
    let bits: u64 = match ip.to_canonical() {
        IpAddr::V4(v4) => u64::from(v4.to_bits()),
        IpAddr::V6(v6) => {
            let bits = v6.to_bits();
            (bits as u64) ^ ((bits >> 64) as u64).rotate_left(29) ^ 0x9e37_79b9_7f4a_7c15
        }
    };
    // splitmix64's finalizer: neighbouring addresses land far apart.
    let mut z = bits.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The servers to try for one request; see [`Balancer::candidates`].
#[derive(Debug, Clone)]
pub struct Candidates<'a> {
    balancer: &'a Balancer,
    /// Client address hash (`source`), 0 for round robin.
    hash: u64,
    /// Current tier.
    tier: usize,
    /// Position of the current tier's pick in its members, once made.
    pick: Option<u32>,
    /// How many members after the pick have been looked at.
    step: u32,
    /// Some non-backup server was yielded: backups stay out.
    non_backup_up: bool,
}

impl<'a> Iterator for Candidates<'a> {
    type Item = &'a Server;

    fn next(&mut self) -> Option<&'a Server> {
        let balancer = self.balancer;
        while let Some(tier) = balancer.tiers.get(self.tier) {
            if self.tier == FIRST_BACKUP_TIER && self.non_backup_up {
                break;
            }
            let members = tier.members.len() as u32;
            match self.pick {
                None => {
                    if let Some(pos) = balancer.pick(tier, self.hash) {
                        self.pick = Some(pos);
                        self.step = 0;
                        self.non_backup_up |= self.tier < FIRST_BACKUP_TIER;
                        return Some(balancer.member(tier, pos));
                    }
                }
                Some(pick) => {
                    // The others in configuration order after the pick, so redispatch from
                    // different picks lands on different servers.
                    while self.step + 1 < members {
                        self.step += 1;
                        let pos = (pick + self.step) % members;
                        if balancer.member_up(tier, pos) {
                            return Some(balancer.member(tier, pos));
                        }
                    }
                }
            }
            self.tier += 1;
            self.pick = None;
        }
        self.tier = balancer.tiers.len();
        None
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, HashSet};
    use std::net::{Ipv4Addr, Ipv6Addr};

    use super::*;
    use crate::health::CheckSettings;

    /// `(name, weight, backup)` → a balancer with every server up.
    fn balancer(servers: &[(&str, u32, bool)], balance: Balance) -> Balancer {
        Balancer::new(
            servers
                .iter()
                .map(|&(name, weight, backup)| Server {
                    health: Health::new(name.to_owned()),
                    weight,
                    backup,
                    slots: None,
                    tls: None,
                })
                .collect(),
            balance,
        )
    }

    #[test]
    fn asking_whether_any_server_is_up_moves_no_cursor() {
        let client = IpAddr::from(Ipv4Addr::LOCALHOST);
        let pick = |b: &Balancer| {
            b.candidates(client)
                .next()
                .map(|s| s.health.addr().to_owned())
        };
        let b = balancer(&[("a", 1, false), ("b", 1, false)], Balance::Roundrobin);
        assert_eq!(pick(&b).as_deref(), Some("a"));
        for _ in 0..3 {
            assert!(b.any_up());
        }
        assert_eq!(
            pick(&b).as_deref(),
            Some("b"),
            "any_up shifted the rotation"
        );
        set_up(&b, "a", false);
        set_up(&b, "b", false);
        assert!(!b.any_up());
        let backup = balancer(&[("a", 1, false), ("z", 1, true)], Balance::Roundrobin);
        set_up(&backup, "a", false);
        assert!(backup.any_up(), "a backup counts");
    }

    fn set_up(b: &Balancer, name: &str, up: bool) {
        let settings = CheckSettings {
            rise: 1,
            fall: 1,
            ..CheckSettings::default()
        };
        let server = b
            .servers()
            .iter()
            .find(|s| s.health.addr() == name)
            .expect("known server");
        let result = if up {
            Ok(())
        } else {
            Err(format!("{name} refused"))
        };
        server.health.record(result, &settings);
        assert_eq!(server.health.is_up(), up);
    }

    fn names(c: Candidates<'_>) -> Vec<&str> {
        c.map(|s| s.health.addr()).collect()
    }

    fn client(n: u32) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from_bits(0x0a00_0000 + n))
    }

    /// How often each server is the first candidate over `requests` requests.
    fn first_picks(
        b: &Balancer,
        requests: u32,
        client_of: impl Fn(u32) -> IpAddr,
    ) -> HashMap<String, u32> {
        let mut counts = HashMap::new();
        for i in 0..requests {
            if let Some(s) = b.candidates(client_of(i)).next() {
                *counts.entry(s.health.addr().to_owned()).or_insert(0) += 1;
            }
        }
        counts
    }

    fn counts(pairs: &[(&str, u32)]) -> HashMap<String, u32> {
        pairs.iter().map(|&(n, c)| (n.to_owned(), c)).collect()
    }

    #[test]
    fn round_robin_shares_follow_weights() {
        struct Case {
            name: &'static str,
            servers: &'static [(&'static str, u32, bool)],
            requests: u32,
            want: &'static [(&'static str, u32)],
        }
        let cases = [
            Case {
                name: "three equal servers spread evenly",
                servers: &[("a", 1, false), ("b", 1, false), ("c", 1, false)],
                requests: 300,
                want: &[("a", 100), ("b", 100), ("c", 100)],
            },
            Case {
                name: "weights 2:1 give a 2:1 share",
                servers: &[("a", 2, false), ("b", 1, false)],
                requests: 300,
                want: &[("a", 200), ("b", 100)],
            },
            Case {
                name: "large weights reduce by their gcd",
                servers: &[("a", 200, false), ("b", 100, false)],
                requests: 30,
                want: &[("a", 20), ("b", 10)],
            },
            Case {
                name: "weights above the maximum are clamped",
                servers: &[("a", 100_000, false), ("b", 1, false)],
                requests: 257,
                want: &[("a", 256), ("b", 1)],
            },
            Case {
                name: "weight 0 is never the pick while a weighted server is up",
                servers: &[("a", 1, false), ("z", 0, false)],
                requests: 10,
                want: &[("a", 10)],
            },
            Case {
                name: "backups take no traffic while a non-backup server is up",
                servers: &[("a", 1, false), ("bk", 1, true)],
                requests: 10,
                want: &[("a", 10)],
            },
            Case {
                name: "only weight-0 servers share evenly",
                servers: &[("y", 0, false), ("z", 0, false)],
                requests: 10,
                want: &[("y", 5), ("z", 5)],
            },
        ];
        for case in cases {
            let b = balancer(case.servers, Balance::Roundrobin);
            let got = first_picks(&b, case.requests, client);
            assert_eq!(got, counts(case.want), "{}", case.name);
        }
    }

    #[test]
    fn smooth_schedule_interleaves() {
        let cases: [(&str, &[u32], &[u32]); 4] = [
            ("5:1:1", &[5, 1, 1], &[0, 0, 1, 0, 2, 0, 0]),
            ("2:1", &[2, 1], &[0, 1, 0]),
            ("equal", &[3, 3, 3], &[0, 1, 2]),
            ("empty", &[], &[]),
        ];
        for (name, weights, want) in cases {
            assert_eq!(smooth_schedule(weights), want, "{name}");
        }
    }

    #[test]
    fn source_affinity_is_stable_and_spreads() {
        let b = balancer(
            &[("a", 1, false), ("b", 1, false), ("c", 1, false)],
            Balance::Source,
        );
        let clients: Vec<IpAddr> = (0..3000).map(client).collect();
        let first = |ip: IpAddr| b.candidates(ip).next().map(|s| s.health.addr().to_owned());
        let before: Vec<_> = clients.iter().map(|&ip| first(ip)).collect();

        // Stable: asking again (interleaved with other clients) gives the same server.
        for (ip, server) in clients.iter().zip(&before) {
            assert_eq!(&first(*ip), server, "{ip}");
        }
        // Spread: each server gets a fair share of distinct clients (expected 1000).
        let share = first_picks(&b, 3000, client);
        for name in ["a", "b", "c"] {
            let n = share.get(name).copied().unwrap_or(0);
            assert!(
                (850..1150).contains(&n),
                "{name}: {n} of 3000 clients ({share:?})"
            );
        }
        // IPv4-mapped IPv6 is the same client.
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped());
        assert_eq!(first(mapped), first(client(7)));
        // IPv6 clients spread too.
        let v6 = first_picks(&b, 3000, |i| {
            IpAddr::V6(Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i as u16))
        });
        assert_eq!(v6.len(), 3, "{v6:?}");

        // A down server's clients move, everybody else's stay.
        set_up(&b, "b", false);
        for (ip, server) in clients.iter().zip(&before) {
            let now = first(*ip);
            if server.as_deref() == Some("b") {
                assert!(now.as_deref().is_some_and(|s| s != "b"), "{ip} still on b");
            } else {
                assert_eq!(&now, server, "{ip} moved although its server is up");
            }
        }
        // And come back when it is up again.
        set_up(&b, "b", true);
        let after: Vec<_> = clients.iter().map(|&ip| first(ip)).collect();
        assert_eq!(after, before);
    }

    #[test]
    fn source_honours_weights() {
        let b = balancer(&[("a", 2, false), ("b", 1, false)], Balance::Source);
        let share = first_picks(&b, 3000, client);
        let a = share.get("a").copied().unwrap_or(0);
        assert!((1850..2150).contains(&a), "a: {a} of 3000 ({share:?})");
    }

    #[test]
    fn candidates_by_health() {
        type Servers = &'static [(&'static str, u32, bool)];
        struct Case {
            name: &'static str,
            servers: Servers,
            down: &'static [&'static str],
            /// The candidates of the first request (the round-robin cursor starts at 0).
            want: &'static [&'static str],
        }
        const THREE: Servers = &[("a", 1, false), ("b", 1, false), ("c", 1, false)];
        const WITH_BACKUPS: Servers = &[
            ("a", 1, false),
            ("b", 1, false),
            ("bk1", 1, true),
            ("bk2", 1, true),
        ];
        let cases = [
            Case {
                name: "all up: pick then the others for redispatch",
                servers: THREE,
                down: &[],
                want: &["a", "b", "c"],
            },
            Case {
                name: "a down server is skipped",
                servers: THREE,
                down: &["a"],
                want: &["b", "c"],
            },
            Case {
                name: "backups are not candidates while a non-backup server is up",
                servers: WITH_BACKUPS,
                down: &["a"],
                want: &["b"],
            },
            Case {
                name: "backups when every non-backup server is down",
                servers: WITH_BACKUPS,
                down: &["a", "b"],
                want: &["bk1", "bk2"],
            },
            Case {
                name: "down backups are skipped too",
                servers: WITH_BACKUPS,
                down: &["a", "b", "bk1"],
                want: &["bk2"],
            },
            Case {
                name: "all down: empty",
                servers: WITH_BACKUPS,
                down: &["a", "b", "bk1", "bk2"],
                want: &[],
            },
            Case {
                name: "single server up",
                servers: &[("a", 1, false)],
                down: &[],
                want: &["a"],
            },
            Case {
                name: "single server down",
                servers: &[("a", 1, false)],
                down: &["a"],
                want: &[],
            },
            Case {
                name: "weight 0 comes after the weighted servers",
                servers: &[("z", 0, false), ("a", 1, false), ("b", 1, false)],
                down: &[],
                want: &["a", "b", "z"],
            },
            Case {
                name: "weight 0 is picked when the weighted servers are down, before backups",
                servers: &[("z", 0, false), ("a", 1, false), ("bk", 1, true)],
                down: &["a"],
                want: &["z"],
            },
            Case {
                name: "weight-0 backups come last",
                servers: &[("a", 1, false), ("bz", 0, true), ("bk", 1, true)],
                down: &["a"],
                want: &["bk", "bz"],
            },
        ];
        for case in cases {
            let b = balancer(case.servers, Balance::Roundrobin);
            for name in case.down {
                set_up(&b, name, false);
            }
            assert_eq!(names(b.candidates(client(1))), case.want, "{}", case.name);
        }
    }

    #[test]
    fn each_up_server_at_most_once_in_every_rotation() {
        let servers: &[(&str, u32, bool)] = &[
            ("a", 3, false),
            ("b", 1, false),
            ("c", 2, false),
            ("z", 0, false),
            ("bk", 1, true),
        ];
        for balance in [Balance::Roundrobin, Balance::Source] {
            let b = balancer(servers, balance);
            for down in [&[][..], &["a"], &["a", "c"], &["a", "b", "c", "z"]] {
                for name in down {
                    set_up(&b, name, false);
                }
                let up_non_backup: HashSet<&str> = ["a", "b", "c", "z"]
                    .into_iter()
                    .filter(|n| !down.contains(n))
                    .collect();
                let want: HashSet<&str> = if up_non_backup.is_empty() {
                    HashSet::from(["bk"])
                } else {
                    up_non_backup
                };
                for i in 0..20 {
                    let got = names(b.candidates(client(i)));
                    let unique: HashSet<&str> = got.iter().copied().collect();
                    assert_eq!(unique.len(), got.len(), "{balance:?} {down:?}: {got:?}");
                    assert_eq!(unique, want, "{balance:?} {down:?}: {got:?}");
                }
                for name in down {
                    set_up(&b, name, true);
                }
            }
        }
    }

    #[test]
    fn round_robin_spreads_a_down_servers_share() {
        let b = balancer(
            &[("a", 1, false), ("b", 1, false), ("c", 1, false)],
            Balance::Roundrobin,
        );
        set_up(&b, "b", false);
        let share = first_picks(&b, 300, client);
        assert_eq!(share.get("b"), None, "{share:?}");
        assert_eq!(share, counts(&[("a", 150), ("c", 150)]));
    }

    #[test]
    fn last_failure_names_the_first_down_server() {
        let b = balancer(
            &[("a", 1, false), ("b", 1, false), ("c", 1, false)],
            Balance::Roundrobin,
        );
        assert_eq!(b.last_failure(), None);
        set_up(&b, "c", false);
        set_up(&b, "b", false);
        assert_eq!(b.last_failure().as_deref(), Some("b refused"));
    }

    #[test]
    fn candidates_are_small_and_borrow_only() {
        // The per-request type holds no heap data: a reference and a few words.
        assert!(std::mem::size_of::<Candidates<'_>>() <= 5 * std::mem::size_of::<usize>());
    }

    #[test]
    fn balance_deserializes_lowercase() {
        #[derive(Deserialize)]
        struct B {
            balance: Balance,
        }
        let parse = |s: &str| toml::from_str::<B>(s).map(|b| b.balance);
        assert_eq!(
            parse("balance = \"roundrobin\"").ok(),
            Some(Balance::Roundrobin)
        );
        assert_eq!(parse("balance = \"source\"").ok(), Some(Balance::Source));
        assert!(parse("balance = \"leastconn\"").is_err());
        assert_eq!(Balance::default(), Balance::Roundrobin);
    }
}
