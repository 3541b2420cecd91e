//! What a client can make the broker hold: connections per client address (shared by the
//! shards: accept and close only, never the request path) and, per shard, a budget of
//! request bytes being read or waiting to be answered (Kafka's `queued.max.request.bytes`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use glommio::sync::Semaphore;

/// Open connections per client address, across all shards (SO_REUSEPORT spreads one
/// client's connections over them, so a per-shard count would be wrong).
pub struct PerIp {
    counts: Mutex<HashMap<IpAddr, usize>>,
    max: usize,
}

/// One admitted connection; gives its place back when dropped.
pub struct IpSlot {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            counts: Mutex::new(HashMap::new()),
            max,
        })
    }

    /// `None` when this address already has `max` connections open.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let n = counts.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(IpSlot {
            owner: self.clone(),
            ip,
        })
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = counts.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

/// Frames up to this size draw on their own part of the budget.
pub const SMALL_FRAME: usize = 64 * 1024;

/// Bytes of requests being read or not yet answered on one shard. A reader takes units
/// as bytes arrive (not as a frame claims them) and waits while the budget is spent.
///
/// Small frames (every request but large produces) have a pool of their own, an eighth of
/// the budget: clients that fill the large pool with partly sent frames make other large
/// requests wait, never a consumer's fetch or a group heartbeat.
#[derive(Clone)]
pub struct Budget {
    large: Rc<Semaphore>,
    small: Rc<Semaphore>,
}

impl Budget {
    /// `bytes` must hold one whole frame of the largest size in its large pool.
    pub fn new(bytes: u64, max_frame: u64) -> Self {
        let small = (bytes / 8).max(8 * SMALL_FRAME as u64);
        Self {
            large: Rc::new(Semaphore::new(bytes.saturating_sub(small).max(max_frame))),
            small: Rc::new(Semaphore::new(small)),
        }
    }

    /// Units held for a frame that claims `size` bytes (none taken yet).
    pub fn reservation(&self, size: usize) -> Reservation {
        let sem = if size <= SMALL_FRAME {
            &self.small
        } else {
            &self.large
        };
        Reservation {
            sem: sem.clone(),
            units: 0,
        }
    }
}

/// Units held for one request; given back when the request has been answered (dropped).
pub struct Reservation {
    sem: Rc<Semaphore>,
    units: u64,
}

impl Reservation {
    /// Takes `n` more units, waiting for other requests to finish if needed.
    pub async fn grow(&mut self, n: u64) {
        if n == 0 {
            return;
        }
        // The semaphore is never closed, so acquire cannot fail.
        if self.sem.acquire(n).await.is_ok() {
            self.units += n;
        }
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if self.units > 0 {
            self.sem.signal(self.units);
        }
    }
}
