use std::io;

use thiserror::Error;

use crate::batch::BatchError;

/// Everything the log can refuse or fail at, as a type the broker maps to Kafka codes.
#[derive(Debug, Error)]
pub enum StorageError {
    /// The batch was refused before it reached the file.
    #[error("invalid batch: {0}")]
    Batch(#[from] BatchError),
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    /// Kafka's OFFSET_OUT_OF_RANGE: valid offsets are `start..=end`.
    #[error("offset {offset} is outside the log [{start}, {end}]")]
    OffsetOutOfRange { offset: u64, start: u64, end: u64 },
    /// Stored bytes failed their CRC or framing; they are never served.
    #[error("corrupt data in segment {segment} at byte {position}: {reason}")]
    Corrupt {
        segment: u64,
        position: u64,
        reason: String,
    },
    /// `append_at` got a batch that does not continue the log.
    #[error("batch base offset {base_offset} is not the log's next offset {next_offset}")]
    NotNextOffset { base_offset: i64, next_offset: u64 },
    #[error("invalid log config: {0}")]
    Config(String),
}
