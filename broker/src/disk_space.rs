//! Free space on the data dir's file system, watched per shard, so that writes are refused
//! early and clearly while the disk is nearly full instead of failing with ENOSPC (which
//! takes a partition offline). Reads are never refused; writes resume by themselves once
//! space comes back (retention, a deleted topic, the operator).
//!
//! Each shard runs a watcher task that reads `statvfs` every 500 ms into thread-local
//! state (a shard is one thread): the produce path reads a `Cell`, no lock. Between
//! readings a shard counts what it accepted and reads again after every 1 MiB, so a fast
//! writer cannot run the disk full between two ticks (the shards together overshoot by
//! at most a MiB each).

use std::cell::Cell;
use std::path::PathBuf;
use std::time::Duration;

thread_local! {
    /// (free bytes, reserve bytes); u64::MAX free until the first reading.
    static STATE: Cell<(u64, u64)> = const { Cell::new((u64::MAX, 0)) };
    /// Bytes this shard accepted since the last reading.
    static WRITTEN: Cell<u64> = const { Cell::new(0) };
    static WARNED: Cell<bool> = const { Cell::new(false) };
    static WATCHED: std::cell::RefCell<Option<(PathBuf, Option<u64>)>> =
        const { std::cell::RefCell::new(None) };
}

const REREAD_BYTES: u64 = 1 << 20;

const INTERVAL: Duration = Duration::from_millis(500);

/// The default reserve: 1 GiB, or 2% of the file system when that is smaller (a small
/// volume keeps most of itself usable).
pub fn default_reserve(total_bytes: u64) -> u64 {
    (1u64 << 30).min(total_bytes / 50)
}

fn read(dir: &PathBuf) -> Option<(u64, u64)> {
    let s = nix::sys::statvfs::statvfs(dir).ok()?;
    let frag = s.fragment_size() as u64;
    // Space an unprivileged writer may use (root's reserved blocks are not ours to plan on).
    Some((s.blocks_available() as u64 * frag, s.blocks() as u64 * frag))
}

fn update() {
    let Some((dir, reserve)) = WATCHED.with(|w| w.borrow().clone()) else {
        return;
    };
    if let Some((free, total)) = read(&dir) {
        let reserve = reserve.unwrap_or_else(|| default_reserve(total));
        STATE.with(|s| s.set((free, reserve)));
        WRITTEN.with(|w| w.set(0));
        let low = free < reserve;
        if WARNED.with(|w| w.replace(low)) != low {
            if low {
                tracing::warn!(free, reserve, dir = %dir.display(), "disk space below the reserve: produce requests are refused until space comes back (storage_min_free_bytes)");
            } else {
                tracing::info!(
                    free,
                    reserve,
                    "disk space back above the reserve: writes resume"
                );
            }
        }
    }
}

/// Starts this shard's watcher; `reserve` None means [`default_reserve`].
pub fn spawn_watcher(dir: PathBuf, reserve: Option<u64>, stopping: impl Fn() -> bool + 'static) {
    WATCHED.with(|w| *w.borrow_mut() = Some((dir, reserve)));
    update();
    glommio::spawn_local(async move {
        while !stopping() {
            glommio::timer::sleep(INTERVAL).await;
            update();
        }
    })
    .detach();
}

/// Counts bytes this shard accepted for writing; reads the free space again every MiB.
pub fn note_written(bytes: u64) {
    let w = WRITTEN.with(|w| {
        let v = w.get() + bytes;
        w.set(v);
        v
    });
    if w >= REREAD_BYTES {
        update();
    }
}

/// Whether a write may go ahead. Internal partitions (offset commits) keep writing down to
/// a quarter of the reserve, so consumers can still commit while producers are refused.
pub fn check_write(internal: bool) -> Result<(), String> {
    let (free, reserve) = STATE.with(|s| s.get());
    let free = free.saturating_sub(WRITTEN.with(|w| w.get()));
    let floor = if internal { reserve / 4 } else { reserve };
    if free < floor {
        return Err(format!(
            "disk nearly full: {free} bytes free, below the {floor}-byte reserve (storage_min_free_bytes); writes resume when space comes back"
        ));
    }
    Ok(())
}

/// The free bytes of the last reading, less what this shard accepted since.
pub fn free_bytes() -> u64 {
    let (free, _) = STATE.with(|s| s.get());
    free.saturating_sub(WRITTEN.with(|w| w.get()))
}
