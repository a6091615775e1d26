//! scope-router: an OpenStackoïd scope-interpreting edge router.

pub mod catalog;
pub mod config;
pub mod decision;
pub mod ebpf;
pub mod problem;
pub mod report;
pub mod routing;
pub mod vip;
