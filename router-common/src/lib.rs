//! Map key/value types and map names shared by the kernel programs and the userspace loader.
#![no_std]
