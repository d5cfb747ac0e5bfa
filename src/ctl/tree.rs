//! `vdi tree`: dog's tree view of every VDI (dog/vdi.c `vdi_tree`,
//! dog/treeview.c), over the one listing ([`Ctx::parse_vdi`], headers only).
//!
//! A VDI hangs under the VDI whose vid is its parent_vdi_id *and* which has
//! the same name, so a snapshot chain is one tree and a clone (another name)
//! starts a tree of its own. A snapshot is labelled with its creation time
//! (`[%Y-%m-%d %H:%M]`, local time), anything else `(you are here)`, bold
//! when standard output is a terminal.
//!
//! Nodes are found by vid through a map where dog searches the whole tree
//! for each VDI, so 10,000 VDIs cost 10,000 lookups, not 10^8 comparisons;
//! the result is the same because live vids are unique. dog's recursions
//! are loops here, so a chain of thousands of snapshots cannot overflow the
//! stack.

use super::dog::Ctx;
use super::{EXIT_SUCCESS, EXIT_SYSFAIL, R};
use crate::dogfmt::{fmt_date_minutes, Tz};
use crate::proto::inode::InodeHeader;
use std::collections::HashMap;
use std::io::Write;

const TEXT_BOLD: &[u8] = b"\x1b[1m";
const TEXT_NORMAL: &[u8] = b"\x1b[0m";

/// The root's index in [`Tree::nodes`].
const ROOT: usize = 0;

struct Node {
    /// The name as stored (bytes up to the first NUL; names need not be UTF-8).
    name: Vec<u8>,
    label: Vec<u8>,
    pvid: u32,
    highlight: bool,
    parent: usize,
    children: Vec<usize>,
}

/// dog's `vdi_tree` list structure, built in vid order as the listing
/// yields the VDIs.
pub struct Tree {
    nodes: Vec<Node>,
    by_vid: HashMap<u32, usize>,
}

impl Default for Tree {
    fn default() -> Self {
        Tree {
            nodes: vec![Node {
                name: Vec::new(),
                label: Vec::new(),
                pvid: 0,
                highlight: false,
                parent: ROOT,
                children: Vec::new(),
            }],
            by_vid: HashMap::new(),
        }
    }
}

/// The name of an inode as dog's `%s` sees it.
fn name_bytes(h: &InodeHeader) -> Vec<u8> {
    let end = h
        .raw_name
        .iter()
        .position(|&b| b == 0)
        .unwrap_or(h.raw_name.len());
    h.raw_name[..end].to_vec()
}

impl Tree {
    /// `print_vdi_tree` + `add_vdi_tree` for one VDI of the listing.
    pub fn add_inode(&mut self, h: &InodeHeader, highlight: bool) {
        let label = if h.is_snapshot() {
            format!(
                "[{}]",
                fmt_date_minutes((h.create_time >> 32) as i64, Tz::Local)
            )
        } else {
            "(you are here)".to_string()
        };
        self.add(
            name_bytes(h),
            label.into_bytes(),
            h.vdi_id,
            h.parent_vdi_id,
            highlight && !h.is_snapshot(),
        );
    }

    /// `add_vdi_tree`: under its parent if that is already in the tree,
    /// else at the top level (compaction moves it later).
    fn add(&mut self, name: Vec<u8>, label: Vec<u8>, vid: u32, pvid: u32, highlight: bool) {
        let parent = self.find(pvid, &name).unwrap_or(ROOT);
        let i = self.nodes.len();
        self.nodes.push(Node {
            name,
            label,
            pvid,
            highlight,
            parent,
            children: Vec::new(),
        });
        self.nodes[parent].children.push(i);
        // A duplicate vid (impossible among live VDIs) keeps the first, as
        // dog's depth-first search finds the first.
        self.by_vid.entry(vid).or_insert(i);
    }

    /// `find_vdi`: the node with this vid and name.
    fn find(&self, vid: u32, name: &[u8]) -> Option<usize> {
        let i = *self.by_vid.get(&vid)?;
        (self.nodes[i].name == name).then_some(i)
    }

    /// Is `a` the node `b` or one of its ancestors?
    fn is_ancestor(&self, a: usize, mut b: usize) -> bool {
        loop {
            if a == b {
                return true;
            }
            if b == ROOT {
                return false;
            }
            b = self.nodes[b].parent;
        }
    }

    /// `compaction`: every node moves (to the end of the children) under its
    /// parent when that arrived after it, depth first, visiting the
    /// children of a list as dog's list walk does (the next one is taken
    /// before the current one moves away). A move that would make a cycle
    /// (corrupt parent ids, where dog would loop) is not made.
    fn compaction(&mut self) {
        // (node, index of its next child to visit)
        let mut stack: Vec<(usize, usize)> = vec![(ROOT, 0)];
        while let Some(&mut (parent, ref mut at)) = stack.last_mut() {
            let i = *at;
            let Some(&child) = self.nodes[parent].children.get(i) else {
                stack.pop();
                continue;
            };
            let n = &self.nodes[child];
            match self.find(n.pvid, &n.name) {
                Some(np) if np != parent && !self.is_ancestor(child, np) => {
                    self.nodes[parent].children.remove(i);
                    self.nodes[np].children.push(child);
                    self.nodes[child].parent = np;
                    // The next child now sits at index i.
                }
                _ => *at += 1,
            }
            stack.push((child, 0));
        }
    }

    /// `dump_tree`: the whole text.
    pub fn render(mut self) -> Vec<u8> {
        self.compaction();
        let mut r = Render {
            out: Vec::new(),
            width: Vec::new(),
            more: Vec::new(),
        };
        for &top in &self.nodes[ROOT].children {
            let n = &self.nodes[top];
            r.out.extend_from_slice(&n.name);
            r.set(0, n.name.len(), false);
            r.dump(&self.nodes, top);
        }
        r.out
    }
}

struct Render {
    out: Vec<u8>,
    /// Per level: the width of the label printed at that level on the
    /// current path, and whether more siblings follow below it.
    width: Vec<usize>,
    more: Vec<bool>,
}

impl Render {
    fn set(&mut self, level: usize, width: usize, more: bool) {
        if self.width.len() <= level {
            self.width.resize(level + 1, 0);
            self.more.resize(level + 1, false);
        }
        self.width[level] = width;
        self.more[level] = more;
    }

    fn spaces(&mut self, n: usize) {
        self.out.resize(self.out.len() + n, b' ');
    }

    /// `indent`: the connector before a label at `level`.
    fn indent(&mut self, level: usize, first: bool, last: bool) {
        if first {
            self.out
                .extend_from_slice(if last { b"---" } else { b"-+-" });
            return;
        }
        for lvl in 0..level - 1 {
            self.spaces(self.width[lvl] + 1);
            let bar = self.more.get(lvl + 1).copied().unwrap_or(false);
            self.out.extend_from_slice(if bar { b"| " } else { b"  " });
        }
        self.spaces(self.width[level - 1] + 1);
        self.out.extend_from_slice(if last { b"`-" } else { b"|-" });
    }

    /// `_dump_tree` from a top-level node, as a loop.
    fn dump(&mut self, nodes: &[Node], top: usize) {
        // (node, its level, index of its next child)
        let mut stack: Vec<(usize, usize, usize)> = Vec::new();
        self.enter(nodes, top, 1, true, true, &mut stack);
        while let Some(&mut (node, level, ref mut next)) = stack.last_mut() {
            let children = &nodes[node].children;
            let Some(&c) = children.get(*next) else {
                stack.pop();
                continue;
            };
            let first = *next == 0;
            let last = *next + 1 == children.len();
            *next += 1;
            self.enter(nodes, c, level + 1, first, last, &mut stack);
        }
    }

    /// Prints one node's connector and label; a node with children is
    /// pushed to be walked.
    fn enter(
        &mut self,
        nodes: &[Node],
        i: usize,
        level: usize,
        first: bool,
        last: bool,
        stack: &mut Vec<(usize, usize, usize)>,
    ) {
        let n = &nodes[i];
        self.indent(level, first, last);
        if n.highlight {
            self.out.extend_from_slice(TEXT_BOLD);
        }
        self.out.extend_from_slice(&n.label);
        if n.highlight {
            self.out.extend_from_slice(TEXT_NORMAL);
        }
        if n.children.is_empty() {
            self.out.push(b'\n');
            return;
        }
        self.set(level, n.label.len(), !last);
        stack.push((i, level, 0));
    }
}

/// `dog vdi tree`.
pub async fn vdi_tree(ctx: &Ctx) -> R<i32> {
    // dog: `highlight` unless stdout is not a terminal (or -r, which tree
    // does not take).
    // SAFETY: isatty only inspects the descriptor.
    let highlight = unsafe { libc::isatty(libc::STDOUT_FILENO) } == 1 && !ctx.raw;
    let mut tree = Tree::default();
    if ctx
        .parse_vdi(false, None, |e, _| tree.add_inode(&e.header, highlight))
        .await
        < 0
    {
        return Ok(EXIT_SYSFAIL);
    }
    let _ = std::io::stdout().lock().write_all(&tree.render());
    Ok(EXIT_SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(t: Tree) -> String {
        String::from_utf8(t.render()).unwrap()
    }

    fn add(t: &mut Tree, name: &str, label: &str, vid: u32, pvid: u32) {
        t.add(name.into(), label.into(), vid, pvid, false);
    }

    #[test]
    fn chain_branches_and_clones() {
        let mut t = Tree::default();
        // alpha: snap s1 (vid 10) -> snap s2 (11) -> working (13); a second
        // working branch can't exist, but a snapshot with two children can
        // (a rollback): s1 -> s3 (12).
        add(&mut t, "alpha", "[s1]", 10, 0);
        add(&mut t, "alpha", "[s2]", 11, 10);
        add(&mut t, "alpha", "[s3]", 12, 10);
        add(&mut t, "alpha", "(you are here)", 13, 11);
        // A clone of alpha's s1: another name, so its own tree.
        add(&mut t, "beta", "(you are here)", 20, 10);
        add(&mut t, "x", "(you are here)", 30, 0);
        assert_eq!(
            text(t),
            "alpha---[s1]-+-[s2]---(you are here)\n\
             \x20            `-[s3]\n\
             beta---(you are here)\n\
             x---(you are here)\n"
        );
    }

    #[test]
    fn bars_continue_below_open_siblings() {
        let mut t = Tree::default();
        add(&mut t, "v", "[a]", 1, 0);
        add(&mut t, "v", "[bb]", 2, 1);
        add(&mut t, "v", "[c]", 3, 2);
        add(&mut t, "v", "[d]", 4, 2);
        add(&mut t, "v", "[e]", 5, 1);
        assert_eq!(
            text(t),
            "v---[a]-+-[bb]-+-[c]\n\
             \x20       |      `-[d]\n\
             \x20       `-[e]\n"
        );
    }

    #[test]
    fn parent_listed_after_child_is_compacted() {
        let mut t = Tree::default();
        // The working VDI's vid is below its snapshot's (vids wrap).
        add(&mut t, "w", "(you are here)", 5, 0xfffff0);
        add(&mut t, "w", "[s]", 0xfffff0, 0);
        assert_eq!(text(t), "w---[s]---(you are here)\n");
    }

    #[test]
    fn corrupt_parent_cycle_terminates() {
        let mut t = Tree::default();
        add(&mut t, "c", "[a]", 1, 2);
        add(&mut t, "c", "[b]", 2, 1);
        add(&mut t, "c", "[self]", 3, 3);
        assert_eq!(text(t), "c---[a]---[b]\nc---[self]\n");
    }

    #[test]
    fn deep_chain_does_not_recurse() {
        let mut t = Tree::default();
        for v in 1..=20_000u32 {
            add(&mut t, "d", "[s]", v, v - 1);
        }
        let out = t.render();
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
