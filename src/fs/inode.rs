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
/// A path keeps its number even after the kernel forgets it, so `find` and `rsync` see
/// stable inode numbers. A name that is deleted or replaced loses its number: a new file
/// there gets a new one, while handles still open on the old one keep theirs.
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

    /// Moves `ino`, and everything below it when it is a directory, to `name` in
    /// `new_parent`. Whatever had that path before loses it (it was replaced).
    pub fn rename(&mut self, ino: u64, new_parent: u64, name: &[u8]) -> Option<()> {
        let new_path = join_path(&self.nodes.get(&new_parent)?.path, name);
        let old_path = self.nodes.get(&ino)?.path.clone();
        if let Some(replaced) = self.by_path.remove(&new_path) {
            if replaced != ino {
                self.orphan_below(&new_path);
            }
        }
        let mut prefix = old_path.clone();
        prefix.push(b'/');
        let below: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(_, node)| node.path.starts_with(&prefix))
            .map(|(&i, _)| i)
            .collect();
        for child in below {
            let node = self.nodes.get_mut(&child)?;
            let mut path = new_path.clone();
            path.extend_from_slice(&node.path[old_path.len()..]);
            self.by_path.remove(&node.path);
            self.by_path.insert(path.clone(), child);
            node.path = path;
        }
        self.by_path.remove(&old_path);
        self.by_path.insert(new_path.clone(), ino);
        let node = self.nodes.get_mut(&ino)?;
        node.parent = new_parent;
        node.name = name.to_vec();
        node.path = new_path;
        Some(())
    }

    /// Forgets the number of `name` in `parent` and of everything below it (deleted): a
    /// file made there later gets a new one.
    pub fn unlink(&mut self, parent: u64, name: &[u8]) {
        if let Some(dir) = self.nodes.get(&parent) {
            let path = join_path(&dir.path, name);
            self.by_path.remove(&path);
            self.orphan_below(&path);
        }
    }

    fn orphan_below(&mut self, path: &[u8]) {
        let mut prefix = path.to_vec();
        prefix.push(b'/');
        self.by_path.retain(|p, _| !p.starts_with(&prefix));
    }

    /// The inode of `name` in `parent`, if it has one already.
    pub fn existing_child(&self, parent: u64, name: &[u8]) -> Option<u64> {
        let path = join_path(&self.nodes.get(&parent)?.path, name);
        self.by_path.get(&path).copied()
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
    fn renames_move_whole_subtrees() {
        let mut table = InodeTable::new(b"top".to_vec());
        let dir = table.child(ROOT_INODE, b"d").unwrap();
        let file = table.child(dir, b"f").unwrap();
        let sub = table.child(dir, b"sub").unwrap();
        let deep = table.child(sub, b"g").unwrap();
        let other = table.child(ROOT_INODE, b"e").unwrap();
        table.rename(dir, ROOT_INODE, b"e").unwrap();
        assert_eq!(table.get(file).unwrap().path, b"top/e/f");
        assert_eq!(table.get(deep).unwrap().path, b"top/e/sub/g");
        assert_eq!(
            table.child(ROOT_INODE, b"e"),
            Some(dir),
            "the renamed directory"
        );
        assert_ne!(
            table.child(ROOT_INODE, b"d"),
            Some(dir),
            "the old name is free"
        );
        assert!(
            table.get(other).is_some(),
            "the replaced inode stays for open handles"
        );
        table.unlink(ROOT_INODE, b"e");
        assert_eq!(table.existing_child(ROOT_INODE, b"e"), None);
        assert_eq!(table.existing_child(dir, b"f"), None);
        assert_ne!(table.child(ROOT_INODE, b"e"), Some(dir));
    }

    #[test]
    fn join_handles_roots() {
        assert_eq!(join_path(b"", b"x"), b"x");
        assert_eq!(join_path(b"/", b"x"), b"/x");
        assert_eq!(join_path(b"pub", b"x"), b"pub/x");
        assert_eq!(join_path(b"/srv/", b"x"), b"/srv/x");
    }
}
