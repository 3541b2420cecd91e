//! The raw disk at queue depth N: the device's ceiling for synced writes.
//!
//! The queue-depth-one peer (`storage::raw_disk`) writes one batch, fdatasyncs, and only
//! then writes the next: what a log does with nothing else in flight. A broker with many
//! producers in flight keeps the device busier than that. This peer writes the same bytes
//! through io_uring directly (the `io-uring` crate, no runtime): rounds of `depth` batch
//! writes in flight at once, each round closed by one fdatasync before its batches count
//! as durable (group commit at its best). Buffers are aligned once and reused, so nothing
//! but the device is measured.
//!
//! The one module with `unsafe`: io_uring submissions hand the kernel raw buffer pointers.
#![allow(unsafe_code)]

use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Instant;

use corelog_storage::io::BLOCK;
use hdrhistogram::Histogram;
use io_uring::{IoUring, opcode, types};

/// Block-aligned memory: a block-aligned window of a plain allocation.
struct Aligned {
    mem: Vec<u8>,
    at: usize,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let mem = vec![0u8; len + BLOCK];
        let at = mem.as_ptr().align_offset(BLOCK);
        Self { mem, at, len }
    }

    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.mem[self.at..self.at + self.len]
    }

    fn ptr(&self) -> *const u8 {
        self.mem[self.at..].as_ptr()
    }
}

/// Writes `total_bytes` of `batch` (its length rounded up to a block) at `depth` writes
/// in flight, one fdatasync per round of `depth`, to a scratch file under `dir`.
/// Returns (seconds, per-round write+sync latency in microseconds).
pub fn raw_disk_queued(
    dir: &Path,
    batch: &[u8],
    total_bytes: u64,
    depth: usize,
) -> Result<(f64, Histogram<u64>), String> {
    let depth = depth.max(1);
    let path = dir.join(format!("corelog-bench-raw-qd-{}.tmp", std::process::id()));
    let file = open_direct(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let result = run(&file, batch, total_bytes, depth);
    drop(file);
    let _ = std::fs::remove_file(&path);
    result
}

/// Creates (or empties) `path` for O_DIRECT reads and writes.
fn open_direct(path: &Path) -> std::io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
        .open(path)
}

fn run(
    file: &std::fs::File,
    batch: &[u8],
    total_bytes: u64,
    depth: usize,
) -> Result<(f64, Histogram<u64>), String> {
    let slot = batch.len().div_ceil(BLOCK) * BLOCK;
    let mut bufs: Vec<Aligned> = (0..depth).map(|_| Aligned::new(slot)).collect();
    for b in &mut bufs {
        b.bytes_mut()[..batch.len()].copy_from_slice(batch);
    }
    let batches = (total_bytes / batch.len() as u64).max(1);
    let mut ring = IoUring::new((depth + 1).next_power_of_two() as u32)
        .map_err(|e| format!("io_uring setup: {e}"))?;
    let fd = types::Fd(file.as_raw_fd());
    // Space reserved in segment-sized steps, as the engine's segments and the depth-one
    // peer do, so neither pays for allocation the other does not.
    let step = 1u64 << 30;
    let mut reserved = 0u64;
    let mut hist = Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let mut pos = 0u64;
    let mut done = 0u64;
    let start = Instant::now();
    while done < batches {
        let n = depth.min((batches - done) as usize);
        let t = Instant::now();
        if pos + (n * slot) as u64 > reserved {
            reserved += step.max((n * slot) as u64);
            fallocate_keep_size(file, reserved)?;
        }
        for (i, buf) in bufs.iter().enumerate().take(n) {
            let write = opcode::Write::new(fd, buf.ptr(), slot as u32)
                .offset(pos + (i * slot) as u64)
                .build()
                .user_data(i as u64);
            // SAFETY: each buffer outlives its write (we wait for every completion below
            // before touching or freeing the buffers).
            unsafe { ring.submission().push(&write) }.map_err(|_| "submission queue full")?;
        }
        reap(&mut ring, n, slot)?;
        let sync = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .user_data(u64::MAX);
        // SAFETY: the fsync refers to no memory.
        unsafe { ring.submission().push(&sync) }.map_err(|_| "submission queue full")?;
        reap(&mut ring, 1, 0)?;
        hist.saturating_record(t.elapsed().as_micros() as u64);
        pos += (n * slot) as u64;
        done += n as u64;
    }
    Ok((start.elapsed().as_secs_f64(), hist))
}

/// Submits what is queued and waits for `n` completions, each a full write of `len`
/// bytes (or, with `len` 0, a successful fsync).
fn reap(ring: &mut IoUring, n: usize, len: usize) -> Result<(), String> {
    let mut seen = 0;
    while seen < n {
        ring.submit_and_wait(n - seen)
            .map_err(|e| format!("io_uring submit: {e}"))?;
        for cqe in ring.completion() {
            let r = cqe.result();
            if r < 0 {
                return Err(format!(
                    "io_uring op failed: {}",
                    std::io::Error::from_raw_os_error(-r)
                ));
            }
            if len > 0 && r as usize != len {
                return Err(format!("short direct write: {r} of {len} bytes"));
            }
            seen += 1;
        }
    }
    Ok(())
}

fn fallocate_keep_size(file: &std::fs::File, len: u64) -> Result<(), String> {
    nix::fcntl::fallocate(
        file.as_raw_fd(),
        nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE,
        0,
        len as i64,
    )
    .map_err(|e| format!("fallocate: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queued_writes_land_whole_and_in_order() {
        // On the build disk (tmpfs may refuse O_DIRECT).
        let dir = tempfile::tempdir_in(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")).unwrap();
        let batch: Vec<u8> = (0..3 * BLOCK as u32 + 100)
            .map(|i| (i % 251) as u8)
            .collect();
        let path = dir.path().join("keep");
        let file = open_direct(&path).unwrap();
        let (secs, hist) = run(&file, &batch, 7 * batch.len() as u64, 3).unwrap();
        assert!(secs > 0.0);
        assert_eq!(hist.len(), 3, "rounds of 3, 3 and 1");
        drop(file);
        let got = std::fs::read(&path).unwrap();
        let slot = batch.len().div_ceil(BLOCK) * BLOCK;
        assert_eq!(got.len(), 7 * slot);
        for i in 0..7 {
            assert_eq!(
                &got[i * slot..i * slot + batch.len()],
                &batch[..],
                "batch {i}"
            );
        }
    }
}
