//! scope-router kernel programs: `steer` (sk_lookup) hands every TCP connection for a
//! served VIP:port to the proxy's single listening socket; `guard` (XDP on the VIP
//! interface) counts per VIP:port and drops unserved ports and denied sources.
//!
//! Built for `bpfel-unknown-none` by `router-userspace/build.rs`; on the host this
//! compiles to an empty program so workspace-wide `cargo check` keeps working.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod programs;

#[cfg(not(target_arch = "bpf"))]
fn main() {}
