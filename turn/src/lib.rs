//! Sans-I/O TURN server core for tandem (RFC 8656, RFC 5766), for browsers whose network
//! blocks direct UDP to the SFU or between guests.
//!
//! The core never touches a socket or a clock and has no thread RNG: the shell feeds it bytes
//! and time, and drains what it has to do. Messages are decoded and encoded with the
//! [`stun_rs`] codec (RFC 8489 / 8656 attributes, MESSAGE-INTEGRITY, MESSAGE-INTEGRITY-SHA256,
//! FINGERPRINT); only the 4-byte ChannelData framing is done here.
//!
//! # What it does
//!
//! - **Binding** requests are answered (XOR-MAPPED-ADDRESS) without authentication, on any
//!   transport. Every unauthenticated answer over UDP (Binding responses, 401/438 challenges,
//!   errors before authentication) is rate limited per source (IPv4 address or IPv6 /64; a
//!   bounded table that fails closed), so a spoofed source cannot turn the server into a
//!   reflector.
//! - **Allocate**, **Refresh** (LIFETIME 0 deletes), **CreatePermission**, **ChannelBind**,
//!   **Send** and **Data** indications, **ChannelData** both ways. Only UDP relaying
//!   (REQUESTED-TRANSPORT 17, else 442). Lifetimes: allocations 600 s by default, at most
//!   3600 s (a client's LIFETIME is clamped into that range), permissions 300 s, channels
//!   600 s (all in [`Config`]).
//! - **Long-term credentials in the TURN REST style** (coturn's `use-auth-secret`): the
//!   username is `<expiry unix seconds>:<session id>[:<grant>]`, the password
//!   `base64(HMAC-SHA1(secret, username))` (minted by [`rest_credentials`]), the key
//!   `MD5(username:realm:password)`. MESSAGE-INTEGRITY-SHA256 is verified when the client
//!   sends it (then the response carries it too). Nonces are stateless: expiry plus a MAC
//!   over (expiry, client 5-tuple) keyed from the seed, valid for `nonce_lifetime`; a
//!   stale one gets 438 with a fresh NONCE. Errors: 400, 401 (missing, bad integrity,
//!   unknown or expired username; with REALM and NONCE), 403 (peer refused), 420 (with
//!   UNKNOWN-ATTRIBUTES), 437, 438, 440, 441 (request on an allocation with another
//!   username), 442, 443, 486 (allocations per user), 508 (capacity, permissions, channels,
//!   no relay port). Authenticated responses carry MESSAGE-INTEGRITY; every response carries
//!   SOFTWARE and FINGERPRINT.
//! - **Grants**: credentials may name what they were handed out for (a call);
//!   [`Server::handle_grant_revoked`] ends them at a given moment: from then on they get 401
//!   and every allocation made with them ends (Refresh cannot extend it past that).
//! - **Peer filter** ([`PeerFilter`]): strict by default (`open_relay` off): only
//!   `always_allow` (tandem's own media addresses, exact IP and port), `allow_peers` and, for
//!   tests, loopback. With `open_relay`, loopback, private, CGNAT, link-local, multicast,
//!   reserved, benchmarking and documentation ranges are refused, including when hidden in
//!   IPv4-mapped, IPv4-compatible, NAT64, 6to4 or Teredo IPv6 forms; `allow_peers` wins,
//!   `deny_peers` adds. In both modes `host_addresses` (every address of the host) are
//!   refused but for the exact `always_allow` ports.
//! - **Quotas**: allocations per user and in total, permissions and channels per
//!   allocation, an optional byte rate per allocation (token bucket on the injected time).
//! - **Counters** ([`Counters`]) for Prometheus. Malformed input (over 64 KiB, truncated,
//!   bad lengths, wrong magic cookie, bad FINGERPRINT) is dropped and counted, never a panic.
//!
//! # The API
//!
//! ```text
//! Server::new(cfg, seed, now, unix_now_ms)
//! handle_client_input(bytes, from: ClientSocket, now) -> Option<(RelayPort, peer, Range)>
//! handle_peer_input(bytes, port: RelayPort, peer, now) -> Option<PeerToClient>
//! handle_allocation_bound(port, Ok(()) | Err(BindError), now)
//! handle_grant_revoked(grant, at, now)             // a call ended: its credentials stop at `at`
//! handle_client_disconnected(client, now)          // TCP/TLS connection closed
//! handle_timeout(now); poll_timeout() -> Option<Instant>
//! poll_output() -> Option<Output>                  // SendToClient, CreateAllocation, FreeAllocation
//! counters(), allocations(), pending_allocations(), allocation_of(client)
//! frame_len(stream_buf) -> Result<Option<usize>, TurnError>
//! channel_data_header(channel, len), channel_data_padding(len), rest_credentials(..)
//! ```
//!
//! Wall time (for REST username expiry and nonces) is derived as
//! `unix_now_ms + (now - the Instant given to new)` (milliseconds, as in the signaling core).
//!
//! # Two-phase Allocate
//!
//! An authenticated, admissible Allocate reserves a random free port of `port_range` (picked
//! with the seeded RNG; even if EVEN-PORT asks) and emits [`Output::CreateAllocation`] with
//! the user. The shell checks the user's quota across cores, binds a UDP socket on that port
//! and reports with [`Server::handle_allocation_bound`] (`Err(BindError::UserQuota)` is 486):
//! on `Ok` the allocation exists and the success
//! response (XOR-RELAYED-ADDRESS with the configured public relay address, LIFETIME,
//! XOR-MAPPED-ADDRESS) is queued; on `Err` another port is tried, up to `bind_attempts`
//! ports, then 508. A bind not reported within `bind_timeout` fails with 508 too (and a
//! [`Output::FreeAllocation`] is emitted in case the socket shows up late). Retransmissions
//! of the Allocate are ignored while the bind is under way and answered again afterwards.
//!
//! # Fast paths
//!
//! - Client → peer: ChannelData (and Send indications) return `(port, peer, range)`: the
//!   shell sends `bytes[range]` from the relay socket of `port` to `peer`; nothing is copied.
//! - Peer → client: with a channel bound, [`Server::handle_peer_input`] returns
//!   [`PeerToClient`] and the shell writes [`channel_data_header`] in front of the datagram it
//!   read (keep 4 bytes of headroom in the receive buffer) plus
//!   [`channel_data_padding`] zero bytes on TCP/TLS. Without a channel a Data indication is
//!   queued as a [`Output::SendToClient`].
//!
//! These paths are O(1) hash lookups (client 5-tuple → allocation, relay port → allocation,
//! channel number / peer within it) with no allocation and no logging per packet. Send and
//! Data indications are the slow path (the codec decodes/encodes a whole message) that
//! clients leave once a channel is bound.
//!
//! # What the shell must do
//!
//! - Feed every client datagram / framed stream message to `handle_client_input` (split
//!   TCP/TLS streams with [`frame_len`], closing the connection on `Err`), and every datagram
//!   of a relay socket to `handle_peer_input` with that socket's port.
//! - After each call, drain `poll_output` and act on it; call `handle_timeout` at
//!   `poll_timeout`.
//! - Execute CreateAllocation / FreeAllocation (bind / close relay sockets) and report binds.
//! - Report closed TCP/TLS connections with `handle_client_disconnected`.
//! - Hand out credentials from [`rest_credentials`] with the same secret.
//!
//! # Not supported
//!
//! TCP relaying (RFC 6062), DONT-FRAGMENT (answered 420 in an Allocate, ignored in Send),
//! EVEN-PORT's reservation bit and RESERVATION-TOKEN (508, as RFC 8656 §7.2 allows a server
//! that keeps no reservations; EVEN-PORT without the R bit gets an even port), dual allocations
//! (ADDITIONAL-ADDRESS-FAMILY is ignored), USERHASH and PASSWORD-ALGORITHMS negotiation
//! (MD5 keys only), ICMP attribute forwarding, the 5-minute channel-number cool-down after a
//! binding expires, and the RFC 8656 narrowing of channel numbers to 0x4000–0x4FFF (the RFC
//! 5766 range 0x4000–0x7FFF is accepted).

mod auth;
mod cidr;
mod config;
mod error;
mod filter;
mod framing;
mod server;
mod types;

pub use crate::auth::{rest_credentials, MAX_USERNAME_LEN};
pub use crate::cidr::Cidr;
pub use crate::config::Config;
pub use crate::error::TurnError;
pub use crate::filter::{embedded_ipv4, PeerFilter};
pub use crate::framing::{
    channel_data_header, channel_data_padding, frame_len, CHANNEL_DATA_HEADER_LEN, CHANNEL_MAX,
    CHANNEL_MIN, MAX_MESSAGE_LEN,
};
pub use crate::server::Server;
pub use crate::types::{
    BindError, ClientSocket, Counters, Direction, Family, Output, PeerToClient, RelayKind,
    RelayPort, Traffic, Transport,
};

/// The STUN codec, re-exported so clients in tests (and the shell) use the same one.
pub use stun_rs;
