//! The kernel programs, built by `build.rs` and embedded so the binary is self-contained.

/// The `router-ebpf` ELF object; empty when `build.rs` had neither a toolchain nor an
/// up-to-date prebuilt object.
pub(crate) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/router-ebpf"));

/// Where the embedded object came from: `"built"`, `"prebuilt"` or `"missing"`.
pub const OBJECT_ORIGIN: &str = env!("ROUTER_EBPF_ORIGIN");

/// Whether this binary carries the kernel programs at all.
pub fn object_built() -> bool {
    !OBJECT.is_empty()
}

#[cfg(test)]
mod tests {
    #[test]
    fn prebuilt_object_matches_the_kernel_sources() {
        // The checked-in object serves machines without nightly + rust-src; it must be
        // rebuilt whenever router-ebpf or router-common change.
        assert_eq!(
            env!("ROUTER_EBPF_PREBUILT_HASH"),
            env!("ROUTER_EBPF_SOURCE_HASH"),
            "router-ebpf/prebuilt is stale: run `SCOPE_ROUTER_UPDATE_PREBUILT=1 cargo build -p router-userspace` and commit router-ebpf/prebuilt/"
        );
    }
}
