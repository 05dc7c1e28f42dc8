//! Inode numbers: one per remote path, stable for the life of the mount.

use std::collections::HashMap;
use std::sync::Arc;

/// The root directory's inode (FUSE's fixed number).
pub const ROOT_INODE: u64 = 1;

/// What the table knows of one inode.
#[derive(Debug, Clone)]
pub struct Node {
    /// Parent directory's inode (the root is its own parent).
    pub parent: u64,
    /// Path on the server, as sent in commands; shared with the table's index, since a
    /// million-entry walk keeps a million of them.
    pub path: Arc<[u8]>,
    /// Where the name within the parent starts in `path`.
    name_at: u32,
    /// References the kernel holds (entries handed to it, less those it forgot).
    lookups: u64,
    /// Nodes whose parent this is.
    children: u32,
    /// The sweep generation in which the node was last resolved by name (see
    /// [`InodeTable::sweep_if_due`]).
    seen: u32,
}

impl Node {
    /// Name within the parent (empty for the root).
    pub fn name(&self) -> &[u8] {
        &self.path[self.name_at as usize..]
    }
}

/// Maps inode numbers to remote paths and back.
///
/// A path keeps its number while the kernel holds it (its entry, an open file), so `find`
/// and `rsync` see stable inode numbers; once the kernel forgets a node and nothing below
/// it is known, the node goes, so a long-lived mount does not grow with every name it
/// ever saw. A name that is deleted or replaced loses its number: a new file there gets
/// a new one, while handles still open on the old one keep theirs.
#[derive(Debug)]
pub struct InodeTable {
    nodes: HashMap<u64, Node>,
    by_path: HashMap<Arc<[u8]>, u64>,
    next: u64,
    /// Table size at which nodes the kernel holds no reference to are swept.
    sweep_at: usize,
    /// Nodes without a reference from the kernel.
    unreferenced: usize,
    /// Nodes made or forgotten since the last sweep: sweeps, which look at every node,
    /// come at most once per so many changes.
    activity: usize,
    /// Sweeps so far. A node resolved by name since the last sweep is spared: a lookup
    /// may be about to hand it to the kernel.
    generation: u32,
}

/// The table is swept of unreferenced nodes when it doubles, or when the kernel has
/// forgotten half of it, and never below this size.
const MIN_SWEEP_AT: usize = 16_384;

impl InodeTable {
    /// A table holding only the root, at `root_path` on the server.
    pub fn new(root_path: Vec<u8>) -> Self {
        let mut table = Self {
            nodes: HashMap::new(),
            by_path: HashMap::new(),
            next: ROOT_INODE + 1,
            sweep_at: MIN_SWEEP_AT,
            unreferenced: 0,
            activity: 0,
            generation: 0,
        };
        let root_path: Arc<[u8]> = root_path.into();
        table.by_path.insert(root_path.clone(), ROOT_INODE);
        table.nodes.insert(
            ROOT_INODE,
            Node {
                parent: ROOT_INODE,
                name_at: root_path.len() as u32,
                path: root_path,
                lookups: 0,
                children: 0,
                seen: 0,
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
        if let Some(&ino) = self.by_path.get(path.as_slice()) {
            if let Some(node) = self.nodes.get_mut(&ino) {
                node.seen = self.generation;
            }
            return Some(ino);
        }
        let ino = self.next;
        self.next += 1;
        let name_at = (path.len() - name.len()) as u32;
        let path: Arc<[u8]> = path.into();
        self.by_path.insert(path.clone(), ino);
        self.nodes.insert(
            ino,
            Node {
                parent,
                name_at,
                path,
                lookups: 0,
                children: 0,
                seen: self.generation,
            },
        );
        if let Some(dir) = self.nodes.get_mut(&parent) {
            dir.children += 1;
        }
        self.activity += 1;
        self.unreferenced += 1;
        Some(ino)
    }

    /// The kernel took a reference to `ino` (an entry reply).
    pub fn remember(&mut self, ino: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            if node.lookups == 0 && ino != ROOT_INODE {
                self.unreferenced = self.unreferenced.saturating_sub(1);
            }
            node.lookups += 1;
        }
    }

    /// The kernel dropped `count` references to `ino`. Its number stays until a sweep
    /// finds nothing holding it (see [`Self::sweep_if_due`]).
    pub fn forget(&mut self, ino: u64, count: u64) {
        if let Some(node) = self.nodes.get_mut(&ino) {
            let before = node.lookups;
            node.lookups = before.saturating_sub(count);
            if before > 0 && node.lookups == 0 && ino != ROOT_INODE {
                self.unreferenced += 1;
                self.activity += 1;
            }
        }
    }

    /// Whether a sweep would be worth it: the table doubled since the last one, or half
    /// of it is not referenced by the kernel; and enough changed since the last sweep
    /// that sweeps cost little per change.
    pub fn sweep_due(&self) -> bool {
        let len = self.nodes.len();
        let worth_it = len >= self.sweep_at || self.unreferenced >= MIN_SWEEP_AT.max(len / 2);
        worth_it && self.activity >= (MIN_SWEEP_AT / 4).max(len / 8)
    }

    /// When due, drops the nodes nothing holds: no reference from the kernel, no node
    /// below, not resolved by name since the last sweep, and not `in_use` (a file whose
    /// upload is under way). Returns the nodes that went.
    pub fn sweep_if_due(&mut self, in_use: impl Fn(u64) -> bool) -> Vec<u64> {
        if !self.sweep_due() {
            return Vec::new();
        }
        let generation = self.generation;
        let droppable =
            |node: &Node| node.lookups == 0 && node.children == 0 && node.seen < generation;
        // Leaves first; a directory whose last child goes is looked at again.
        let mut queue: Vec<u64> = self
            .nodes
            .iter()
            .filter(|(&ino, node)| ino != ROOT_INODE && droppable(node))
            .map(|(&ino, _)| ino)
            .collect();
        let mut gone = Vec::new();
        while let Some(ino) = queue.pop() {
            let unused = self.nodes.get(&ino).is_some_and(&droppable) && !in_use(ino);
            if ino == ROOT_INODE || !unused {
                continue;
            }
            let Some(node) = self.nodes.remove(&ino) else {
                continue;
            };
            if self.by_path.get(&node.path) == Some(&ino) {
                self.by_path.remove(&node.path);
            }
            gone.push(ino);
            if let Some(parent) = self.nodes.get_mut(&node.parent) {
                parent.children = parent.children.saturating_sub(1);
                if parent.children == 0 {
                    queue.push(node.parent);
                }
            }
        }
        self.generation = generation.wrapping_add(1);
        self.unreferenced = self.unreferenced.saturating_sub(gone.len());
        self.activity = 0;
        self.sweep_at = MIN_SWEEP_AT.max(2 * self.nodes.len());
        gone
    }

    /// Moves `ino`, and everything below it when it is a directory, to `name` in
    /// `new_parent`. Whatever had that path before loses it (it was replaced).
    pub fn rename(&mut self, ino: u64, new_parent: u64, name: &[u8]) -> Option<()> {
        let new_path = join_path(&self.nodes.get(&new_parent)?.path, name);
        let old_path = self.nodes.get(&ino)?.path.clone();
        if let Some(replaced) = self.by_path.remove(&*new_path) {
            if replaced != ino {
                self.orphan_below(&new_path);
            }
        }
        let mut prefix = old_path.to_vec();
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
            node.name_at = (node.name_at as usize + new_path.len() - old_path.len()) as u32;
            let path: Arc<[u8]> = path.into();
            self.by_path.remove(&node.path);
            self.by_path.insert(path.clone(), child);
            node.path = path;
        }
        self.by_path.remove(&old_path);
        let name_at = (new_path.len() - name.len()) as u32;
        let new_path: Arc<[u8]> = new_path.into();
        self.by_path.insert(new_path.clone(), ino);
        let node = self.nodes.get_mut(&ino)?;
        let old_parent = std::mem::replace(&mut node.parent, new_parent);
        node.name_at = name_at;
        node.path = new_path;
        if old_parent != new_parent {
            if let Some(dir) = self.nodes.get_mut(&old_parent) {
                dir.children = dir.children.saturating_sub(1);
            }
            if let Some(dir) = self.nodes.get_mut(&new_parent) {
                dir.children += 1;
            }
        }
        Some(())
    }

    /// Forgets the number of `name` in `parent` and of everything below it (deleted): a
    /// file made there later gets a new one.
    pub fn unlink(&mut self, parent: u64, name: &[u8]) {
        if let Some(dir) = self.nodes.get(&parent) {
            let path = join_path(&dir.path, name);
            self.by_path.remove(path.as_slice());
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
        self.by_path.get(path.as_slice()).copied()
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
        assert_eq!(table.get(b).unwrap().path[..], b"a/b c"[..]);
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
        assert_eq!(table.get(file).unwrap().path[..], b"top/e/f"[..]);
        assert_eq!(table.get(deep).unwrap().path[..], b"top/e/sub/g"[..]);
        assert_eq!(table.get(dir).unwrap().name(), b"e");
        assert_eq!(table.get(deep).unwrap().name(), b"g");
        // A longer name moves where the names below start.
        table.rename(sub, ROOT_INODE, b"a longer name").unwrap();
        assert_eq!(
            table.get(deep).unwrap().path[..],
            b"top/a longer name/g"[..]
        );
        assert_eq!(table.get(deep).unwrap().name(), b"g");
        assert_eq!(table.get(sub).unwrap().name(), b"a longer name");
        assert_eq!(table.get(ROOT_INODE).unwrap().name(), b"");
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

    /// Sweeps until one is due and done (the first spares what was resolved before it).
    fn sweep_twice(table: &mut InodeTable, in_use: impl Fn(u64) -> bool + Copy) -> Vec<u64> {
        let mut gone = Vec::new();
        for _ in 0..2 {
            table.sweep_at = 0;
            table.activity = usize::MAX;
            gone.extend(table.sweep_if_due(in_use));
        }
        gone.sort();
        gone
    }

    #[test]
    fn forgotten_nodes_go_and_take_unneeded_parents_with_them() {
        let mut table = InodeTable::new(Vec::new());
        let dir = table.child(ROOT_INODE, b"d").unwrap();
        let file = table.child(dir, b"f").unwrap();
        let busy = table.child(dir, b"busy").unwrap();
        for ino in [dir, file, file, busy] {
            table.remember(ino);
        }
        let none = |_| false;
        // Still referenced once.
        table.forget(file, 1);
        assert!(sweep_twice(&mut table, none).is_empty());
        table.forget(file, 1);
        assert_eq!(sweep_twice(&mut table, none), vec![file]);
        assert!(table.get(file).is_none());
        assert_eq!(table.existing_child(dir, b"f"), None);
        // A file being uploaded stays, and so does its directory.
        table.forget(busy, 1);
        table.forget(dir, 1);
        assert!(sweep_twice(&mut table, |ino| ino == busy).is_empty());
        assert!(table.get(dir).is_some(), "the parent of a busy file went");
        // Once it is done, both go.
        assert_eq!(sweep_twice(&mut table, none), vec![dir, busy]);
        assert_eq!(table.len(), 1);
        // The same name gets a number again.
        assert!(table.child(ROOT_INODE, b"d").is_some());
        // The root never goes.
        table.remember(ROOT_INODE);
        table.forget(ROOT_INODE, 5);
        sweep_twice(&mut table, none);
        assert!(table.get(ROOT_INODE).is_some());
    }

    #[test]
    fn a_name_resolved_since_the_last_sweep_is_spared() {
        let mut table = InodeTable::new(Vec::new());
        let listed = table.child(ROOT_INODE, b"listed").unwrap();
        table.sweep_at = 0;
        table.activity = usize::MAX;
        // Resolved in this generation: a lookup may be handing it to the kernel.
        assert!(table.sweep_if_due(|_| false).is_empty());
        table.sweep_at = 0;
        table.activity = usize::MAX;
        assert_eq!(table.sweep_if_due(|_| false), vec![listed]);
    }

    #[test]
    fn sweeps_come_when_the_table_doubles_or_the_kernel_forgot_half() {
        let mut table = InodeTable::new(Vec::new());
        let dir = table.child(ROOT_INODE, b"d").unwrap();
        table.remember(dir);
        let kept = table.child(dir, b"kept").unwrap();
        table.remember(kept);
        let listed: Vec<u64> = (0..MIN_SWEEP_AT)
            .map(|i| table.child(dir, format!("listed-{i}").as_bytes()).unwrap())
            .collect();
        assert!(table.sweep_due());
        // The first sweep spares names resolved since the last one; the next takes them.
        assert!(table.sweep_if_due(|_| false).is_empty());
        assert!(!table.sweep_due(), "not again until it doubles");
        table.sweep_at = 0;
        assert!(!table.sweep_due(), "not again so soon");
        table.activity = usize::MAX;
        assert_eq!(table.sweep_if_due(|_| false).len(), MIN_SWEEP_AT);
        assert_eq!(table.len(), 3);
        assert!(table.get(kept).is_some() && table.get(dir).is_some());
        assert!(listed.iter().all(|&ino| table.get(ino).is_none()));
        // The kernel forgetting half the table makes one due.
        let many: Vec<u64> = (0..2 * MIN_SWEEP_AT)
            .map(|i| table.child(dir, format!("seen-{i}").as_bytes()).unwrap())
            .collect();
        for &ino in &many {
            table.remember(ino);
        }
        table.sweep_at = usize::MAX;
        table.activity = 0;
        assert!(!table.sweep_due());
        for &ino in &many[..MIN_SWEEP_AT + 2] {
            table.forget(ino, 1);
        }
        assert!(table.sweep_due());
    }

    #[test]
    fn renames_move_children_counts() {
        let mut table = InodeTable::new(Vec::new());
        let a = table.child(ROOT_INODE, b"a").unwrap();
        let b = table.child(ROOT_INODE, b"b").unwrap();
        let f = table.child(a, b"f").unwrap();
        for ino in [a, b, f] {
            table.remember(ino);
        }
        table.rename(f, b, b"f").unwrap();
        // a holds nothing now and goes when forgotten; b holds f.
        table.forget(a, 1);
        table.forget(b, 1);
        assert_eq!(sweep_twice(&mut table, |_| false), vec![a]);
        table.forget(f, 1);
        assert_eq!(sweep_twice(&mut table, |_| false), vec![b, f]);
    }

    #[test]
    fn join_handles_roots() {
        assert_eq!(join_path(b"", b"x"), b"x");
        assert_eq!(join_path(b"/", b"x"), b"/x");
        assert_eq!(join_path(b"pub", b"x"), b"pub/x");
        assert_eq!(join_path(b"/srv/", b"x"), b"/srv/x");
    }
}
