//! scope-router: an OpenStackoïd scope-interpreting edge router.

pub mod catalog;
pub mod config;
pub mod decision;
pub mod haproxy;
pub mod problem;
pub mod report;
pub mod routing;
