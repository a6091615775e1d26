//! The harness shared by the privileged suites of `router-userspace` (its end-to-end
//! CLI suite) and of `integration-tests` (eBPF steering, VIP): one RAII network-namespace
//! guard per test. Depends on nothing of the router, so router-userspace can use it as a
//! dev-dependency.

pub mod ci;
pub mod keepalived;
pub mod netns;
#[cfg(feature = "pki")]
pub mod pki;
pub mod segment;
pub mod tool;
