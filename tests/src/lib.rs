//! Shared harness for the integration suites: in-process backends, routers on loopback.
pub mod netns;
pub mod netns_vip;
