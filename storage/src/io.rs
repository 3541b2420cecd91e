//! The one door to the disk. Every byte the log stores passes through [`Disk`] and
//! [`DiskFile`], which have two implementations: [`crate::GlommioDisk`] (io_uring, O_DIRECT)
//! and [`crate::SimDisk`] (memory, with the faults of a real disk). The log cannot tell
//! them apart, which is what lets one contract suite and the simulator cover the real code.
//!
//! Direct-I/O rules hold for both: writes and truncations are at [`BLOCK`]-aligned positions
//! with [`BLOCK`]-multiple lengths. Reads may be unaligned (the backend reads the aligned
//! superset), and return fewer bytes only at the end of the file.
//!
//! No method has a default body: a silent no-op default is how a missing `sync` hides.
//!
//! The futures are not `Send`: a log lives on one shard (glommio executor or madsim node)
//! and never moves, so the traits use plain `async fn`.
#![allow(async_fn_in_trait)]

use std::io;
use std::rc::Rc;

/// The direct-I/O block: alignment of every write position and length.
pub const BLOCK: usize = 4096;

/// Rounds `v` up to a multiple of [`BLOCK`].
pub fn align_up(v: u64) -> u64 {
    v.div_ceil(BLOCK as u64) * BLOCK as u64
}

/// Rounds `v` down to a multiple of [`BLOCK`].
pub fn align_down(v: u64) -> u64 {
    v / BLOCK as u64 * BLOCK as u64
}

/// A directory holding one partition's files.
pub trait Disk {
    type File: DiskFile;

    /// Opens `name` for reading and writing, creating it empty if absent. A created file is
    /// durable only after [`Disk::sync_dir`].
    async fn open(&self, name: &str) -> io::Result<Self::File>;
    /// Removes `name`; durable only after [`Disk::sync_dir`].
    async fn remove(&self, name: &str) -> io::Result<()>;
    /// The names of the files in the directory, in no particular order.
    async fn list(&self) -> io::Result<Vec<String>>;
    /// Makes creations and removals so far durable (fsync of the directory).
    async fn sync_dir(&self) -> io::Result<()>;
}

/// Memory a [`DiskFile`] can write from without copying it first (for direct I/O:
/// block-aligned, from the backend's own allocator).
pub trait IoBuf: 'static {
    fn as_bytes(&self) -> &[u8];
    fn as_bytes_mut(&mut self) -> &mut [u8];
}

/// One open file.
pub trait DiskFile {
    /// What [`DiskFile::write_buf`] writes from.
    type Buf: IoBuf;

    /// A buffer of exactly `len` bytes (a [`BLOCK`] multiple), contents unspecified.
    fn alloc_buf(&self, len: usize) -> Self::Buf;
    /// Writes all of `buf` at `pos` (a [`BLOCK`] multiple) with no copy of its bytes; the
    /// caller may keep its own reference to read from afterwards. Not durable until `sync`.
    async fn write_buf(&self, pos: u64, buf: Rc<Self::Buf>) -> io::Result<()>;
    /// Writes `data` at `pos`; both must be [`BLOCK`]-aligned. Not durable until `sync`.
    /// Copies `data` once into a buffer of the backend's: for small writes.
    async fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()>;
    /// Reads up to `len` bytes at `pos` (any alignment); shorter only at end of file.
    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>>;
    /// fdatasync: every completed write and size change becomes durable.
    async fn sync(&self) -> io::Result<()>;
    /// The file's size in bytes (a multiple of [`BLOCK`] for files this crate writes).
    async fn size(&self) -> io::Result<u64>;
    /// Sets the size to `len`, a [`BLOCK`] multiple. Durable after `sync`.
    async fn truncate(&self, len: u64) -> io::Result<()>;
    /// Reserves space for `len` bytes without changing the size (FALLOC_FL_KEEP_SIZE), so
    /// appends do not allocate extents on the hot path.
    async fn preallocate(&self, len: u64) -> io::Result<()>;
    /// Closes the file. Closing does not sync.
    async fn close(self) -> io::Result<()>;
}
