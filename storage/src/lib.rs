//! corelog's partition log.
//!
//! A [`Log`] is a directory of segments, each a `.log` file of Kafka RecordBatch v2 bytes
//! exactly as produced (base offset patched) plus a sparse `.index`. All file access goes
//! through the [`Disk`] trait, implemented by [`GlommioDisk`] (io_uring, O_DIRECT) and by
//! [`SimDisk`] (memory, with crash, torn-write, read-error and bit-flip faults).
//!
//! **Invariant:** this crate knows nothing of sockets, Kafka requests or replication. It
//! never reads the clock: time comes in as `now_ms` arguments (only the glommio adapter
//! times its fdatasyncs, for the broker's metrics, and that time decides nothing).

mod append_file;
pub mod batch;
mod error;
#[cfg(all(feature = "glommio", not(madsim)))]
mod glommio_disk;
mod index;
pub mod io;
mod log;
mod segment;
mod sim_disk;
mod start_checkpoint;
pub mod stats;

pub use error::StorageError;
#[cfg(all(feature = "glommio", not(madsim)))]
pub use glommio_disk::{GlommioDisk, GlommioFile, fsync_latency};
pub use io::{Disk, DiskFile, IoBuf};
pub use log::{AppendInfo, Log, LogConfig, ReadBatches, SyncPoint, TimestampHit};
pub use sim_disk::{FaultConfig, SimBuf, SimDisk, SimFile};
