//! The log start offset when it lies inside a segment (Kafka's `log-start-offset-checkpoint`):
//! DeleteRecords moves the start to any offset, but only whole segments can be deleted,
//! so the start must be remembered apart from the segment files.
//!
//! Two one-block slots, written alternately, each with a sequence number and a CRC32C:
//! a write torn by a crash damages only the slot being written, and the other still holds
//! the previous start. Falling back to the physical start would bring deleted records
//! back, which is what the two slots are for.

use std::io;

use crate::io::{BLOCK, Disk, DiskFile};

pub(crate) const FILE: &str = "log-start.checkpoint";
const MAGIC: &[u8; 8] = b"CLSTART1";
const SLOT_LEN: usize = 28;

/// The newest valid slot: (sequence, start offset).
pub(crate) fn decode(bytes: &[u8]) -> Option<(u64, u64)> {
    (0..2)
        .filter_map(|slot| {
            let b = bytes.get(slot * BLOCK..slot * BLOCK + SLOT_LEN)?;
            let crc = u32::from_le_bytes(b[24..28].try_into().ok()?);
            (&b[..8] == MAGIC && crc32c::crc32c(&b[..24]) == crc).then(|| {
                (
                    u64::from_le_bytes(b[8..16].try_into().expect("8 bytes")),
                    u64::from_le_bytes(b[16..24].try_into().expect("8 bytes")),
                )
            })
        })
        .max_by_key(|&(seq, _)| seq)
}

fn encode(seq: u64, start: u64) -> Vec<u8> {
    let mut b = vec![0u8; BLOCK];
    b[..8].copy_from_slice(MAGIC);
    b[8..16].copy_from_slice(&seq.to_le_bytes());
    b[16..24].copy_from_slice(&start.to_le_bytes());
    let crc = crc32c::crc32c(&b[..24]);
    b[24..28].copy_from_slice(&crc.to_le_bytes());
    b
}

/// Reads the checkpoint if the directory has one.
pub(crate) async fn load<D: Disk>(disk: &D, names: &[String]) -> io::Result<Option<(u64, u64)>> {
    if !names.iter().any(|n| n == FILE) {
        return Ok(None);
    }
    let f = disk.open(FILE).await?;
    let bytes = f.read_at(0, 2 * BLOCK).await;
    f.close().await?;
    Ok(decode(&bytes?))
}

/// Writes `start` with sequence `seq` into the slot `seq` picks; durable on return.
pub(crate) async fn store<D: Disk>(disk: &D, seq: u64, start: u64) -> io::Result<()> {
    let f = disk.open(FILE).await?;
    let r = async {
        f.write_at((seq % 2) * BLOCK as u64, &encode(seq, start))
            .await?;
        f.sync().await
    }
    .await;
    f.close().await?;
    r?;
    // The first write created the file: its name must be durable too.
    if seq <= 1 {
        disk.sync_dir().await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_one_is_ignored() {
        let mut file = vec![0u8; 2 * BLOCK];
        assert_eq!(decode(&file), None);
        file[BLOCK..2 * BLOCK].copy_from_slice(&encode(1, 100));
        assert_eq!(decode(&file), Some((1, 100)));
        file[..BLOCK].copy_from_slice(&encode(2, 250));
        assert_eq!(decode(&file), Some((2, 250)));
        // Slot 1 torn while writing sequence 3: the previous start stands.
        let mut torn = encode(3, 900);
        torn[20] ^= 0xff;
        file[BLOCK..2 * BLOCK].copy_from_slice(&torn);
        assert_eq!(decode(&file), Some((2, 250)));
        // A short file (one slot written) still decodes.
        assert_eq!(decode(&file[..BLOCK]), Some((2, 250)));
    }
}
