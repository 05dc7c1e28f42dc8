//! Cached file data: blocks in memory over blocks on disk.

pub mod disk;
pub mod memory;
pub mod version;
