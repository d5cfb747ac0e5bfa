//! The fixed part of the tree (same names as the original sheepfs) and the
//! inode numbering of the dynamic part (`volume/<name>`, `stats/<name>`).

use std::time::{Duration, SystemTime};

pub const ROOT: u64 = 1;
pub(crate) const DIR_CLUSTER: u64 = 2;
pub(crate) const DIR_VDI: u64 = 3;
pub(crate) const DIR_NODE: u64 = 4;
pub(crate) const DIR_CONFIG: u64 = 5;
pub const DIR_VOLUME: u64 = 6;
pub(crate) const DIR_STATS: u64 = 7;

/// Volumes get even inode numbers from here, their stats file the odd one
/// after. Numbers are never reused, so a stale kernel reference to a
/// detached volume can never reach a newly attached one.
pub(crate) const FIRST_DYNAMIC: u64 = 1 << 16;

/// Files whose content is produced from the cluster on open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateFile {
    ClusterInfo,
    VdiList,
    NodeList,
    NodeInfo,
    /// `config/fuse`: the negotiated FUSE parameters.
    Fuse,
    /// `log`: recent warnings and errors of this mount.
    Log,
}

/// Files that act when written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    VdiMount,
    VdiUnmount,
    PageCache,
    ObjectCache,
    SheepInfo,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Static {
    Dir,
    /// `json`: the `.json` twin.
    State(StateFile, bool),
    Control(Control),
}

#[derive(Debug)]
pub struct Entry {
    pub ino: u64,
    pub parent: u64,
    pub name: &'static str,
    pub kind: Static,
}

const fn e(ino: u64, parent: u64, name: &'static str, kind: Static) -> Entry {
    Entry {
        ino,
        parent,
        name,
        kind,
    }
}

use Static::{Control as C, Dir as D, State as S};

/// Every fixed inode. The root's parent is itself.
pub(crate) static ENTRIES: &[Entry] = &[
    e(ROOT, ROOT, "", D),
    e(DIR_CLUSTER, ROOT, "cluster", D),
    e(DIR_VDI, ROOT, "vdi", D),
    e(DIR_NODE, ROOT, "node", D),
    e(DIR_CONFIG, ROOT, "config", D),
    e(DIR_VOLUME, ROOT, "volume", D),
    e(DIR_STATS, ROOT, "stats", D),
    e(10, DIR_CLUSTER, "info", S(StateFile::ClusterInfo, false)),
    e(
        11,
        DIR_CLUSTER,
        "info.json",
        S(StateFile::ClusterInfo, true),
    ),
    e(12, DIR_VDI, "list", S(StateFile::VdiList, false)),
    e(13, DIR_VDI, "list.json", S(StateFile::VdiList, true)),
    e(14, DIR_VDI, "mount", C(Control::VdiMount)),
    e(15, DIR_VDI, "unmount", C(Control::VdiUnmount)),
    e(16, DIR_NODE, "list", S(StateFile::NodeList, false)),
    e(17, DIR_NODE, "list.json", S(StateFile::NodeList, true)),
    e(18, DIR_NODE, "info", S(StateFile::NodeInfo, false)),
    e(19, DIR_NODE, "info.json", S(StateFile::NodeInfo, true)),
    e(20, DIR_CONFIG, "page_cache", C(Control::PageCache)),
    e(21, DIR_CONFIG, "object_cache", C(Control::ObjectCache)),
    e(22, DIR_CONFIG, "sheep_info", C(Control::SheepInfo)),
    e(23, DIR_CONFIG, "fuse", S(StateFile::Fuse, false)),
    e(24, ROOT, "log", S(StateFile::Log, false)),
];

pub fn entry(ino: u64) -> Option<&'static Entry> {
    ENTRIES.iter().find(|e| e.ino == ino)
}

pub fn child(parent: u64, name: &str) -> Option<&'static Entry> {
    ENTRIES
        .iter()
        .find(|e| e.parent == parent && e.ino != ROOT && e.name == name)
}

pub(crate) fn children(parent: u64) -> impl Iterator<Item = &'static Entry> {
    ENTRIES
        .iter()
        .filter(move |e| e.parent == parent && e.ino != ROOT)
}

pub(crate) fn is_volume_ino(ino: u64) -> bool {
    ino >= FIRST_DYNAMIC && ino % 2 == 0
}

pub(crate) fn is_stats_ino(ino: u64) -> bool {
    ino >= FIRST_DYNAMIC && ino % 2 == 1
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
}

/// What `stat` shows; the FUSE adapter converts it to the kernel's struct.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    pub kind: Kind,
    pub size: u64,
    pub perm: u16,
    pub blksize: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: SystemTime,
    pub ctime: SystemTime,
    /// Bytes actually stored, when that differs from `size` (volumes:
    /// their own allocated objects).
    pub stored: Option<u64>,
    /// How long the kernel may cache this attribute.
    pub ttl: Duration,
}

impl Attr {
    /// `st_blocks`: 512-byte units stored.
    pub fn blocks(&self) -> u64 {
        self.stored.unwrap_or(self.size).div_ceil(512)
    }
    pub(crate) fn nlink(&self) -> u32 {
        match self.kind {
            Kind::Dir => 2,
            Kind::File => 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_consistent() {
        for (i, a) in ENTRIES.iter().enumerate() {
            assert!(a.ino < FIRST_DYNAMIC);
            for b in &ENTRIES[i + 1..] {
                assert_ne!(a.ino, b.ino);
                assert!(!(a.parent == b.parent && a.name == b.name), "{}", a.name);
            }
            if a.ino != ROOT {
                assert_eq!(entry(a.parent).map(|p| p.kind), Some(Static::Dir));
            }
        }
        assert_eq!(child(DIR_VDI, "mount").map(|e| e.ino), Some(14));
        assert!(child(ROOT, "").is_none());
        assert_eq!(children(ROOT).count(), 7);
        assert!(is_volume_ino(FIRST_DYNAMIC) && is_stats_ino(FIRST_DYNAMIC + 1));
    }
}
