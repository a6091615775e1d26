//! Library target of the kernel programs; it exists so the workspace can depend on the
//! crate (aya-template layout). The programs live in `main.rs`.
#![no_std]
