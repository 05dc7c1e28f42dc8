//! Writing files to the server: uploads, staging files, cleaning up what failed uploads leave.

pub mod file;
pub(in crate::fs) mod follower;
pub(in crate::fs) mod janitor;
pub mod journal;
pub mod queue;
pub(in crate::fs) mod staging;
pub(in crate::fs) mod sweep;
pub(in crate::fs) mod upload;
pub mod writer;
