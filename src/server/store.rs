//! The object store: one file per object under `DIR/obj/<oid as 16 hex digits>`.
//!
//! Durability rules (see the module docs of [`crate::server`]):
//! - a create is atomic: the object is written to a temporary file, fsynced,
//!   renamed over the final name and the directory is fsynced, so after a crash
//!   either the whole new object exists or the old state does;
//! - a write is fdatasync'ed before it is acknowledged, unless the client set
//!   SD_FLAG_CMD_CACHE; those objects are remembered per vid and synced by
//!   FLUSH_VDI (or at shutdown).
//!
//! Concurrency: a striped table of reader/writer locks keyed by oid. Reads and
//! plain writes take the stripe shared; creates, removals and the server's own
//! read-modify-write sequences take it exclusively ([`Store::lock`]). Open file
//! handles are kept in a bounded LRU so hot objects do not pay open(2) per request.

use super::error::{io_res, OpResult};
use crate::proto::{oid, SdRes};
use lru::LruCache;
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::collections::{HashMap, HashSet};
use std::fs::{File, OpenOptions};
use std::io;
use std::num::NonZeroUsize;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

const STRIPES: usize = 1024;
/// Zero runs at least this long are not written into fresh (sparse) files.
const SPARSE_CHUNK: usize = 64 * 1024;

/// An open object file and its size (object files never change size in place).
#[derive(Clone)]
struct Handle {
    file: Arc<File>,
    size: u64,
}

pub struct Store {
    dir: PathBuf,
    /// The directory, open once: every create and remove syncs it.
    dir_file: File,
    fds: Mutex<LruCache<u64, Handle>>,
    locks: Box<[RwLock<()>]>,
    /// Objects written with CMD_CACHE and not yet synced, by vid.
    dirty: Mutex<HashMap<u32, HashSet<u64>>>,
    /// Serialises flushes: a flush that finds the dirty set empty must not
    /// answer while another one still syncs objects it took from the set.
    flushing: Mutex<()>,
    /// Sum of object sizes (what dog calls "used").
    used: AtomicU64,
    tmp_seq: AtomicU64,
}

/// A temporary object file, removed on drop unless it was installed.
struct TmpObj {
    oid: u64,
    size: u64,
    file: File,
    path: PathBuf,
    installed: bool,
}

impl Drop for TmpObj {
    fn drop(&mut self) {
        if !self.installed {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Guard of one oid's stripe.
pub enum Guard<'a> {
    Shared(#[allow(dead_code)] RwLockReadGuard<'a, ()>),
    Exclusive(#[allow(dead_code)] RwLockWriteGuard<'a, ()>),
}

fn obj_name(oid: u64) -> String {
    format!("{oid:016x}")
}

fn stripe(oid: u64) -> usize {
    // Objects of one VDI differ in the low bits; mix the vid in too.
    let h = oid.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    (h >> 40) as usize % STRIPES
}

impl Store {
    /// Opens (creating if needed) the object directory, removes temporary
    /// files left by a crash and sums the object sizes.
    pub fn open(dir: &Path, fd_cache: usize) -> io::Result<Store> {
        std::fs::create_dir_all(dir)?;
        let mut used = 0u64;
        for e in std::fs::read_dir(dir)? {
            let e = e?;
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.contains(".tmp") {
                // A create that never reached its rename: never acknowledged.
                tracing::info!(file = %name, "removing leftover temporary object");
                std::fs::remove_file(e.path())?;
                continue;
            }
            if parse_name(&name).is_some() {
                used += e.metadata()?.len();
            }
        }
        let cap = NonZeroUsize::new(fd_cache.max(16)).unwrap_or(NonZeroUsize::MIN);
        Ok(Store {
            dir: dir.to_path_buf(),
            dir_file: File::open(dir)?,
            fds: Mutex::new(LruCache::new(cap)),
            locks: (0..STRIPES).map(|_| RwLock::new(())).collect(),
            dirty: Mutex::new(HashMap::new()),
            flushing: Mutex::new(()),
            used: AtomicU64::new(used),
            tmp_seq: AtomicU64::new(0),
        })
    }

    fn path(&self, oid: u64) -> PathBuf {
        self.dir.join(obj_name(oid))
    }

    pub fn lock_shared(&self, oid: u64) -> Guard<'_> {
        Guard::Shared(self.locks[stripe(oid)].read())
    }

    /// Exclusive access to `oid` for a read-modify-write sequence. Use the
    /// `*_locked` methods while holding it; never take a second guard.
    pub fn lock(&self, oid: u64) -> Guard<'_> {
        Guard::Exclusive(self.locks[stripe(oid)].write())
    }

    pub fn used_bytes(&self) -> u64 {
        self.used.load(Ordering::Relaxed)
    }

    fn handle(&self, oid: u64) -> OpResult<Handle> {
        if let Some(h) = self.fds.lock().get(&oid) {
            return Ok(h.clone());
        }
        let path = self.path(oid);
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SdRes::NO_OBJ),
            Err(e) => return Err(io_res(&e, "open", &path)),
        };
        let size = file
            .metadata()
            .map_err(|e| io_res(&e, "stat", &path))?
            .len();
        let h = Handle {
            file: Arc::new(file),
            size,
        };
        self.fds.lock().put(oid, h.clone());
        Ok(h)
    }

    fn forget(&self, oid: u64) {
        self.fds.lock().pop(&oid);
    }

    pub fn exists(&self, oid: u64) -> bool {
        let _g = self.lock_shared(oid);
        self.exists_locked(oid)
    }

    pub fn exists_locked(&self, oid: u64) -> bool {
        self.fds.lock().contains(&oid) || self.path(oid).exists()
    }

    pub fn read(&self, oid: u64, offset: u64, buf: &mut [u8]) -> OpResult<()> {
        let _g = self.lock_shared(oid);
        self.read_locked(oid, offset, buf)
    }

    /// Reads exactly `buf.len()` bytes; a range past the end of the object is
    /// INVALID_PARMS (the object sizes are fixed, so this is a client error).
    pub fn read_locked(&self, oid: u64, offset: u64, buf: &mut [u8]) -> OpResult<()> {
        let h = self.handle(oid)?;
        check_range(oid, offset, buf.len(), h.size)?;
        h.file
            .read_exact_at(buf, offset)
            .map_err(|e| io_res(&e, "read", &self.path(oid)))
    }

    pub fn write(&self, oid: u64, offset: u64, data: &[u8], sync: bool) -> OpResult<()> {
        let _g = self.lock_shared(oid);
        self.write_locked(oid, offset, data, sync)
    }

    /// Writes into an existing object; NO_OBJ if it does not exist.
    pub fn write_locked(&self, oid: u64, offset: u64, data: &[u8], sync: bool) -> OpResult<()> {
        let h = self.handle(oid)?;
        self.write_to(&h, oid, offset, data, sync)
    }

    /// The object's stripe shared and its open file, if that needs neither
    /// waiting for the lock nor open(2).
    fn try_cached(&self, oid: u64) -> Option<(RwLockReadGuard<'_, ()>, Handle)> {
        let g = self.locks[stripe(oid)].try_read()?;
        let h = self.fds.lock().get(&oid).cloned()?;
        Some((g, h))
    }

    /// [`Store::read`] if it can be done without waiting: the object's lock
    /// free, its file open and the bytes in the page cache. `Ok(false)`: it
    /// cannot (use [`Store::read`]).
    pub fn try_read_cached(&self, oid: u64, offset: u64, buf: &mut [u8]) -> OpResult<bool> {
        let Some((_g, h)) = self.try_cached(oid) else {
            return Ok(false);
        };
        check_range(oid, offset, buf.len(), h.size)?;
        read_nowait(&h.file, buf, offset).map_err(|e| io_res(&e, "read", &self.path(oid)))
    }

    /// A write without sync (SD_FLAG_CMD_CACHE) if it needs no open(2) and
    /// no waiting for the object's lock. `Ok(false)`: nothing was written
    /// (use [`Store::write`]).
    pub fn try_write_cached(&self, oid: u64, offset: u64, data: &[u8]) -> OpResult<bool> {
        let Some((_g, h)) = self.try_cached(oid) else {
            return Ok(false);
        };
        self.write_to(&h, oid, offset, data, false).map(|_| true)
    }

    fn write_to(&self, h: &Handle, oid: u64, offset: u64, data: &[u8], sync: bool) -> OpResult<()> {
        check_range(oid, offset, data.len(), h.size)?;
        let path = || self.path(oid);
        h.file
            .write_all_at(data, offset)
            .map_err(|e| io_res(&e, "write", &path()))?;
        if sync {
            h.file
                .sync_data()
                .map_err(|e| io_res(&e, "fdatasync", &path()))?;
        } else {
            self.dirty
                .lock()
                .entry(oid::oid_to_vid(oid))
                .or_default()
                .insert(oid);
        }
        Ok(())
    }

    pub fn create(&self, oid: u64, size: u64, parts: &[(u64, &[u8])]) -> OpResult<()> {
        // Written and synced before the object's lock is taken: only the
        // rename happens under it.
        let tmp = self.tmp_with(oid, size, parts)?;
        let _g = self.lock(oid);
        self.install_locked(tmp)
    }

    /// Creates (or replaces) `oid` as a `size`-byte object that is all zeros
    /// except `parts` (offset, bytes). Atomic and durable when it returns Ok.
    pub fn create_locked(&self, oid: u64, size: u64, parts: &[(u64, &[u8])]) -> OpResult<()> {
        let tmp = self.tmp_with(oid, size, parts)?;
        self.install_locked(tmp)
    }

    /// Creates `oid` as a copy of the first `size` bytes of `src` (zeros past
    /// its end) with `data` written at `off` on top: a partial copy-on-write.
    /// The copy goes file to file (copy_file_range, holes skipped), so memory
    /// use does not grow with the object size. NO_OBJ if `src` is missing.
    pub fn create_cow(&self, oid: u64, size: u64, src: u64, off: u64, data: &[u8]) -> OpResult<()> {
        check_range(oid, off, data.len(), size)?;
        let tmp = self.tmp_obj(oid, size)?;
        {
            let _g = self.lock_shared(src);
            let h = self.handle(src)?;
            let n = h.size.min(size);
            copy_data(&h.file, &tmp.file, n)
                .map_err(|e| io_res(&e, "copy-on-write from", &self.path(src)))?;
        }
        tmp.file
            .write_all_at(data, off)
            .and_then(|()| tmp.file.sync_all())
            .map_err(|e| io_res(&e, "create", &self.path(oid)))?;
        let _g = self.lock(oid);
        self.install_locked(tmp)
    }

    /// A new private temporary file for `oid`, `size` bytes of zeros (a hole).
    fn tmp_obj(&self, oid: u64, size: u64) -> OpResult<TmpObj> {
        let path = self.dir.join(format!(
            "{}.tmp.{}",
            obj_name(oid),
            self.tmp_seq.fetch_add(1, Ordering::Relaxed)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| io_res(&e, "create", &self.path(oid)))?;
        let tmp = TmpObj {
            oid,
            size,
            file,
            path,
            installed: false,
        };
        tmp.file
            .set_len(size)
            .map_err(|e| io_res(&e, "create", &self.path(oid)))?;
        Ok(tmp)
    }

    fn tmp_with(&self, oid: u64, size: u64, parts: &[(u64, &[u8])]) -> OpResult<TmpObj> {
        for (off, data) in parts {
            check_range(oid, *off, data.len(), size)?;
        }
        let tmp = self.tmp_obj(oid, size)?;
        // A fresh file is one hole: only non-zero data needs writing.
        for (off, data) in parts {
            write_sparse(&tmp.file, data, *off)
                .map_err(|e| io_res(&e, "create", &self.path(oid)))?;
        }
        tmp.file
            .sync_all()
            .map_err(|e| io_res(&e, "create", &self.path(oid)))?;
        Ok(tmp)
    }

    /// Renames a temporary object (already synced) over its final name and
    /// makes the rename durable. The caller holds `lock(tmp.oid)`.
    fn install_locked(&self, mut tmp: TmpObj) -> OpResult<()> {
        let oid = tmp.oid;
        let path = self.path(oid);
        let old = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        // Whatever happens next, a cached handle may name the old file.
        self.forget(oid);
        std::fs::rename(&tmp.path, &path).map_err(|e| io_res(&e, "rename", &path))?;
        tmp.installed = true;
        // The rename is durable only once the directory is.
        self.sync_dir()
            .map_err(|e| io_res(&e, "fsync directory of", &path))?;
        self.used.fetch_add(tmp.size, Ordering::Relaxed);
        self.used
            .fetch_sub(old.min(self.used_bytes()), Ordering::Relaxed);
        let file = match tmp.file.try_clone() {
            Ok(f) => f,
            // Only the cache misses it; the next access opens the file.
            Err(_) => return Ok(()),
        };
        self.fds.lock().put(
            oid,
            Handle {
                file: Arc::new(file),
                size: tmp.size,
            },
        );
        if let Some(set) = self.dirty.lock().get_mut(&oid::oid_to_vid(oid)) {
            set.remove(&oid);
        }
        Ok(())
    }

    /// The open file of `oid` after checking that `[offset, offset+len)` lies
    /// inside it, for a reply streamed from the file.
    pub fn open_range(&self, oid: u64, offset: u64, len: u64) -> OpResult<Arc<File>> {
        let _g = self.lock_shared(oid);
        let h = self.handle(oid)?;
        check_range(oid, offset, len as usize, h.size)?;
        Ok(h.file)
    }

    pub fn remove(&self, oid: u64) -> OpResult<()> {
        let _g = self.lock(oid);
        self.remove_locked(oid)
    }

    pub fn remove_locked(&self, oid: u64) -> OpResult<()> {
        let path = self.path(oid);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        self.forget(oid);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(SdRes::NO_OBJ),
            Err(e) => return Err(io_res(&e, "remove", &path)),
        }
        if let Some(set) = self.dirty.lock().get_mut(&oid::oid_to_vid(oid)) {
            set.remove(&oid);
        }
        self.used
            .fetch_sub(size.min(self.used_bytes()), Ordering::Relaxed);
        self.sync_dir()
            .map_err(|e| io_res(&e, "fsync directory of", &path))
    }

    fn sync_dir(&self) -> io::Result<()> {
        self.dir_file.sync_all()
    }

    /// Makes every cached write of `vid` durable (FLUSH_VDI).
    pub fn sync_vid(&self, vid: u32) -> OpResult<()> {
        let _f = self.flushing.lock();
        let oids = self.dirty.lock().remove(&vid).unwrap_or_default();
        let mut res = Ok(());
        for oid in oids {
            let _g = self.lock_shared(oid);
            match self.handle(oid) {
                Ok(h) => {
                    if let Err(e) = h.file.sync_data() {
                        res = Err(io_res(&e, "fdatasync", &self.path(oid)));
                        // Keep it dirty so a later flush retries.
                        self.dirty.lock().entry(vid).or_default().insert(oid);
                    }
                }
                Err(SdRes::NO_OBJ) => {}
                Err(e) => res = Err(e),
            }
        }
        res
    }

    /// Syncs every cached write (shutdown).
    pub fn sync_all(&self) -> OpResult<()> {
        let vids: Vec<u32> = self.dirty.lock().keys().copied().collect();
        let mut res = Ok(());
        for vid in vids {
            if let Err(e) = self.sync_vid(vid) {
                res = Err(e);
            }
        }
        res
    }

    /// Every stored oid, ascending.
    pub fn list(&self) -> OpResult<Vec<u64>> {
        Ok(self.list_upto(usize::MAX)?.unwrap_or_default())
    }

    /// Every stored oid, ascending, or None when there are more than `max`
    /// (so a client's small buffer never makes the server list them all).
    pub fn list_upto(&self, max: usize) -> OpResult<Option<Vec<u64>>> {
        let rd = std::fs::read_dir(&self.dir).map_err(|e| io_res(&e, "list", &self.dir))?;
        let mut v = Vec::new();
        for e in rd.filter_map(|e| e.ok()) {
            if let Some(oid) = parse_name(&e.file_name().to_string_lossy()) {
                if v.len() == max {
                    return Ok(None);
                }
                v.push(oid);
            }
        }
        v.sort_unstable();
        Ok(Some(v))
    }

    /// Removes every object (MAKE_FS).
    pub fn wipe(&self) -> OpResult<()> {
        for oid in self.list()? {
            match self.remove(oid) {
                Ok(()) | Err(SdRes::NO_OBJ) => {}
                Err(e) => return Err(e),
            }
        }
        self.dirty.lock().clear();
        Ok(())
    }
}

fn parse_name(name: &str) -> Option<u64> {
    if name.len() == 16 && name.bytes().all(|b| b.is_ascii_hexdigit()) {
        u64::from_str_radix(name, 16).ok()
    } else {
        None
    }
}

fn check_range(oid: u64, offset: u64, len: usize, size: u64) -> OpResult<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => {
            tracing::warn!(
                oid = format_args!("{oid:016x}"),
                offset,
                len,
                size,
                "request beyond the end of the object"
            );
            Err(SdRes::INVALID_PARMS)
        }
    }
}

/// Fills `buf` from the page cache (preadv2 with RWF_NOWAIT); false if some
/// of it would have to come from the disk (or the kernel cannot say).
fn read_nowait(f: &File, buf: &mut [u8], offset: u64) -> io::Result<bool> {
    use std::os::fd::AsRawFd;
    let mut done = 0usize;
    while done < buf.len() {
        let rest = &mut buf[done..];
        let iov = libc::iovec {
            iov_base: rest.as_mut_ptr().cast(),
            iov_len: rest.len(),
        };
        // SAFETY: one iovec over memory we exclusively borrow, on an open fd.
        let n = unsafe {
            libc::preadv2(
                f.as_raw_fd(),
                &iov,
                1,
                (offset + done as u64) as libc::off_t,
                libc::RWF_NOWAIT,
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL) => Ok(false),
                Some(libc::EINTR) => continue,
                _ => Err(e),
            };
        }
        if n == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        done += n as usize;
    }
    Ok(true)
}

/// Buffer size of the copy fallback (when copy_file_range is not available).
pub const COPY_CHUNK: usize = 1 << 20;

/// Copies bytes `[0, len)` of `src` into the fresh (all-hole) file `dst`,
/// skipping the holes of `src`, without buffering more than [`COPY_CHUNK`].
fn copy_data(src: &File, dst: &File, len: u64) -> io::Result<()> {
    let mut pos = 0;
    while pos < len {
        let start = match seek(src, pos, libc::SEEK_DATA) {
            Ok(p) => p,
            // No data after `pos`: the rest is a hole.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => return Ok(()),
            // Holes unknown to this filesystem: copy everything.
            Err(_) => return copy_range(src, dst, pos, len - pos),
        };
        if start >= len {
            return Ok(());
        }
        let end = seek(src, start, libc::SEEK_HOLE).unwrap_or(len).min(len);
        if end <= start {
            return copy_range(src, dst, start, len - start);
        }
        copy_range(src, dst, start, end - start)?;
        pos = end;
    }
    Ok(())
}

fn seek(f: &File, off: u64, whence: i32) -> io::Result<u64> {
    use std::os::unix::io::AsRawFd;
    // SAFETY: lseek on a descriptor we own; only its file offset changes,
    // which nothing else uses (all I/O is positional).
    let r = unsafe { libc::lseek(f.as_raw_fd(), off as libc::off_t, whence) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as u64)
    }
}

/// Copies `[off, off+len)` of `src` to the same range of `dst`: in the kernel
/// when it can, else through a bounded buffer (zero runs left as holes).
fn copy_range(src: &File, dst: &File, off: u64, len: u64) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let mut done = 0u64;
    while done < len {
        let mut off_in = (off + done) as libc::loff_t;
        let mut off_out = off_in;
        let want = (len - done).min(1 << 30) as usize;
        // SAFETY: valid descriptors and offset pointers to locals.
        let r = unsafe {
            libc::copy_file_range(
                src.as_raw_fd(),
                &mut off_in,
                dst.as_raw_fd(),
                &mut off_out,
                want,
                0,
            )
        };
        if r > 0 {
            done += r as u64;
            continue;
        }
        if r == 0 {
            // The source ended early (it cannot; be safe): the rest stays zero.
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::ENOSYS)
            | Some(libc::EXDEV)
            | Some(libc::EINVAL)
            | Some(libc::EOPNOTSUPP)
            | Some(libc::EPERM) => return copy_buffered(src, dst, off + done, len - done),
            _ => return Err(e),
        }
    }
    Ok(())
}

fn copy_buffered(src: &File, dst: &File, off: u64, len: u64) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_CHUNK.min(len as usize)];
    let mut done = 0u64;
    while done < len {
        let n = (len - done).min(buf.len() as u64) as usize;
        src.read_exact_at(&mut buf[..n], off + done)?;
        write_sparse(dst, &buf[..n], off + done)?;
        done += n as u64;
    }
    Ok(())
}

/// Writes `data` at `off` into a file known to be zero there, skipping zero runs.
fn write_sparse(f: &File, data: &[u8], off: u64) -> io::Result<()> {
    let mut pos = 0;
    while pos < data.len() {
        let end = (pos + SPARSE_CHUNK).min(data.len());
        // Extend a non-zero run as long as chunks are non-zero, to write big blocks.
        if data[pos..end].iter().all(|&b| b == 0) {
            pos = end;
            continue;
        }
        let mut run_end = end;
        while run_end < data.len() {
            let next = (run_end + SPARSE_CHUNK).min(data.len());
            if data[run_end..next].iter().all(|&b| b == 0) {
                break;
            }
            run_end = next;
        }
        f.write_all_at(&data[pos..run_end], off + pos as u64)?;
        pos = run_end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_read_write_remove() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), 16).unwrap();
        let oid = oid::vid_to_data_oid(7, 1);
        assert_eq!(s.write(oid, 0, b"x", true), Err(SdRes::NO_OBJ));
        s.create(oid, 1 << 20, &[(4096, b"hello")]).unwrap();
        let mut b = vec![0u8; 8];
        s.read(oid, 4094, &mut b).unwrap();
        assert_eq!(&b, b"\0\0hello\0");
        s.write(oid, 0, b"abc", false).unwrap();
        s.sync_vid(7).unwrap();
        let mut b = vec![0u8; 3];
        s.read(oid, 0, &mut b).unwrap();
        assert_eq!(&b, b"abc");
        assert_eq!(
            s.read(oid, (1 << 20) - 1, &mut b),
            Err(SdRes::INVALID_PARMS)
        );
        assert_eq!(s.used_bytes(), 1 << 20);
        // Replace: the new object is all zeros except the new data.
        s.create(oid, 1 << 20, &[]).unwrap();
        s.read(oid, 0, &mut b).unwrap();
        assert_eq!(&b, &[0, 0, 0]);
        assert_eq!(s.used_bytes(), 1 << 20);
        assert_eq!(s.list().unwrap(), vec![oid]);
        s.remove(oid).unwrap();
        assert_eq!(s.remove(oid), Err(SdRes::NO_OBJ));
        assert_eq!(s.used_bytes(), 0);
        // Leftover temporary files vanish on open.
        std::fs::write(d.path().join("0000000700000001.tmp.3"), b"junk").unwrap();
        let s = Store::open(d.path(), 16).unwrap();
        assert!(s.list().unwrap().is_empty());
        assert!(!d.path().join("0000000700000001.tmp.3").exists());
    }

    /// The no-wait forms do the same as the others, or nothing at all.
    #[test]
    fn cached_forms_act_or_decline() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), 16).unwrap();
        let oid = oid::vid_to_data_oid(7, 2);
        s.create(oid, 1 << 20, &[(0, b"old")]).unwrap();
        // Not open yet (a create does not keep its file): declined, unchanged.
        s.forget(oid);
        assert_eq!(s.try_write_cached(oid, 0, b"new"), Ok(false));
        let mut b = vec![0u8; 3];
        s.read(oid, 0, &mut b).unwrap();
        assert_eq!(&b, b"old");
        // Open now: written, remembered for the next flush, readable.
        assert_eq!(s.try_write_cached(oid, 0, b"new"), Ok(true));
        assert!(s.dirty.lock().get(&7).is_some_and(|d| d.contains(&oid)));
        let mut b = vec![0u8; 3];
        if s.try_read_cached(oid, 0, &mut b).unwrap() {
            assert_eq!(&b, b"new");
        }
        s.read(oid, 0, &mut b).unwrap();
        assert_eq!(&b, b"new");
        // Range errors are answered, not declined.
        assert_eq!(
            s.try_write_cached(oid, (1 << 20) - 1, b"xy"),
            Err(SdRes::INVALID_PARMS)
        );
        assert_eq!(
            s.try_read_cached(oid, (1 << 20) - 1, &mut b),
            Err(SdRes::INVALID_PARMS)
        );
        // The object's lock held by a read-modify-write: declined.
        let g = s.lock(oid);
        assert_eq!(s.try_write_cached(oid, 0, b"zzz"), Ok(false));
        assert_eq!(s.try_read_cached(oid, 0, &mut b), Ok(false));
        drop(g);
        s.read(oid, 0, &mut b).unwrap();
        assert_eq!(&b, b"new");
    }

    #[test]
    fn copy_on_write_copies_data_keeps_holes_and_overlays() {
        use std::os::unix::fs::MetadataExt;
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), 16).unwrap();
        let size = 64u64 << 20;
        let a = pattern_bytes(5000, 1);
        let b = pattern_bytes(3 << 20, 2);
        s.create(1, size, &[(100, &a), (40 << 20, &b)]).unwrap();
        let patch = pattern_bytes(70_000, 3);
        s.create_cow(2, size, 1, (40 << 20) - 1000, &patch).unwrap();
        let mut got = vec![0u8; size as usize];
        s.read(2, 0, &mut got).unwrap();
        let mut want = vec![0u8; size as usize];
        want[100..100 + a.len()].copy_from_slice(&a);
        want[40 << 20..(40 << 20) + b.len()].copy_from_slice(&b);
        let p = (40 << 20) - 1000;
        want[p..p + patch.len()].copy_from_slice(&patch);
        assert!(got == want, "COW content");
        let blocks = std::fs::metadata(d.path().join(obj_name(2)))
            .unwrap()
            .blocks()
            * 512;
        assert!(blocks < 8 << 20, "holes were filled: {blocks} bytes");
        // Missing source: NO_OBJ, nothing left behind.
        assert_eq!(s.create_cow(3, size, 9, 0, b"x"), Err(SdRes::NO_OBJ));
        assert_eq!(s.list().unwrap(), vec![1, 2]);
        // A source shorter than the object: the rest is zeros.
        s.create(4, 8192, &[(0, &[7u8; 8192])]).unwrap();
        s.create_cow(5, 1 << 20, 4, 100, b"yz").unwrap();
        let mut g = vec![1u8; 1 << 20];
        s.read(5, 0, &mut g).unwrap();
        assert!(g[..100].iter().all(|&x| x == 7) && &g[100..102] == b"yz");
        assert!(g[102..8192].iter().all(|&x| x == 7) && g[8192..].iter().all(|&x| x == 0));
    }

    #[test]
    fn buffered_copy_fallback() {
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let dst = d.path().join("dst");
        let data = pattern_bytes(3 * COPY_CHUNK + 12345, 9);
        std::fs::write(&src, &data).unwrap();
        let f = File::open(&src).unwrap();
        let g = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&dst)
            .unwrap();
        g.set_len(data.len() as u64 + 10).unwrap();
        copy_buffered(&f, &g, 7, data.len() as u64 - 7).unwrap();
        let out = std::fs::read(&dst).unwrap();
        assert_eq!(&out[7..data.len()], &data[7..]);
        assert!(out[..7].iter().all(|&x| x == 0));
    }

    fn pattern_bytes(n: usize, seed: u8) -> Vec<u8> {
        (0..n)
            .map(|i| ((i % 251) as u8).wrapping_add(seed) | 1)
            .collect()
    }

    #[test]
    fn sparse_writes_keep_data() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(d.path(), 16).unwrap();
        let mut data = vec![0u8; 300_000];
        data[70_000] = 1;
        data[299_999] = 2;
        s.create(1, 400_000, &[(10, &data)]).unwrap();
        let mut b = vec![9u8; 300_000];
        s.read(1, 10, &mut b).unwrap();
        assert_eq!(b, data);
    }
}
