//! Metadata: inode numbers, attributes, cached directory listings, names.

pub mod attr;
pub mod dircache;
pub mod inode;
pub(in crate::fs) mod names;
