//! Inode numbers: one per remote path, stable for the life of the mount.

use std::collections::HashMap;

/// The root directory's inode (FUSE's fixed number).
pub const ROOT_INODE: u64 = 1;

/// What the table knows of one inode.
#[derive(Debug, Clone)]
pub struct Node {
    /// Parent directory's inode (the root is its own parent).
    pub parent: u64,
    /// Name within the parent (empty for the root).
    pub name: Vec<u8>,
    /// Path on the server, as sent in commands.
    pub path: Vec<u8>,
}

/// Maps inode numbers to remote paths and back.
///
/// Entries are never reused or removed while mounted: a path keeps its number even after
/// the kernel forgets it, so `find` and `rsync` see stable inode numbers.
#[derive(Debug)]
pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<Vec<u8>, u64>,
    next: u64,
}

impl InodeTable {
    /// A table holding only the root, at `root_path` on the server.
    pub fn new(root_path: Vec<u8>) -> Self {
        let mut table = Self {
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            next: ROOT_INODE + 1,
        };
        table.by_path.insert(root_path.clone(), ROOT_INODE);
        table.nodes.insert(
            ROOT_INODE,
            Node {
                parent: ROOT_INODE,
                name: Vec::new(),
                path: root_path,
            },
        );
        table
    }

    /// The node behind `ino`.
    pub fn get(&self, ino: u64) -> Option<&Node> {
        self.nodes.get(&ino)
    }

    /// The inode of `name` in `parent`, created on first sight.
    pub fn child(&mut self, parent: u64, name: &[u8]) -> Option<u64> {
        let path = join_path(&self.nodes.get(&parent)?.path, name);
        if let Some(&ino) = self.by_path.get(&path) {
            return Some(ino);
        }
        let ino = self.next;
        self.next += 1;
        self.by_path.insert(path.clone(), ino);
        self.nodes.insert(
            ino,
            Node {
                parent,
                name: name.to_vec(),
                path,
            },
        );
        Some(ino)
    }

    /// Inodes handed out so far, the root included.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: the root is always there.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

/// `dir/name`, where an empty `dir` is the login directory.
pub fn join_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut path = Vec::with_capacity(dir.len() + 1 + name.len());
    path.extend_from_slice(dir);
    if !dir.is_empty() && !dir.ends_with(b"/") {
        path.push(b'/');
    }
    path.extend_from_slice(name);
    path
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_numbers_are_stable() {
        let mut table = InodeTable::new(Vec::new());
        let a = table.child(ROOT_INODE, b"a").unwrap();
        let b = table.child(a, b"b c").unwrap();
        assert_eq!(table.get(b).unwrap().path, b"a/b c");
        assert_eq!(table.child(ROOT_INODE, b"a"), Some(a));
        assert_eq!(table.child(a, b"b c"), Some(b));
        assert_eq!(table.child(999, b"x"), None);
        assert_eq!(table.len(), 3);
    }

    #[test]
    fn join_handles_roots() {
        assert_eq!(join_path(b"", b"x"), b"x");
        assert_eq!(join_path(b"/", b"x"), b"/x");
        assert_eq!(join_path(b"pub", b"x"), b"pub/x");
        assert_eq!(join_path(b"/srv/", b"x"), b"/srv/x");
    }
}
