//! An incremental scan of the raw bytes of an HTTP/1 request head, as they arrive from the
//! socket (before Pingora parses them, since Pingora re-encodes invalid request targets instead
//! of refusing them): the request line's length, whether its target holds only characters RFC
//! 9112/3986 allow, and where the head ends. No buffer: a few bytes of state.
//!
//! A target is refused for control characters, spaces, DEL and raw non-ASCII bytes, `\`, `"`,
//! `<`, `>`, `#` and malformed percent-encodings. `[ ] { } | ^` and `` ` `` are tolerated: they are
//! outside RFC 3986 but browsers send them raw (WHATWG URL), and they separate nothing.

/// What the scan concluded about the request line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing wrong (so far).
    Fine,
    /// The line is malformed or its target holds a character that is not allowed (400).
    Invalid,
    /// The line is longer than the limit (414).
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Empty lines before the request line (RFC 9112 §2.2 lets servers skip them).
    Leading,
    Method,
    Target,
    Version,
    /// After the request line: only looking for the end of the head.
    Fields,
    /// The head ended.
    Done,
}

const VERSION: &[u8] = b"HTTP/";

/// The scan of one request head.
#[derive(Debug, Clone)]
pub struct HeadScan {
    part: Part,
    line_len: u64,
    max_line: u64,
    pct_left: u8,
    version_pos: u8,
    verdict: Verdict,
    /// The last bytes seen, newest in the low byte (to find CRLF CRLF / LF LF across reads).
    tail: u32,
}

/// A byte class table: one bit per class.
const fn table(extra: &[u8]) -> [bool; 256] {
    let mut t = [false; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        t[b] = c.is_ascii_alphanumeric();
        b += 1;
    }
    let mut i = 0;
    while i < extra.len() {
        t[extra[i] as usize] = true;
        i += 1;
    }
    t
}

/// RFC 9110 token characters (methods).
const TCHAR: [bool; 256] = table(b"!#$%&'*+-.^_`|~");
/// RFC 3986 unreserved, sub-delims, ':', '@', '/', '?', plus what browsers send raw.
const TARGET: [bool; 256] = table(b"-._~!$&'()*+,;=:@/?[]{}|^`");

fn tchar(b: u8) -> bool {
    TCHAR[usize::from(b)]
}

fn target_char(b: u8) -> bool {
    TARGET[usize::from(b)]
}

impl HeadScan {
    /// A scan for a new head, refusing request lines longer than `max_line` bytes.
    pub fn new(max_line: u64) -> Self {
        HeadScan {
            part: Part::Leading,
            line_len: 0,
            max_line,
            pct_left: 0,
            version_pos: 0,
            verdict: Verdict::Fine,
            tail: 0,
        }
    }

    /// The longest request line accepted.
    pub fn max_line(&self) -> u64 {
        self.max_line
    }

    /// The verdict so far (final once [`HeadScan::done`]).
    pub fn verdict(&self) -> Verdict {
        self.verdict
    }

    /// Whether the head has ended.
    pub fn done(&self) -> bool {
        self.part == Part::Done
    }

    fn invalid(&mut self) {
        if self.verdict == Verdict::Fine {
            self.verdict = Verdict::Invalid;
        }
    }

    /// Feeds the next bytes of the head. Returns how many of them belong to it (all of them
    /// unless the head ends inside `bytes`).
    pub fn feed(&mut self, bytes: &[u8]) -> usize {
        for (i, &b) in bytes.iter().enumerate() {
            if self.part == Part::Done {
                return i;
            }
            if self.part == Part::Fields {
                // The header fields are only searched for the end of the head.
                return i + self.fields(&bytes[i..]);
            }
            self.tail = (self.tail << 8) | u32::from(b);
            match self.part {
                Part::Leading => {
                    if b == b'\r' || b == b'\n' {
                        continue;
                    }
                    self.part = Part::Method;
                    self.tail = u32::from(b);
                    self.method_byte(b);
                }
                Part::Method => self.method_byte(b),
                Part::Target => self.target_byte(b),
                Part::Version => self.version_byte(b),
                Part::Fields => {}
                Part::Done => {}
            }
            // The line's length excludes its CR LF.
            if matches!(self.part, Part::Method | Part::Target | Part::Version)
                && b != b'\r'
                && b != b'\n'
            {
                self.line_len += 1;
                if self.line_len > self.max_line {
                    self.verdict = Verdict::TooLong;
                }
            }
        }
        bytes.len()
    }

    /// Looks for the blank line that ends the head in `rest` (header fields); returns how many
    /// bytes of `rest` belong to the head.
    fn fields(&mut self, rest: &[u8]) -> usize {
        // The byte `n` places before index `j` of `rest`, reaching into earlier reads.
        let before = |tail: u32, j: usize, n: usize| -> u8 {
            if j >= n {
                rest[j - n]
            } else {
                (tail >> (8 * (n - j - 1))) as u8
            }
        };
        let mut from = 0;
        while let Some(off) = memchr::memchr(b'\n', &rest[from..]) {
            let j = from + off;
            let p1 = before(self.tail, j, 1);
            if p1 == b'\n' || (p1 == b'\r' && before(self.tail, j, 2) == b'\n') {
                self.part = Part::Done;
                return j + 1;
            }
            from = j + 1;
        }
        for &b in rest.iter().rev().take(4).rev() {
            self.tail = (self.tail << 8) | u32::from(b);
        }
        rest.len()
    }

    fn method_byte(&mut self, b: u8) {
        match b {
            b' ' if self.line_len > 0 => self.part = Part::Target,
            _ if tchar(b) => {}
            _ => self.invalid(),
        }
    }

    fn target_byte(&mut self, b: u8) {
        if self.pct_left > 0 {
            if !b.is_ascii_hexdigit() {
                self.invalid();
            }
            self.pct_left -= 1;
            return;
        }
        match b {
            b' ' => {
                self.part = Part::Version;
                self.version_pos = 0;
            }
            b'%' => self.pct_left = 2,
            _ if target_char(b) => {}
            _ => self.invalid(),
        }
    }

    fn version_byte(&mut self, b: u8) {
        let pos = usize::from(self.version_pos);
        self.version_pos = self.version_pos.saturating_add(1);
        let ok = match pos {
            0..=4 => b == VERSION[pos],
            5 | 7 => b.is_ascii_digit(),
            6 => b == b'.',
            8 => b == b'\r' || b == b'\n',
            9 => b == b'\n' && self.tail & 0xFF00 == u32::from(b'\r') << 8,
            _ => false,
        };
        if !ok {
            self.invalid();
            // Stop checking this line; look for the end of the head.
            self.part = Part::Fields;
            return;
        }
        if b == b'\n' {
            self.part = Part::Fields;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(head: &[u8]) -> (Verdict, usize, bool) {
        let mut s = HeadScan::new(64);
        let used = s.feed(head);
        (s.verdict(), used, s.done())
    }

    #[test]
    fn a_clean_head_is_fine_and_its_end_is_found() {
        let head = b"GET /a/b?x=1&y=[2] HTTP/1.1\r\nHost: a\r\n\r\nBODY";
        assert_eq!(scan(head), (Verdict::Fine, head.len() - 4, true));
        let bare_lf = b"\r\nGET / HTTP/1.0\nHost: a\n\n";
        assert_eq!(scan(bare_lf), (Verdict::Fine, bare_lf.len(), true));
    }

    #[test]
    fn bad_targets_are_invalid() {
        for head in [
            &b"GET /a b HTTP/1.1\r\n\r\n"[..],
            b"GET /a\\b HTTP/1.1\r\n\r\n",
            b"GET /a\"b HTTP/1.1\r\n\r\n",
            b"GET /a%2 HTTP/1.1\r\n\r\n",
            b"GET /a%zz HTTP/1.1\r\n\r\n",
            b"GET /a#frag HTTP/1.1\r\n\r\n",
            b"GET /\x01 HTTP/1.1\r\n\r\n",
            b"GET /\xc3\xa9 HTTP/1.1\r\n\r\n",
            b"GET /a HTTP/1.1 extra\r\n\r\n",
            b"G(T /a HTTP/1.1\r\n\r\n",
        ] {
            assert_eq!(
                scan(head).0,
                Verdict::Invalid,
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

    #[test]
    fn long_lines_are_too_long_and_the_scan_works_across_reads() {
        let mut s = HeadScan::new(16);
        let head = b"GET /aaaaaaaaaaaaaaaaaaaa HTTP/1.1\r\nHost: a\r\n\r\n";
        let mut used = 0;
        for chunk in head.chunks(3) {
            used += s.feed(chunk);
        }
        assert_eq!(
            (s.verdict(), used, s.done()),
            (Verdict::TooLong, head.len(), true)
        );
        let mut s = HeadScan::new(16);
        s.feed(b"GET /ab HTTP/1.1\r\n\r\n");
        assert_eq!(s.verdict(), Verdict::Fine, "16 bytes is within 16");
        let mut s = HeadScan::new(15);
        s.feed(b"GET /ab HTTP/1.1\r\n\r\n");
        assert_eq!(s.verdict(), Verdict::TooLong);
    }
}
