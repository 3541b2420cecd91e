//! An append-only byte stream over a [`DiskFile`] that obeys direct-I/O alignment.
//!
//! Bytes before `buf_start` (a block boundary) are on the file and never rewritten; bytes
//! from `buf_start` to the logical end live in `buf`. A flush writes `buf` padded with
//! zeros to a whole block, then keeps only the partly filled tail block in memory, which
//! the next flush rewrites in place. The zero padding is what recovery stops at.
//!
//! Optionally the last `keep` bytes already written stay in memory too: consumers at the
//! head of a partition read what was appended a moment ago, and direct I/O has no page
//! cache to serve them, so without this every such fetch is a device read in the
//! partition's task, in line with the next produce round.

use std::io;

#[cfg(test)]
use crate::io::BLOCK;
use crate::io::{DiskFile, align_down, align_up};

pub(crate) struct AppendFile<F> {
    pub(crate) file: F,
    /// Logical length: bytes of real data.
    len: u64,
    /// Block-aligned file position of `buf[0]`.
    mem_start: u64,
    /// Block-aligned position the next write starts at (the partial tail block is
    /// rewritten); bytes from `mem_start` up to here are written and kept for reads.
    buf_start: u64,
    buf: Vec<u8>,
    /// How many written bytes to keep in memory for reads (up to twice this, trimmed in
    /// chunks so the cost is one copy of the data, not one per write).
    keep: u64,
    /// Logical length already written to the file (not necessarily synced).
    written_len: u64,
}

impl<F: DiskFile> AppendFile<F> {
    /// Wraps `file` whose first `len` bytes are valid data; later bytes are ignored and
    /// will be overwritten. Reads the partial tail block back into memory.
    pub(crate) async fn open(file: F, len: u64) -> io::Result<Self> {
        let buf_start = align_down(len);
        let buf = read_stable(&file, buf_start, (len - buf_start) as usize).await?;
        if buf.len() as u64 != len - buf_start {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than its recovered length",
            ));
        }
        Ok(Self {
            file,
            len,
            mem_start: buf_start,
            buf_start,
            buf,
            keep: 0,
            written_len: len,
        })
    }

    /// Keeps about `bytes` of written data in memory for reads (0: only the tail block).
    pub(crate) fn set_keep(&mut self, bytes: u64) {
        let shrinking = align_down(bytes) < self.keep;
        self.keep = align_down(bytes);
        self.trim();
        if shrinking {
            // `drain` keeps the capacity: a sealed segment would hold on to megabytes.
            self.buf.shrink_to_fit();
        }
    }

    /// The first byte of `buf` not yet written for good.
    fn off(&self) -> usize {
        (self.buf_start - self.mem_start) as usize
    }

    pub(crate) fn len(&self) -> u64 {
        self.len
    }

    /// Bytes appended but not yet written to the file.
    pub(crate) fn unwritten(&self) -> u64 {
        self.len - self.written_len
    }

    pub(crate) fn append(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        self.len += data.len() as u64;
    }

    /// Writes everything appended, the tail block padded with zeros.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if self.written_len == self.len {
            return Ok(());
        }
        let data_len = self.buf.len();
        let off = self.off();
        self.buf
            .resize(off + align_up((data_len - off) as u64) as usize, 0);
        let result = self.file.write_at(self.buf_start, &self.buf[off..]).await;
        self.buf.truncate(data_len);
        result?;
        self.written_len = self.len;
        self.drop_full_blocks();
        Ok(())
    }

    /// Writes only the whole blocks of the buffer, keeping the partial tail in memory:
    /// bounds memory for large appends without rewriting anything.
    pub(crate) async fn flush_full_blocks(&mut self) -> io::Result<()> {
        let off = self.off();
        let full = align_down((self.buf.len() - off) as u64) as usize;
        if full == 0 {
            return Ok(());
        }
        self.file
            .write_at(self.buf_start, &self.buf[off..off + full])
            .await?;
        self.written_len = self.written_len.max(self.buf_start + full as u64);
        self.drop_full_blocks();
        Ok(())
    }

    /// Marks the written whole blocks as done (the partial tail block stays to be
    /// rewritten) and trims what is kept for reads.
    fn drop_full_blocks(&mut self) {
        let full = align_down((self.buf.len() - self.off()) as u64);
        self.buf_start += full;
        if self.buf_start - self.mem_start > 2 * self.keep {
            self.trim();
        }
    }

    /// Drops written bytes beyond the last `keep`.
    fn trim(&mut self) {
        let excess = (self.buf_start - self.mem_start).saturating_sub(self.keep);
        if excess > 0 {
            self.buf.drain(..excess as usize);
            self.mem_start += excess;
        }
    }

    /// Flushes and fdatasyncs: every appended byte is durable on return.
    pub(crate) async fn sync(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.file.sync().await
    }

    /// Reads `len` bytes at `pos`, from the file or from memory (the kept written bytes
    /// and the unwritten tail) as far as they reach.
    pub(crate) async fn read(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let end = (pos + len as u64).min(self.len);
        if pos >= end {
            return Ok(Vec::new());
        }
        let file_end = end.min(self.mem_start);
        let mut out = if pos < file_end {
            let got = self.file.read_at(pos, (file_end - pos) as usize).await?;
            if got.len() as u64 != file_end - pos {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "log file shorter than written",
                ));
            }
            got
        } else {
            Vec::with_capacity((end - pos) as usize)
        };
        if end > self.mem_start {
            let from = pos.max(self.mem_start) - self.mem_start;
            out.extend_from_slice(&self.buf[from as usize..(end - self.mem_start) as usize]);
        }
        Ok(out)
    }

    /// Cuts the stream to `len` bytes, durably: the file is truncated to the enclosing
    /// block, the new tail block is rewritten with zero padding, and both are synced, so
    /// stale bytes past `len` can never be mistaken for data after a crash.
    pub(crate) async fn truncate(&mut self, len: u64) -> io::Result<()> {
        assert!(len <= self.len, "truncate may only shorten");
        self.flush().await?;
        let start = align_down(len);
        self.buf = if start < self.mem_start {
            read_stable(&self.file, start, (len - start) as usize).await?
        } else {
            self.read(start, (len - start) as usize).await?
        };
        self.mem_start = start;
        self.buf_start = start;
        self.len = len;
        self.written_len = start; // force the tail block to be rewritten
        self.file.truncate(align_up(len)).await?;
        if len > start {
            self.flush().await?;
        }
        self.written_len = len;
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
}
