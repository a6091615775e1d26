//! Shared harness for the integration suites: in-process backends, routers on loopback.

pub mod capture;
pub mod client;
pub mod echo;
pub mod lab;
pub mod pattern;
pub mod scrape;
