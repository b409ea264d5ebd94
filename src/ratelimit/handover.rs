//! The local store's counters as handed from a process to the one that replaces it in a
//! graceful upgrade: the format (pure; the files and the timing are
//! [`crate::services::handover`]).
//!
//! Keys are the store's SipHash-1-3 values under the seed both processes share (the header
//! carries a fingerprint of it); times are relative (`age_ms`, `forgettable_in_ms`) to the
//! writer's wall clock at `written_at_ms`, since each process's store clock starts at zero.
//! Layout, little-endian: magic `GHRLHO01`, a 48-byte header (version, flags, writer pid,
//! sequence, written-at, seed fingerprint, entry count), 72 bytes per entry, and a SHA-256 of
//! everything before it, so that a truncated or corrupted file is refused as a whole.

use sha2::Digest;

const MAGIC: &[u8; 8] = b"GHRLHO01";
const VERSION: u32 = 1;
const HEADER: usize = 8 + 48;
const ENTRY: usize = 72;
const TRAILER: usize = 32;
/// The header flag of the writer's last hand-over.
const FINAL: u32 = 1;

/// One key's counters, as handed over.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HandedEntry {
    /// The store key.
    pub key: u64,
    /// Token balance, `age_ms` before the hand-over was written (not refilled since).
    pub tokens: f64,
    /// How old the balance was when the hand-over was written.
    pub age_ms: u64,
    /// UTC day number of `day_count`.
    pub day: u64,
    /// Requests admitted on `day`.
    pub day_count: u64,
    /// Month number of `month_count`.
    pub month: u64,
    /// Requests admitted in `month`.
    pub month_count: u64,
    /// How long after the hand-over the entry could be forgotten.
    pub forgettable_in_ms: u64,
    /// Eviction class.
    pub class: u8,
}

/// The quota counts already merged from one writer for one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Merged {
    /// Day number of `day_count`.
    pub day: u64,
    /// Day count merged.
    pub day_count: u64,
    /// Month number of `month_count`.
    pub month: u64,
    /// Month count merged.
    pub month_count: u64,
}

/// What a hand-over says about itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The writing process.
    pub pid: u32,
    /// Increases with each hand-over of the same writer.
    pub seq: u64,
    /// The writer's last hand-over (it has stopped admitting).
    pub last: bool,
    /// Wall-clock time of writing, Unix milliseconds.
    pub written_at_ms: u64,
    /// Fingerprint of the writer's key seed.
    pub seed_fingerprint: u64,
}

/// Why a hand-over was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    /// Not a hand-over file, or one from an incompatible build.
    #[error("not a rate-limit hand-over (bad magic or version)")]
    Format,
    /// Cut short or extended.
    #[error("hand-over has {actual} bytes where its header announces {expected}")]
    Length {
        /// From the header's entry count.
        expected: usize,
        /// On disk.
        actual: usize,
    },
    /// More entries than the reader holds.
    #[error("hand-over has {0} entries, more than this process holds (max_keys)")]
    TooLarge(u64),
    /// The checksum does not match.
    #[error("hand-over checksum mismatch (corrupted)")]
    Checksum,
}

/// Encodes a hand-over.
pub fn encode(header: &Header, entries: &[HandedEntry]) -> Vec<u8> {
    let mut out = Vec::with_capacity(HEADER + entries.len() * ENTRY + TRAILER);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(if header.last { FINAL } else { 0 }).to_le_bytes());
    out.extend_from_slice(&header.pid.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&header.seq.to_le_bytes());
    out.extend_from_slice(&header.written_at_ms.to_le_bytes());
    out.extend_from_slice(&header.seed_fingerprint.to_le_bytes());
    out.extend_from_slice(&(entries.len() as u64).to_le_bytes());
    for e in entries {
        out.extend_from_slice(&e.key.to_le_bytes());
        out.extend_from_slice(&e.tokens.to_le_bytes());
        for v in [
            e.age_ms,
            e.day,
            e.day_count,
            e.month,
            e.month_count,
            e.forgettable_in_ms,
        ] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        out.extend_from_slice(&u64::from(e.class).to_le_bytes());
    }
    let digest = sha2::Sha256::digest(&out);
    out.extend_from_slice(&digest);
    out
}

/// Decodes a hand-over of at most `max_entries` entries.
pub fn decode(bytes: &[u8], max_entries: usize) -> Result<(Header, Vec<HandedEntry>), DecodeError> {
    if bytes.len() < HEADER + TRAILER || &bytes[..8] != MAGIC || u32_at(bytes, 8) != VERSION {
        return Err(DecodeError::Format);
    }
    let count = u64_at(bytes, 48);
    if count > max_entries as u64 {
        return Err(DecodeError::TooLarge(count));
    }
    let expected = HEADER + count as usize * ENTRY + TRAILER;
    if bytes.len() != expected {
        return Err(DecodeError::Length {
            expected,
            actual: bytes.len(),
        });
    }
    let (body, digest) = bytes.split_at(bytes.len() - TRAILER);
    if sha2::Sha256::digest(body).as_slice() != digest {
        return Err(DecodeError::Checksum);
    }
    let header = Header {
        last: u32_at(bytes, 12) & FINAL != 0,
        pid: u32_at(bytes, 16),
        seq: u64_at(bytes, 24),
        written_at_ms: u64_at(bytes, 32),
        seed_fingerprint: u64_at(bytes, 40),
    };
    let entries = body[HEADER..]
        .chunks_exact(ENTRY)
        .map(|c| HandedEntry {
            key: u64_at(c, 0),
            tokens: f64::from_le_bytes(c[8..16].try_into().unwrap_or_default()),
            age_ms: u64_at(c, 16),
            day: u64_at(c, 24),
            day_count: u64_at(c, 32),
            month: u64_at(c, 40),
            month_count: u64_at(c, 48),
            forgettable_in_ms: u64_at(c, 56),
            class: u64_at(c, 64).min(u64::from(u8::MAX)) as u8,
        })
        .collect();
    Ok((header, entries))
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap_or_default())
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> (Header, Vec<HandedEntry>) {
        let header = Header {
            pid: 4242,
            seq: 7,
            last: true,
            written_at_ms: 1_796_000_000_123,
            seed_fingerprint: 0xfeed_beef,
        };
        let entries = (0..3)
            .map(|i| HandedEntry {
                key: 0x1234_5678_9abc_def0 + i,
                tokens: 2.5 + i as f64,
                age_ms: 10 * i,
                day: 20_788,
                day_count: 100 + i,
                month: 24_322,
                month_count: 1_000 + i,
                forgettable_in_ms: 86_000_000,
                class: 2,
            })
            .collect();
        (header, entries)
    }

    #[test]
    fn round_trips() {
        let (header, entries) = sample();
        let bytes = encode(&header, &entries);
        assert_eq!(bytes.len(), HEADER + 3 * ENTRY + TRAILER);
        assert_eq!(decode(&bytes, 10), Ok((header, entries)));
    }

    #[test]
    fn refuses_corruption_truncation_and_oversize() {
        let (header, entries) = sample();
        let bytes = encode(&header, &entries);
        for i in [0, 9, 20, HEADER + 5, bytes.len() - 1] {
            let mut bad = bytes.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad, 10).is_err(), "byte {i} flipped");
        }
        assert!(matches!(
            decode(&bytes[..bytes.len() - 1], 10),
            Err(DecodeError::Length { .. })
        ));
        assert_eq!(decode(&bytes, 2), Err(DecodeError::TooLarge(3)));
        assert_eq!(decode(b"garbage", 10), Err(DecodeError::Format));
        assert_eq!(decode(&[], 10), Err(DecodeError::Format));
    }
}
