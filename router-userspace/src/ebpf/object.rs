//! The kernel programs, built by `build.rs` and embedded so the binary is self-contained.

/// The `router-ebpf` ELF object; empty when `build.rs` found no eBPF toolchain (see
/// `cargo xtask setup`).
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/router-ebpf"));

/// Whether `build.rs` embedded the object: `"built"` or `"missing"`.
pub const OBJECT_ORIGIN: &str = env!("ROUTER_EBPF_ORIGIN");

/// Whether this binary carries the kernel programs at all.
pub fn object_built() -> bool {
    !OBJECT.is_empty()
}
