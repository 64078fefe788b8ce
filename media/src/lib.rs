//! Sans-I/O SFU core for tandem.
//!
//! One [`str0m::Rtc`] per guest in a call, all multiplexed on the shell's UDP (and ICE-TCP)
//! sockets. The core never touches a socket or a clock: the shell feeds datagrams with
//! [`MediaCore::handle_receive`], commands from the signaling core with
//! [`MediaCore::handle_command`] and time with [`MediaCore::handle_timeout`] (every input takes
//! `now` last), then drains [`MediaCore::poll_output`] (datagrams, then events) and asks
//! [`MediaCore::poll_timeout`] — the vocabulary of the signaling and TURN cores too.
//!
//! Forwarding runs str0m in RTP mode: an incoming packet's payload (an `Arc<[u8]>`, never
//! copied) is written to each subscriber's send stream with its sequence number and timestamp
//! rewritten so every outgoing stream stays continuous when its source changes. A track
//! registry with subscriptions (not a hard-wired pair) decides who receives what, so rooms of
//! more than two can follow.

mod core;
mod error;
mod peer;
mod quality;
mod stats;

pub use crate::core::{
    MediaConfig, MediaCore, MediaOutput, Received, CEILING_PERCENT, MIN_VIDEO_BPS, REMB_INTERVAL,
};
pub use crate::error::MediaError;
pub use crate::quality::{CallReport, Figure, LegReport, Route, Summary};
pub use crate::stats::{Direction, MediaCounters, Sample, KINDS};

pub use str0m::net::{Protocol, Transmit};

/// Characters of the server's ICE username fragment that name the worker owning the peer.
pub const WORKER_PREFIX_LEN: usize = 2;

/// The server half of a STUN message's USERNAME (`<server ufrag>:<client ufrag>`), if the
/// datagram is a STUN message with one.
pub(crate) fn stun_local_ufrag(datagram: &[u8]) -> Option<&str> {
    // STUN: first two bits zero, magic cookie at bytes 4..8.
    if datagram.len() < 20 || datagram[0] & 0xC0 != 0 || datagram[4..8] != [0x21, 0x12, 0xA4, 0x42]
    {
        return None;
    }
    let msg = str0m::ice::StunMessage::parse(datagram).ok()?;
    let username = msg.username()?;
    let (local, _remote) = username.split_once(':')?;
    Some(local)
}

/// The worker that owns the peer a STUN binding request is for, read from the server half of
/// the USERNAME attribute (`<server ufrag>:<client ufrag>`), whose first two characters are the
/// worker index in hex. `None` for anything that is not such a STUN message.
pub fn stun_worker(datagram: &[u8]) -> Option<usize> {
    let prefix = stun_local_ufrag(datagram)?.get(..WORKER_PREFIX_LEN)?;
    usize::from_str_radix(prefix, 16).ok()
}
