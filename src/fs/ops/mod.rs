//! The `impl FtpFs` blocks, one file per concern: names, directories, reading files, writing files.

pub(in crate::fs) mod dirs;
pub(in crate::fs) mod files;
pub mod namespace;
pub mod writeback;
pub mod writes;
