//! Upgraded WebSocket connections, as the downstream [`HeadGuard`](super::listener::HeadGuard)
//! sees them: every frame of both directions crosses the client's socket (client frames are
//! read, upstream frames are written), so the guard alone can tell idleness and frame
//! boundaries without a hook in Pingora's upgraded-connection loop.
//!
//! - **Idle timeout.** A connection with no byte in either direction for the route's
//!   `websocket_idle_timeout` is closed. It replaces the per-read timeouts, which the proxy
//!   lifts once the connection is upgraded (the downstream one in `response_filter`, the
//!   upstream one by the carried Pingora patch, see `third_party/README.md`).
//! - **Going away.** When the process is told to stop (graceful upgrade or shutdown), the guard
//!   sends the client a close frame with code 1001 at the next boundary between the upstream's
//!   frames, and hands the proxy a masked close frame 1001 for the upstream at the next boundary
//!   between the client's frames, as if the client had sent it. After that, the upstream's
//!   frames to the client and the client's frames to the upstream are dropped; the connection
//!   ends when the upstream closes it (its answer to the close) or the client does.

use std::time::Duration;

/// The close frame with status 1001 (going away) a server sends: FIN + close, unmasked.
pub const CLOSE_GOING_AWAY: [u8; 4] = [0x88, 0x02, 0x03, 0xE9];

/// The same close frame as a client must send it: masked with `key`.
pub fn masked_close_going_away(key: [u8; 4]) -> [u8; 8] {
    [
        0x88,
        0x82,
        key[0],
        key[1],
        key[2],
        key[3],
        0x03 ^ key[0],
        0xE9 ^ key[1],
    ]
}

/// Follows the frame boundaries of one direction of a WebSocket stream.
#[derive(Debug, Default, Clone)]
pub struct Frames {
    header: [u8; 14],
    header_len: u8,
    payload_left: u64,
}

impl Frames {
    /// Whether the bytes seen so far end exactly at the end of a frame.
    pub fn at_boundary(&self) -> bool {
        self.header_len == 0 && self.payload_left == 0
    }

    /// The length of a frame header that starts with these bytes, once it can be told.
    fn header_size(h: &[u8]) -> Option<usize> {
        let b1 = *h.get(1)?;
        let ext = match b1 & 0x7f {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if b1 & 0x80 != 0 { 4 } else { 0 };
        Some(2 + ext + mask)
    }

    /// Consumes `bytes` and returns how many of them end at the first frame boundary reached
    /// (`None`: none is reached within them, or they start at one and are empty).
    pub fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        let mut i = 0;
        let mut first_boundary = None;
        while i < bytes.len() {
            if self.payload_left > 0 {
                let take =
                    (bytes.len() - i).min(usize::try_from(self.payload_left).unwrap_or(usize::MAX));
                i += take;
                self.payload_left -= take as u64;
            } else {
                self.header[usize::from(self.header_len)] = bytes[i];
                self.header_len += 1;
                i += 1;
                let len = usize::from(self.header_len);
                match Self::header_size(&self.header[..len]) {
                    Some(size) if size == len => {
                        self.payload_left = payload_len(&self.header[..len]);
                        self.header_len = 0;
                    }
                    _ => continue,
                }
            }
            if self.at_boundary() && first_boundary.is_none() {
                first_boundary = Some(i);
            }
        }
        first_boundary
    }
}

fn payload_len(h: &[u8]) -> u64 {
    match h[1] & 0x7f {
        126 => u64::from(u16::from_be_bytes([h[2], h[3]])),
        127 => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
        n => u64::from(n),
    }
}

/// Where the going-away close stands in one direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Closing {
    /// Not started.
    #[default]
    No,
    /// Waiting for a frame boundary, or writing the close frame (`.0` bytes of it done).
    Sending(usize),
    /// Sent: further frames this way are dropped.
    Sent,
}

/// The state of an upgraded connection.
#[derive(Debug)]
pub struct Upgraded {
    /// Close after this long without a byte either way.
    pub idle_timeout: Duration,
    /// Client-to-upstream frames (read).
    pub from_client: Frames,
    /// Upstream-to-client frames (written).
    pub to_client: Frames,
    /// The close 1001 to the client.
    pub client_close: Closing,
    /// The close 1001 handed to the proxy for the upstream.
    pub upstream_close: Closing,
    /// The process is going away.
    pub going_away: bool,
}

impl Upgraded {
    /// A freshly upgraded connection.
    pub fn new(idle_timeout: Duration) -> Self {
        Upgraded {
            idle_timeout,
            from_client: Frames::default(),
            to_client: Frames::default(),
            client_close: Closing::No,
            upstream_close: Closing::No,
            going_away: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_track_boundaries_across_chunks() {
        let mut f = Frames::default();
        // A masked 5-byte text frame, then a 200-byte frame (16-bit length), split anyhow.
        let mut stream = vec![0x81, 0x85, 1, 2, 3, 4, b'h', b'e', b'l', b'l', b'o'];
        let first = stream.len();
        stream.extend_from_slice(&[0x82, 126, 0, 200]);
        stream.extend(std::iter::repeat_n(7u8, 200));
        assert_eq!(f.feed(&stream[..3]), None);
        assert!(!f.at_boundary());
        assert_eq!(f.feed(&stream[3..first + 2]), Some(first - 3));
        assert!(!f.at_boundary());
        assert_eq!(f.feed(&stream[first + 2..first + 100]), None);
        assert_eq!(
            f.feed(&stream[first + 100..]),
            Some(stream.len() - first - 100)
        );
        assert!(f.at_boundary());
    }

    #[test]
    fn empty_frames_and_64_bit_lengths() {
        let mut f = Frames::default();
        assert_eq!(f.feed(&[0x89, 0x00]), Some(2));
        let mut big = vec![0x82, 127];
        big.extend_from_slice(&3u64.to_be_bytes());
        big.extend_from_slice(b"abc");
        assert_eq!(f.feed(&big), Some(big.len()));
    }

    #[test]
    fn close_frames_carry_1001() {
        assert_eq!(CLOSE_GOING_AWAY, [0x88, 2, 0x03, 0xE9]);
        let m = masked_close_going_away([0xA, 0xB, 0xC, 0xD]);
        assert_eq!(&m[..6], &[0x88, 0x82, 0xA, 0xB, 0xC, 0xD]);
        assert_eq!([m[6] ^ 0xA, m[7] ^ 0xB], [0x03, 0xE9]);
    }
}
