//! scope-router: an OpenStackoïd scope-interpreting edge router.
pub mod ebpf;
