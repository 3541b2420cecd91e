//! An append-only byte stream over a [`DiskFile`] that obeys direct-I/O alignment.
//!
//! Bytes before `align_down(written_len)` are on the file and never rewritten; the written
//! bytes of the partly filled block at that position stay in `tail`, which the next write
//! rewrites in place, padded with zeros to a whole block. The zero padding is what recovery
//! stops at.
//!
//! Appended batches are held as they came (shared `Bytes`, no copy) until a flush copies
//! them, once, into a buffer of the backend's (block-aligned DMA memory for the real disk)
//! and writes that buffer as it is. That is the only copy a produced byte takes on its way
//! to the device.
//!
//! The written buffers of the last `keep` bytes stay in memory too: consumers at the head
//! of a partition read what was appended a moment ago, and direct I/O has no page cache to
//! serve them, so without this every such fetch is a device read in the partition's task,
//! in line with the next produce round. Trimming drops whole buffers (no bytes move).

use std::collections::VecDeque;
use std::io;
use std::rc::Rc;

use bytes::Bytes;

#[cfg(test)]
use crate::io::BLOCK;
use crate::io::{DiskFile, IoBuf, align_down, align_up};

/// Appends smaller than this are copied into one growing chunk rather than held apart.
const SMALL: usize = 64 << 10;

/// Shared batches shorter than this are copied on append rather than held by reference:
/// the copy costs less than a chunk's bookkeeping.
const BLOCK_COPY: usize = 4096;

/// Bytes appended and not yet written.
enum Chunk {
    /// A batch as it came, shared with whoever else holds it (the replication log).
    Shared(Bytes),
    /// Small appends (index entries, copied batches) gathered together.
    Owned(Vec<u8>),
}

impl Chunk {
    fn bytes(&self) -> &[u8] {
        match self {
            Chunk::Shared(b) => b,
            Chunk::Owned(v) => v,
        }
    }
}

/// A written buffer kept for reads: `len` valid bytes from file position `pos`.
struct Kept<B> {
    pos: u64,
    len: usize,
    buf: Rc<B>,
}

pub(crate) struct AppendFile<F: DiskFile> {
    /// Shared with a sync in flight ([`crate::SyncPoint`]), which outlives no write: the
    /// log's owner awaits it while it goes on appending.
    pub(crate) file: Rc<F>,
    /// Logical length: bytes of real data.
    len: u64,
    /// Logical length already written to the file (not necessarily synced).
    written_len: u64,
    /// The written bytes from `align_down(written_len)` to `written_len`.
    tail: Vec<u8>,
    /// Appended, not written yet: the bytes from `written_len` to `len`.
    pending: Vec<Chunk>,
    /// Written buffers kept for reads, oldest first; each starts at or before the end of
    /// the one before it, so together they cover `kept[0].pos..written_len`.
    kept: VecDeque<Kept<F::Buf>>,
    /// How many written bytes to keep in memory for reads (0: none but the tail).
    keep: u64,
    /// Bytes from here on were appended through this handle (checked on the way in),
    /// not read back from the file.
    appended_from: u64,
}

impl<F: DiskFile> AppendFile<F> {
    /// Wraps `file` whose first `len` bytes are valid data; later bytes are ignored and
    /// will be overwritten. Reads the partial tail block back into memory.
    pub(crate) async fn open(file: impl Into<Rc<F>>, len: u64) -> io::Result<Self> {
        let file = file.into();
        let start = align_down(len);
        let tail = read_stable(&*file, start, (len - start) as usize).await?;
        if tail.len() as u64 != len - start {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than its recovered length",
            ));
        }
        Ok(Self {
            file,
            len,
            written_len: len,
            tail,
            pending: Vec::new(),
            kept: VecDeque::new(),
            keep: 0,
            appended_from: len,
        })
    }

    /// Keeps about `bytes` of written data in memory for reads (0: only the tail block).
    pub(crate) fn set_keep(&mut self, bytes: u64) {
        self.keep = bytes;
        self.trim();
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Bytes appended but not yet written to the file.
    pub(crate) fn unwritten(&self) -> u64 {
        self.len - self.written_len
    }

    /// Where the bytes served from memory begin: reads from here on touch no device.
    fn mem_start(&self) -> u64 {
        self.kept
            .front()
            .map_or(align_down(self.written_len), |k| k.pos)
    }

    /// Positions from here on are read from memory holding bytes that came in through
    /// [`AppendFile::append`] or [`AppendFile::append_shared`], never from the device:
    /// whatever their callers checked on the way in still holds.
    pub(crate) fn memory_from(&self) -> u64 {
        self.mem_start().max(self.appended_from)
    }

    /// Appends a copy of `data` (small appends share one chunk).
    pub(crate) fn append(&mut self, data: &[u8]) {
        match self.pending.last_mut() {
            Some(Chunk::Owned(v)) if v.len() + data.len() <= SMALL => v.extend_from_slice(data),
            _ => self.pending.push(Chunk::Owned(data.to_vec())),
        }
        self.len += data.len() as u64;
    }

    /// Appends `data` without copying it: it is held until the next write.
    pub(crate) fn append_shared(&mut self, data: Bytes) {
        if data.len() < BLOCK_COPY {
            return self.append(&data);
        }
        self.len += data.len() as u64;
        self.pending.push(Chunk::Shared(data));
    }

    /// Writes everything appended, the tail block padded with zeros.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if self.written_len == self.len {
            return Ok(());
        }
        self.write_out(false).await
    }

    /// Writes only the whole blocks of what is unwritten, keeping the partial remainder
    /// for later: starts large appends on their way without rewriting anything.
    pub(crate) async fn flush_full_blocks(&mut self) -> io::Result<()> {
        let data = self.tail.len() as u64 + self.unwritten();
        if align_down(data) == 0 {
            return Ok(());
        }
        self.write_out(true).await
    }

    /// One write of the tail block and everything pending, from `align_down(written_len)`:
    /// up to the last whole block (`full_only`), or all of it, zero padded.
    async fn write_out(&mut self, full_only: bool) -> io::Result<()> {
        let pos = align_down(self.written_len);
        let data_len = self.tail.len() + self.unwritten() as usize;
        let write_len = if full_only {
            align_down(data_len as u64)
        } else {
            align_up(data_len as u64)
        } as usize;
        let copy_len = data_len.min(write_len);
        let mut buf = self.file.alloc_buf(write_len);
        let mut rest = Vec::new();
        {
            let out = buf.as_bytes_mut();
            let mut at = 0;
            let parts =
                std::iter::once(&self.tail[..]).chain(self.pending.iter().map(Chunk::bytes));
            for part in parts {
                let n = part.len().min(copy_len - at);
                out[at..at + n].copy_from_slice(&part[..n]);
                at += n;
                rest.extend_from_slice(&part[n..]);
            }
            out[copy_len..].fill(0);
        }
        let buf = Rc::new(buf);
        self.file.write_buf(pos, buf.clone()).await?;
        let end = pos + copy_len as u64;
        self.written_len = end;
        self.tail.clear();
        self.pending.clear();
        if full_only {
            // `end` is a block boundary: the remainder is still unwritten.
            if !rest.is_empty() {
                self.pending.push(Chunk::Owned(rest));
            }
        } else {
            let from = align_down(end) - pos;
            self.tail
                .extend_from_slice(&buf.as_bytes()[from as usize..copy_len]);
        }
        if self.keep > 0 {
            self.kept.push_back(Kept {
                pos,
                len: copy_len,
                buf,
            });
            self.trim();
        }
        Ok(())
    }

    /// Drops the oldest kept buffers while the rest still cover the last `keep` bytes.
    fn trim(&mut self) {
        if self.keep == 0 {
            self.kept.clear();
            return;
        }
        while self.kept.len() > 1 && self.written_len - self.kept[1].pos >= self.keep {
            self.kept.pop_front();
        }
    }

    /// Flushes and fdatasyncs: every appended byte is durable on return.
    pub(crate) async fn sync(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.file.sync().await
    }

    /// Closes the file, or, while a sync in flight still holds it, leaves the close to
    /// whichever holder drops it last (the backend closes a dropped file).
    pub(crate) async fn close(self) -> io::Result<()> {
        match Rc::try_unwrap(self.file) {
            Ok(f) => f.close().await,
            Err(_) => Ok(()),
        }
    }

    /// Reads `len` bytes at `pos`, from the file or from memory (the kept written bytes,
    /// the tail and what is unwritten) as far as they reach.
    pub(crate) async fn read(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let end = (pos + len as u64).min(self.len);
        if pos >= end {
            return Ok(Vec::new());
        }
        let mem_start = self.mem_start();
        let file_end = end.min(mem_start);
        let mut out = if pos < file_end {
            let mut got = self.file.read_at(pos, (file_end - pos) as usize).await?;
            if got.len() as u64 != file_end - pos {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "log file shorter than written",
                ));
            }
            got.reserve_exact((end - file_end) as usize);
            got
        } else {
            Vec::with_capacity((end - pos) as usize)
        };
        self.copy_from_memory(pos.max(mem_start), end, &mut out);
        Ok(out)
    }

    /// Appends the bytes `from..to` (all at or past `mem_start`) to `out`.
    fn copy_from_memory(&self, mut from: u64, to: u64, out: &mut Vec<u8>) {
        let tail_start = align_down(self.written_len);
        while from < to && from < self.written_len {
            let i = self.kept.partition_point(|k| k.pos <= from);
            let (base, bytes) = match i.checked_sub(1).map(|i| &self.kept[i]) {
                Some(k) if from < k.pos + k.len as u64 => (k.pos, &k.buf.as_bytes()[..k.len]),
                _ => {
                    debug_assert!(from >= tail_start, "a gap in what memory holds");
                    (tail_start, &self.tail[..])
                }
            };
            let stop = to.min(base + bytes.len() as u64);
            out.extend_from_slice(&bytes[(from - base) as usize..(stop - base) as usize]);
            from = stop;
        }
        let mut base = self.written_len;
        for chunk in &self.pending {
            if from >= to {
                break;
            }
            let bytes = chunk.bytes();
            let chunk_end = base + bytes.len() as u64;
            if from < chunk_end {
                let stop = to.min(chunk_end);
                out.extend_from_slice(&bytes[(from - base) as usize..(stop - base) as usize]);
                from = stop;
            }
            base = chunk_end;
        }
    }

    /// Cuts the stream to `len` bytes, durably: the file is truncated to the enclosing
    /// block, the new tail block is rewritten with zero padding, and both are synced, so
    /// stale bytes past `len` can never be mistaken for data after a crash.
    pub(crate) async fn truncate(&mut self, len: u64) -> io::Result<()> {
        assert!(len <= self.len, "truncate may only shorten");
        self.flush().await?;
        let start = align_down(len);
        let block = if start < self.mem_start() {
            read_stable(&*self.file, start, (len - start) as usize).await?
        } else {
            self.read(start, (len - start) as usize).await?
        };
        self.kept.clear();
        self.tail.clear();
        self.pending.clear();
        self.len = start;
        self.written_len = start; // the tail block is rewritten, zero padded
        // The rewritten block may have come back from the device: trust only what follows.
        self.appended_from = self.appended_from.max(len);
        self.file.truncate(align_up(len)).await?;
        if len > start {
            self.append(&block);
            self.flush().await?;
        }
        self.file.sync().await
    }
}

/// Reads bytes that are about to be written back (the partial tail block): a bit flipped
/// in transit would otherwise become a stored one. Two reads must agree.
async fn read_stable<F: DiskFile>(file: &F, pos: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut last = file.read_at(pos, len).await?;
    for _ in 0..4 {
        let again = file.read_at(pos, len).await?;
        if again == last {
            return Ok(again);
        }
        last = again;
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "reads of the tail block keep disagreeing",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::Disk;
    use crate::sim_disk::SimDisk;
    use futures_lite::future::block_on;

    #[test]
    fn recent_written_bytes_are_read_from_memory_older_ones_from_the_file() {
        block_on(async {
            let disk = SimDisk::new(3);
            let mut f = AppendFile::open(disk.open("x").await.unwrap(), 0)
                .await
                .unwrap();
            f.set_keep(2 * BLOCK as u64);
            let data: Vec<u8> = (0..20 * BLOCK as u32).map(|i| (i % 249) as u8).collect();
            for chunk in data.chunks(1000) {
                f.append(chunk);
                f.sync().await.unwrap();
            }
            // Every block of the file now fails to read: what is kept must not need it.
            for b in 0..20 {
                disk.fail_reads("x", b);
            }
            let len = data.len() as u64;
            let recent = len - 2 * BLOCK as u64;
            assert_eq!(
                f.read(recent, 2 * BLOCK).await.unwrap(),
                &data[recent as usize..]
            );
            // Older bytes were let go (memory stays bounded) and come from the file.
            assert!(f.read(0, BLOCK).await.is_err());
            disk.heal_reads();
            assert_eq!(f.read(0, data.len()).await.unwrap(), data);
            // keep 0: only the partial tail block stays.
            f.set_keep(0);
            for b in 0..20 {
                disk.fail_reads("x", b);
            }
            assert!(f.read(recent, BLOCK).await.is_err());
        })
    }

    #[test]
    fn reads_span_file_and_memory_and_truncate_zeroes_the_tail() {
        block_on(async {
            let disk = SimDisk::new(9);
            let mut f = AppendFile::open(disk.open("x").await.unwrap(), 0)
                .await
                .unwrap();
            let data: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8 + 1).collect();
            f.append(&data[..5000]);
            f.flush().await.unwrap();
            f.append(&data[5000..]);
            assert_eq!(f.read(4000, 3000).await.unwrap(), &data[4000..7000]);
            f.sync().await.unwrap();
            assert_eq!(f.read(0, 20_000).await.unwrap(), data);
            f.truncate(4100).await.unwrap();
            let raw = disk.contents("x").unwrap();
            assert_eq!(raw.len(), 2 * BLOCK);
            assert_eq!(&raw[..4100], &data[..4100]);
            assert!(raw[4100..].iter().all(|&b| b == 0));
            f.append(b"zz");
            f.sync().await.unwrap();
            assert_eq!(f.read(4099, 3).await.unwrap(), vec![data[4099], b'z', b'z']);
        })
    }
    /// Any mix of copied and shared appends, partial and full flushes, syncs, truncations
    /// and cache sizes reads back exactly what a plain byte vector holds, and the file
    /// holds it too, zero padded.
    #[test]
    fn appends_flushes_and_truncations_read_back_like_a_vec() {
        use proptest::prelude::*;
        #[derive(Debug, Clone)]
        enum Op {
            Append(usize, bool),
            Flush,
            FlushFull,
            Sync,
            Truncate(usize),
            Keep(usize),
            Read(usize, usize),
        }
        let op = prop_oneof![
            4 => (1usize..3 * BLOCK, any::<bool>()).prop_map(|(n, s)| Op::Append(n, s)),
            1 => (0usize..12 * BLOCK, 0usize..12 * BLOCK).prop_map(|(a, b)| Op::Read(a, b)),
            1 => Just(Op::Flush),
            1 => Just(Op::FlushFull),
            1 => Just(Op::Sync),
            1 => (0usize..100).prop_map(Op::Truncate),
            1 => (0usize..4).prop_map(|k| Op::Keep(k * BLOCK)),
        ];
        proptest!(ProptestConfig::with_cases(200), |(ops in proptest::collection::vec(op, 1..40))| {
            block_on(async {
                let disk = SimDisk::new(5);
                let mut f = AppendFile::open(disk.open("x").await.unwrap(), 0).await.unwrap();
                let mut model: Vec<u8> = Vec::new();
                let mut next = 1u8;
                for op in ops {
                    match op {
                        Op::Append(n, shared) => {
                            let data: Vec<u8> = (0..n).map(|i| next.wrapping_add(i as u8) | 1).collect();
                            next = next.wrapping_add(7);
                            model.extend_from_slice(&data);
                            if shared {
                                f.append_shared(Bytes::from(data));
                            } else {
                                f.append(&data);
                            }
                        }
                        Op::Flush => f.flush().await.unwrap(),
                        Op::FlushFull => f.flush_full_blocks().await.unwrap(),
                        Op::Sync => f.sync().await.unwrap(),
                        Op::Truncate(pct) => {
                            let len = model.len() * pct / 100;
                            f.truncate(len as u64).await.unwrap();
                            model.truncate(len);
                        }
                        Op::Keep(k) => f.set_keep(k as u64),
                        Op::Read(a, n) => {
                            let a = a.min(model.len());
                            let end = (a + n).min(model.len());
                            assert_eq!(f.read(a as u64, n).await.unwrap(), &model[a..end]);
                        }
                    }
                    assert_eq!(f.len(), model.len() as u64);
                }
                assert_eq!(f.read(0, model.len() + 1).await.unwrap(), model);
                f.sync().await.unwrap();
                let raw = disk.contents("x").unwrap();
                assert_eq!(&raw[..model.len()], &model[..]);
                assert!(raw[model.len()..].iter().all(|&b| b == 0));
            });
        });
    }
}
