//! What the fuzz targets share: a lenient byte reader for their inputs and its inverse, the
//! writer `examples/seeds.rs` uses to write the seed corpus.
//!
//! The stateful targets read a sequence of operations: one byte picks the operation (modulo
//! the number of operations), then its arguments follow. Every read succeeds: past the end of
//! the input a reader yields zeros and empty strings, so any byte string is a valid program
//! and a mutation never makes the rest of an input meaningless. The format is hand-written
//! (not `arbitrary`'s) so that seeds can be written as the programs they are.

/// Reads an input; never fails (see the crate docs).
pub struct Reader<'a> {
    data: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Reader { data }
    }

    pub fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }

    pub fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }

    pub fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }

    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | (u64::from(self.u32()) << 32)
    }

    /// A length: one byte, or 255 then a `u16`.
    pub fn len(&mut self) -> usize {
        match self.u8() {
            255 => usize::from(self.u16()),
            n => usize::from(n),
        }
    }

    /// Up to `n` bytes (fewer at the end of the input).
    pub fn take(&mut self, n: usize) -> &'a [u8] {
        let (head, rest) = self.data.split_at(n.min(self.data.len()));
        self.data = rest;
        head
    }

    /// A length-prefixed byte string.
    pub fn bytes(&mut self) -> &'a [u8] {
        let n = self.len();
        self.take(n)
    }

    /// A length-prefixed string (invalid UTF-8 replaced).
    pub fn string(&mut self) -> String {
        String::from_utf8_lossy(self.bytes()).into_owned()
    }

    /// Everything left.
    pub fn rest(&mut self) -> &'a [u8] {
        self.take(self.data.len())
    }
}

/// Writes what [`Reader`] reads.
#[derive(Default)]
pub struct Writer {
    pub buf: Vec<u8>,
}

impl Writer {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn u8(&mut self, v: u8) -> &mut Self {
        self.buf.push(v);
        self
    }

    pub fn bool(&mut self, v: bool) -> &mut Self {
        self.u8(u8::from(v))
    }

    pub fn u16(&mut self, v: u16) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u32(&mut self, v: u32) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn u64(&mut self, v: u64) -> &mut Self {
        self.buf.extend_from_slice(&v.to_le_bytes());
        self
    }

    pub fn len(&mut self, n: usize) -> &mut Self {
        let n = u16::try_from(n).expect("a seed field fits 64 KiB");
        if n < 255 {
            self.u8(n as u8)
        } else {
            self.u8(255).u16(n)
        }
    }

    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.len(b.len());
        self.buf.extend_from_slice(b);
        self
    }

    pub fn string(&mut self, s: &str) -> &mut Self {
        self.bytes(s.as_bytes())
    }

    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.buf.extend_from_slice(b);
        self
    }

    pub fn finish(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.buf)
    }
}

/// Splits `data` into chunks at the given cut points (each taken modulo what is left, so any
/// list of numbers is a valid split): how a stream arrives over the network.
pub fn split_at_points<'a>(data: &'a [u8], points: &[u16]) -> Vec<&'a [u8]> {
    let mut out = Vec::with_capacity(points.len() + 1);
    let mut rest = data;
    for &p in points {
        if rest.is_empty() {
            break;
        }
        let at = usize::from(p) % (rest.len() + 1);
        let (head, tail) = rest.split_at(at);
        out.push(head);
        rest = tail;
    }
    out.push(rest);
    out
}

/// The operations of `fuzz_targets/signaling_core.rs`, by their opcode.
pub mod signaling_ops {
    pub const CREATE: u8 = 0;
    pub const CONNECT: u8 = 1;
    pub const DISCONNECT: u8 = 2;
    pub const EVENT: u8 = 3;
    pub const ADVANCE: u8 = 4;
    pub const MEDIA: u8 = 5;
    pub const DELIVERED: u8 = 6;
    pub const UNDELIVERED: u8 = 7;
    pub const REFRESH: u8 = 8;
    pub const POST_FILE: u8 = 9;
    pub const RUN_TIMERS: u8 = 10;
    pub const COUNT: u8 = 11;

    /// Payload kinds of an `EVENT`.
    pub const PAYLOAD_NONE: u8 = 0;
    pub const PAYLOAD_JSON: u8 = 1;
    pub const PAYLOAD_TEMPLATE: u8 = 2;
}

/// The operations of `fuzz_targets/turn_core.rs`, by their opcode.
pub mod turn_ops {
    pub const RAW: u8 = 0;
    pub const BINDING: u8 = 1;
    pub const ALLOCATE: u8 = 2;
    pub const REFRESH: u8 = 3;
    pub const PERMISSION: u8 = 4;
    pub const CHANNEL_BIND: u8 = 5;
    pub const SEND: u8 = 6;
    pub const CHANNEL_DATA: u8 = 7;
    pub const PEER: u8 = 8;
    pub const BOUND: u8 = 9;
    pub const DISCONNECTED: u8 = 10;
    pub const ADVANCE: u8 = 11;
    pub const MUTATED: u8 = 12;
    pub const REVOKE: u8 = 13;
    pub const COUNT: u8 = 14;
}

/// The operations of `fuzz_targets/media_core.rs`, by their opcode.
pub mod media_ops {
    pub const OPEN: u8 = 0;
    pub const OFFER: u8 = 1;
    pub const CANDIDATE: u8 = 2;
    pub const ANSWER: u8 = 3;
    pub const CLOSE: u8 = 4;
    pub const ADVANCE: u8 = 5;
    pub const DELIVER: u8 = 6;
    pub const RAW: u8 = 7;
    pub const RESTART: u8 = 8;
    pub const WRITE: u8 = 9;
    pub const COUNT: u8 = 10;

    /// How an `OFFER` (or `ANSWER`) is made.
    pub const SDP_CLIENT: u8 = 0;
    pub const SDP_EDITED: u8 = 1;
    pub const SDP_RAW: u8 = 2;
}
