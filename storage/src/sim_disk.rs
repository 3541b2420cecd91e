//! `SimDisk`: an in-memory [`Disk`] with the faults of a real one, for tests and the
//! simulator. Deterministic: every random choice comes from the seed it is built with.
//!
//! # Fault model
//!
//! What a real disk (ext4 on a device with a volatile write cache) may do, and so what the
//! log must survive:
//!
//! 1. **Unsynced writes are lost on crash, or some of them, in any order.** Each file keeps
//!    its durable bytes (as of its last `sync`) and the list of writes and truncations since.
//!    On [`SimDisk::crash`] each of those operations independently survives with probability
//!    `FaultConfig::persist_probability`, block by block for writes, so a later write may
//!    survive while an earlier one is lost (the device reorders its cache).
//! 2. **The last write may be torn.** With probability `FaultConfig::torn_probability` the
//!    final unsynced write keeps only a prefix of 512-byte sectors of one of its blocks.
//! 3. **Namespace changes need a directory sync.** A file created since the last
//!    `sync_dir` is gone after a crash; a file removed since then comes back.
//! 4. **Latent read errors.** [`SimDisk::fail_reads`] makes reads of one block of one file
//!    return `EIO`; `FaultConfig::read_error_probability` does so at random per read.
//! 5. **Bit rot.** [`SimDisk::flip_bit`] flips a stored bit, durably, as a decaying medium
//!    would; only CRCs can tell.
//! 6. **Bit flips in transit.** `FaultConfig::read_flip_probability` flips one bit of the
//!    data a read returns (a bad cable, controller or DMA), leaving the stored bytes
//!    intact: the same read again returns the truth.
//!
//! An fdatasync takes time ([`SimDisk::set_sync_delay`]; none by default): it covers the
//! file as it was when the call was made, and makes that durable only when it returns,
//! so a crash in between loses what it would have covered, and writes made while it runs
//! are not covered (they wait for the next sync), as on a real disk.
//!
//! Direct-I/O alignment is enforced as the kernel does: an unaligned write or truncate
//! fails with `EINVAL`, so alignment bugs surface here first.
//!
//! Out of scope: writes that report success but never happen (lost writes while the
//! machine stays up), and misdirected writes; a crash never corrupts synced data.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::rc::Rc;

use crate::io::{BLOCK, Disk, DiskFile, IoBuf};

const SECTOR: usize = 512;

/// Probabilities of the random faults; all default to a harsh but survivable mix.
#[derive(Debug, Clone, Copy)]
pub struct FaultConfig {
    /// Chance that each unsynced write block (or truncation) survives a crash.
    pub persist_probability: f64,
    /// Chance that the last unsynced write is torn at a crash.
    pub torn_probability: f64,
    /// Chance that any read fails with EIO.
    pub read_error_probability: f64,
    /// Chance that a read returns its data with one bit flipped (not stored).
    pub read_flip_probability: f64,
}

impl Default for FaultConfig {
    fn default() -> Self {
        Self {
            persist_probability: 0.5,
            torn_probability: 0.5,
            read_error_probability: 0.0,
            read_flip_probability: 0.0,
        }
    }
}

/// How long an fdatasync takes: a future made for each one (a simulator's timer).
pub type SyncDelay = Rc<dyn Fn() -> Pin<Box<dyn Future<Output = ()>>>>;

/// A cheap clonable handle: clones share one simulated device.
#[derive(Clone)]
pub struct SimDisk {
    state: Rc<RefCell<State>>,
}

struct State {
    /// The namespace as the running system sees it.
    files: BTreeMap<String, Rc<RefCell<FileData>>>,
    /// The namespace as of the last `sync_dir`, what a crash returns to.
    durable_names: BTreeMap<String, Rc<RefCell<FileData>>>,
    /// Bumped by each crash; handles from an older generation fail, like the fds of a
    /// process that died.
    generation: u64,
    rng: SplitMix64,
    faults: FaultConfig,
    failing_blocks: BTreeSet<(String, u64)>,
    /// fdatasync calls per file name, for tests that count them (group commit).
    syncs: BTreeMap<String, u64>,
    sync_delay: Option<SyncDelay>,
}

#[derive(Default, Clone)]
struct FileData {
    current: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Op>,
    /// Operations ever taken into `durable` by a sync: a sync covers those before its
    /// own count, and one that ends after a later one made more durable changes nothing.
    synced_ops: usize,
}

#[derive(Clone)]
enum Op {
    Write { pos: u64, data: Vec<u8> },
    Truncate { len: u64 },
}

impl SimDisk {
    pub fn new(seed: u64) -> Self {
        Self::with_faults(seed, FaultConfig::default())
    }

    pub fn with_faults(seed: u64, faults: FaultConfig) -> Self {
        Self {
            state: Rc::new(RefCell::new(State {
                files: BTreeMap::new(),
                durable_names: BTreeMap::new(),
                generation: 0,
                rng: SplitMix64(seed),
                faults,
                failing_blocks: BTreeSet::new(),
                syncs: BTreeMap::new(),
                sync_delay: None,
            })),
        }
    }

    /// Every fdatasync from now on takes as long as a future `delay` makes.
    pub fn set_sync_delay(&self, delay: SyncDelay) {
        self.state.borrow_mut().sync_delay = Some(delay);
    }

    /// Power loss: every file returns to its durable bytes plus a random subset of its
    /// unsynced operations (see the fault model). Open handles become invalid.
    pub fn crash(&self) {
        let mut s = self.state.borrow_mut();
        let faults = s.faults;
        let names = s.durable_names.clone();
        let mut files = BTreeMap::new();
        for (name, data) in names {
            let old = data.borrow().clone();
            let mut content = old.durable.clone();
            let last = old.unsynced.len().checked_sub(1);
            for (i, op) in old.unsynced.iter().enumerate() {
                match op {
                    Op::Truncate { len } => {
                        if s.rng.chance(faults.persist_probability) {
                            content.resize(*len as usize, 0);
                        }
                    }
                    Op::Write { pos, data } => {
                        let torn_block = (Some(i) == last && s.rng.chance(faults.torn_probability))
                            .then(|| s.rng.below((data.len() / BLOCK) as u64) as usize);
                        for (b, block) in data.chunks(BLOCK).enumerate() {
                            let keep = if torn_block == Some(b) {
                                s.rng.below((BLOCK / SECTOR) as u64) as usize * SECTOR
                            } else if s.rng.chance(faults.persist_probability) {
                                BLOCK
                            } else {
                                0
                            };
                            if keep > 0 {
                                let at = *pos as usize + b * BLOCK;
                                if content.len() < at + BLOCK {
                                    content.resize(at + BLOCK, 0);
                                }
                                content[at..at + keep].copy_from_slice(&block[..keep]);
                            }
                        }
                    }
                }
            }
            let fresh = FileData {
                current: content.clone(),
                durable: content,
                unsynced: Vec::new(),
                synced_ops: 0,
            };
            files.insert(name, Rc::new(RefCell::new(fresh)));
        }
        s.durable_names = files.clone();
        s.files = files;
        s.generation += 1;
    }

    /// Makes every read touching block `block` of `name` fail with EIO.
    pub fn fail_reads(&self, name: &str, block: u64) {
        self.state
            .borrow_mut()
            .failing_blocks
            .insert((name.to_string(), block));
    }

    /// Changes the random fault rates of this disk from now on.
    pub fn set_faults(&self, faults: FaultConfig) {
        self.state.borrow_mut().faults = faults;
    }

    /// How many times `name` was fdatasynced.
    pub fn sync_count(&self, name: &str) -> u64 {
        self.state.borrow().syncs.get(name).copied().unwrap_or(0)
    }

    /// Clears all injected read errors.
    pub fn heal_reads(&self) {
        self.state.borrow_mut().failing_blocks.clear();
    }

    /// Flips bit `bit` of byte `pos` of `name`, in both the current and durable bytes.
    pub fn flip_bit(&self, name: &str, pos: u64, bit: u8) {
        let s = self.state.borrow();
        let data = s.files.get(name).expect("flip_bit: no such file");
        let mut guard = data.borrow_mut();
        let d = &mut *guard;
        for bytes in [&mut d.current, &mut d.durable] {
            if let Some(b) = bytes.get_mut(pos as usize) {
                *b ^= 1 << (bit % 8);
            }
        }
    }

    /// The current bytes of `name` (for tests that inspect the disk).
    pub fn contents(&self, name: &str) -> Option<Vec<u8>> {
        let s = self.state.borrow();
        s.files.get(name).map(|d| d.borrow().current.clone())
    }
}

impl Disk for SimDisk {
    type File = SimFile;

    async fn open(&self, name: &str) -> io::Result<SimFile> {
        let mut s = self.state.borrow_mut();
        let data = s.files.entry(name.to_string()).or_default().clone();
        Ok(SimFile {
            disk: self.clone(),
            name: name.to_string(),
            data,
            generation: s.generation,
        })
    }

    async fn remove(&self, name: &str) -> io::Result<()> {
        match self.state.borrow_mut().files.remove(name) {
            Some(_) => Ok(()),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    async fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.state.borrow().files.keys().cloned().collect())
    }

    async fn sync_dir(&self) -> io::Result<()> {
        let mut s = self.state.borrow_mut();
        s.durable_names = s.files.clone();
        Ok(())
    }
}

/// A handle to one simulated file.
pub struct SimFile {
    disk: SimDisk,
    name: String,
    data: Rc<RefCell<FileData>>,
    generation: u64,
}

impl SimFile {
    fn check_alive(&self) -> io::Result<()> {
        if self.disk.state.borrow().generation != self.generation {
            return Err(io::Error::other("SimDisk crashed: stale file handle"));
        }
        Ok(())
    }
}

fn einval(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

/// The simulated disk's write buffer: plain memory.
pub struct SimBuf(Vec<u8>);

impl IoBuf for SimBuf {
    fn as_bytes(&self) -> &[u8] {
        &self.0
    }
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
}

impl DiskFile for SimFile {
    type Buf = SimBuf;

    fn alloc_buf(&self, len: usize) -> SimBuf {
        // Not zeroed, like fresh DMA memory: code that forgets its padding shows up.
        SimBuf(vec![0xa5; len])
    }

    async fn write_buf(&self, pos: u64, buf: Rc<SimBuf>) -> io::Result<()> {
        self.write_at(pos, &buf.0).await
    }

    async fn write_at(&self, pos: u64, data: &[u8]) -> io::Result<()> {
        self.check_alive()?;
        if pos % BLOCK as u64 != 0 || data.len() % BLOCK != 0 {
            return Err(einval("unaligned direct-I/O write"));
        }
        let mut d = self.data.borrow_mut();
        let end = pos as usize + data.len();
        if d.current.len() < end {
            d.current.resize(end, 0);
        }
        d.current[pos as usize..end].copy_from_slice(data);
        d.unsynced.push(Op::Write {
            pos,
            data: data.to_vec(),
        });
        Ok(())
    }

    async fn read_at(&self, pos: u64, len: usize) -> io::Result<Vec<u8>> {
        self.check_alive()?;
        {
            let mut s = self.disk.state.borrow_mut();
            let p = s.faults.read_error_probability;
            let first = pos / BLOCK as u64;
            let last = (pos + len.max(1) as u64 - 1) / BLOCK as u64;
            let injected =
                (first..=last).any(|b| s.failing_blocks.contains(&(self.name.clone(), b)));
            if injected || (p > 0.0 && s.rng.chance(p)) {
                return Err(io::Error::from_raw_os_error(5)); // EIO
            }
        }
        let d = self.data.borrow();
        let start = (pos as usize).min(d.current.len());
        let end = (pos as usize + len).min(d.current.len());
        let mut out = d.current[start..end].to_vec();
        let mut s = self.disk.state.borrow_mut();
        let p = s.faults.read_flip_probability;
        if p > 0.0 && !out.is_empty() && s.rng.chance(p) {
            let at = s.rng.below(out.len() as u64) as usize;
            let bit = s.rng.below(8);
            out[at] ^= 1 << bit;
        }
        Ok(out)
    }

    async fn sync(&self) -> io::Result<()> {
        self.check_alive()?;
        let delay = {
            let mut s = self.disk.state.borrow_mut();
            *s.syncs.entry(self.name.clone()).or_default() += 1;
            s.sync_delay.clone()
        };
        // What this sync covers: the file as it is now.
        let (snapshot, covers) = {
            let d = self.data.borrow();
            (d.current.clone(), d.synced_ops + d.unsynced.len())
        };
        if let Some(delay) = delay {
            delay().await;
            self.check_alive()?;
        }
        let mut d = self.data.borrow_mut();
        if covers > d.synced_ops {
            let n = covers - d.synced_ops;
            d.unsynced.drain(..n);
            d.synced_ops = covers;
            d.durable = snapshot;
        }
        Ok(())
    }

    async fn size(&self) -> io::Result<u64> {
        self.check_alive()?;
        Ok(self.data.borrow().current.len() as u64)
    }

    async fn truncate(&self, len: u64) -> io::Result<()> {
        self.check_alive()?;
        if len % BLOCK as u64 != 0 {
            return Err(einval("unaligned truncate"));
        }
        let mut d = self.data.borrow_mut();
        d.current.resize(len as usize, 0);
        d.unsynced.push(Op::Truncate { len });
        Ok(())
    }

    async fn preallocate(&self, _len: u64) -> io::Result<()> {
        // Reserving space changes no byte and no size: nothing to simulate but liveness.
        self.check_alive()
    }

    async fn close(self) -> io::Result<()> {
        Ok(())
    }
}

/// SplitMix64: tiny, seedable, good enough for fault dice. Not for anything secret.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next() % n }
    }

    fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_lite::future::block_on;

    #[test]
    fn synced_data_survives_and_unaligned_writes_are_refused() {
        block_on(async {
            let disk = SimDisk::new(1);
            let f = disk.open("a").await.unwrap();
            disk.sync_dir().await.unwrap();
            assert!(f.write_at(1, &[0; BLOCK]).await.is_err());
            assert!(f.write_at(0, &[0; 100]).await.is_err());
            f.write_at(0, &[7; BLOCK]).await.unwrap();
            f.sync().await.unwrap();
            disk.crash();
            assert!(f.read_at(0, 1).await.is_err(), "stale handle must fail");
            let g = disk.open("a").await.unwrap();
            assert_eq!(g.read_at(0, BLOCK).await.unwrap(), vec![7; BLOCK]);
        })
    }

    #[test]
    fn unsynced_writes_and_unsynced_names_can_vanish() {
        block_on(async {
            let lost = FaultConfig {
                persist_probability: 0.0,
                torn_probability: 0.0,
                read_error_probability: 0.0,
                read_flip_probability: 0.0,
            };
            let disk = SimDisk::with_faults(2, lost);
            let f = disk.open("a").await.unwrap();
            disk.sync_dir().await.unwrap();
            f.write_at(0, &[1; BLOCK]).await.unwrap();
            let _ = disk.open("b").await.unwrap();
            disk.crash();
            assert_eq!(disk.list().await.unwrap(), vec!["a".to_string()]);
            let g = disk.open("a").await.unwrap();
            assert_eq!(g.size().await.unwrap(), 0);
        })
    }

    #[test]
    fn injected_read_errors_and_bit_flips_show() {
        block_on(async {
            let disk = SimDisk::new(3);
            let f = disk.open("a").await.unwrap();
            f.write_at(0, &[0; 2 * BLOCK]).await.unwrap();
            disk.fail_reads("a", 1);
            assert!(f.read_at(0, 10).await.is_ok());
            assert_eq!(
                f.read_at(BLOCK as u64 - 1, 2)
                    .await
                    .unwrap_err()
                    .raw_os_error(),
                Some(5)
            );
            disk.heal_reads();
            disk.flip_bit("a", 5, 3);
            assert_eq!(f.read_at(5, 1).await.unwrap(), vec![8]);
        })
    }
}
