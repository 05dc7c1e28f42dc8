//! Reading files from the server: streams, read-ahead, parallel ranges.

pub(in crate::fs) mod parallel;
pub(in crate::fs) mod readahead;
pub mod reader;
pub mod transfer;
