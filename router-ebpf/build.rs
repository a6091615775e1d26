//! Relinks the programs when `bpf-linker` changes: cargo does not know the linker shapes
//! the object (its BTF, e.g. 0.10.0 left a union name the kernel rejects), so `cargo xtask
//! setup` replacing it would otherwise leave the old object in place. The aya-template
//! way: the linker's mtime becomes a build input. A different bpf-linker put earlier on
//! PATH is not noticed; watching PATH would rebuild far too often.

fn main() {
    // Host builds (`cargo check --workspace`) need no linker.
    if let Ok(linker) = which::which("bpf-linker") {
        println!("cargo:rerun-if-changed={}", linker.display());
    }
}
