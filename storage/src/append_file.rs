//! An append-only byte stream over a [`DiskFile`] that obeys direct-I/O alignment.
//!
//! Bytes before `buf_start` (a block boundary) are on the file and never rewritten; bytes
//! from `buf_start` to the logical end live in `buf`. A flush writes `buf` padded with
//! zeros to a whole block, then keeps only the partly filled tail block in memory, which
//! the next flush rewrites in place. The zero padding is what recovery stops at.

use std::io;

#[cfg(test)]
use crate::io::BLOCK;
use crate::io::{DiskFile, align_down, align_up};

pub(crate) struct AppendFile<F> {
    pub(crate) file: F,
    /// Logical length: bytes of real data.
    len: u64,
    /// Block-aligned start of `buf` in the file.
    buf_start: u64,
    buf: Vec<u8>,
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
            buf_start,
            buf,
            written_len: len,
        })
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
        self.buf.resize(align_up(data_len as u64) as usize, 0);
        let result = self.file.write_at(self.buf_start, &self.buf).await;
        self.buf.truncate(data_len);
        result?;
        self.written_len = self.len;
        self.drop_full_blocks();
        Ok(())
    }

    /// Writes only the whole blocks of the buffer, keeping the partial tail in memory:
    /// bounds memory for large appends without rewriting anything.
    pub(crate) async fn flush_full_blocks(&mut self) -> io::Result<()> {
        let full = align_down(self.buf.len() as u64) as usize;
        if full == 0 {
            return Ok(());
        }
        self.file
            .write_at(self.buf_start, &self.buf[..full])
            .await?;
        self.written_len = self.written_len.max(self.buf_start + full as u64);
        self.drop_full_blocks();
        Ok(())
    }

    fn drop_full_blocks(&mut self) {
        let full = align_down(self.buf.len() as u64) as usize;
        if full > 0 {
            self.buf.drain(..full);
            self.buf_start += full as u64;
        }
    }

    /// Flushes and fdatasyncs: every appended byte is durable on return.
    pub(crate) async fn sync(&mut self) -> io::Result<()> {
        self.flush().await?;
        self.file.sync().await
    }

    /// Reads `len` bytes at `pos`, from the file or the in-memory tail as needed.
    pub(crate) async fn read(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        let end = (pos + len as u64).min(self.len);
        if pos >= end {
            return Ok(Vec::new());
        }
        let file_end = end.min(self.buf_start);
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
        if end > self.buf_start {
            let from = pos.max(self.buf_start) - self.buf_start;
            out.extend_from_slice(&self.buf[from as usize..(end - self.buf_start) as usize]);
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
        self.buf = if start < self.buf_start {
            read_stable(&self.file, start, (len - start) as usize).await?
        } else {
            self.read(start, (len - start) as usize).await?
        };
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
