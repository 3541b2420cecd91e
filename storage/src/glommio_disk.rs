//! The real [`Disk`]: glommio `DmaFile`s (O_DIRECT through io_uring) in one directory.
//!
//! Must be used from inside a glommio executor. Kept thin on purpose, like quinn's runtime
//! glue: a move to another io_uring runtime would replace only this file.
//!
//! Trap (glommio upstream #670): the first DMA file glommio opens on a device decides,
//! through a read of its offset 0, whether the device supports io-poll. If that file is
//! empty the probe wrongly says yes and later reads fail with EOPNOTSUPP (os error 95).
//! [`GlommioDisk::open_dir`] therefore writes and opens a one-block probe file first.

use std::io;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use glommio::io::{DmaBuffer, DmaFile, OpenOptions};

use crate::io::{BLOCK, Disk, DiskFile, IoBuf};

const PROBE_FILE: &str = ".dma-probe";

/// A directory of DMA files.
#[derive(Clone)]
pub struct GlommioDisk {
    dir: Rc<PathBuf>,
}

impl GlommioDisk {
    /// Creates `dir` if needed and primes glommio's device probe with a non-empty file.
    pub async fn open_dir(dir: impl AsRef<Path>) -> io::Result<Self> {
        // glommio opens files through io_uring, where a relative path fails with EBADF
        // (os error 9): always hand it an absolute one.
        let dir = std::path::absolute(dir.as_ref())?;
        std::fs::create_dir_all(&dir)?;
        let probe = dir.join(PROBE_FILE);
        // Written with plain buffered I/O so the probe file is non-empty before glommio
        // ever sees a DMA file on this device.
        if std::fs::metadata(&probe).map(|m| m.len()).unwrap_or(0) < BLOCK as u64 {
            std::fs::write(&probe, vec![0u8; BLOCK])?;
        }
        let f = open_rw(&probe).await?;
        f.close().await.map_err(io::Error::from)?;
        Ok(Self { dir: Rc::new(dir) })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

async fn open_rw(path: &Path) -> io::Result<DmaFile> {
    // Read+write always: a write-only open makes glommio's probe fail with EBADF.
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .dma_open(path)
        .await
        .map_err(io::Error::from)
}

impl Disk for GlommioDisk {
    type File = GlommioFile;

    async fn open(&self, name: &str) -> io::Result<GlommioFile> {
        Ok(GlommioFile {
            file: open_rw(&self.dir.join(name)).await?,
        })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        glommio::io::remove(self.dir.join(name))
            .await
            .map_err(io::Error::from)
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&*self.dir)? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name != PROBE_FILE {
                names.push(name);
            }
        }
        Ok(names)
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let d = glommio::io::Directory::open(&*self.dir)
            .await
            .map_err(io::Error::from)?;
        d.sync().await.map_err(io::Error::from)?;
        d.close().await.map_err(io::Error::from)
    }
}

/// One DMA file.
pub struct GlommioFile {
    file: DmaFile,
}

impl IoBuf for DmaBuffer {
    fn as_bytes(&self) -> &[u8] {
        DmaBuffer::as_bytes(self)
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        DmaBuffer::as_bytes_mut(self)
    }
}

fn check_aligned(pos: u64, len: usize) -> io::Result<()> {
    if pos % BLOCK as u64 != 0 || len % BLOCK != 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "unaligned direct-I/O write",
        ));
    }
    Ok(())
}

fn check_written(written: usize, len: usize) -> io::Result<()> {
    if written != len {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short direct-I/O write: {written} of {len} bytes"),
        ));
    }
    Ok(())
}

impl DiskFile for GlommioFile {
    type Buf = DmaBuffer;

    fn alloc_buf(&self, len: usize) -> DmaBuffer {
        self.file.alloc_dma_buffer(len)
    }

    async fn write_buf(&self, pos: u64, buf: Rc<DmaBuffer>) -> io::Result<()> {
        let len = buf.len();
        check_aligned(pos, len)?;
        // The kernel reads the buffer in place; `buf` stays alive until the write is done
        // (glommio holds a reference), and the log keeps its own to serve reads.
        let written = self
            .file
            .write_rc_at(buf, pos)
            .await
            .map_err(io::Error::from)?;
        check_written(written, len)
    }

    async fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        check_aligned(pos, data.len())?;
        let mut buf = self.file.alloc_dma_buffer(data.len());
        buf.as_bytes_mut().copy_from_slice(data);
        let written = self
            .file
            .write_at(buf, pos)
            .await
            .map_err(io::Error::from)?;
        check_written(written, data.len())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        // Read the aligned superset ourselves: `DmaFile::read_at` can report bytes past
        // the end of file as read when the position is unaligned.
        let start = pos / BLOCK as u64 * BLOCK as u64;
        let skip = (pos - start) as usize;
        let span = (skip + len).div_ceil(BLOCK) * BLOCK;
        let got = self
            .file
            .read_at_aligned(start, span)
            .await
            .map_err(io::Error::from)?;
        let end = got.len().min(skip + len);
        Ok(if end > skip {
            got[skip..end].to_vec()
        } else {
            Vec::new()
        })
    }

    async fn sync(&self) -> io::Result<()> {
        let started = std::time::Instant::now();
        let r = self.file.fdatasync().await.map_err(io::Error::from);
        FSYNCS.with(|h| h.borrow_mut().record(started.elapsed().as_secs_f64()));
        r
    }

    async fn size(&self) -> io::Result<u64> {
        self.file.file_size().await.map_err(io::Error::from)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.file.truncate(len).await.map_err(io::Error::from)
    }

    async fn preallocate(&self, len: u64) -> io::Result<()> {
        self.file
            .pre_allocate(len, true)
            .await
            .map_err(io::Error::from)
    }

    async fn close(self) -> io::Result<()> {
        self.file.close().await.map_err(io::Error::from)
    }
}

thread_local! {
    /// This thread's (shard's) fdatasync latencies: no lock or atomic on the sync path.
    static FSYNCS: std::cell::RefCell<crate::stats::Histogram> = Default::default();
}

/// The fdatasync latencies of the files opened on this thread so far.
pub fn fsync_latency() -> crate::stats::Histogram {
    FSYNCS.with(|h| h.borrow().clone())
}
