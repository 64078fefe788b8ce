//! The public value types: sockets, ports, commands, counters.

use std::net::SocketAddr;

/// How a client reaches the server. The relay side is always UDP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Transport {
    Udp = 0,
    Tcp = 1,
    Tls = 2,
}

impl Transport {
    /// Every transport, in [`Transport::index`] order.
    pub const ALL: [Transport; 3] = [Transport::Udp, Transport::Tcp, Transport::Tls];

    /// 0, 1, 2: the index into the per-transport counters.
    pub fn index(self) -> usize {
        self as usize
    }

    /// Lower-case name, for metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
        }
    }
}

/// A client's end of the 5-tuple (the server's end is implied by the listener).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientSocket {
    pub addr: SocketAddr,
    pub transport: Transport,
}

/// The UDP port of an allocation's relay socket; it identifies the allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RelayPort(pub u16);

/// Address family of a relay socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    pub(crate) fn of(addr: &SocketAddr) -> Family {
        if addr.is_ipv4() {
            Family::V4
        } else {
            Family::V6
        }
    }
}

/// What the shell must do; drained with [`crate::Server::poll_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send a STUN message (a response or a Data indication) to a client, on the listener /
    /// connection it came from.
    SendToClient { to: ClientSocket, bytes: Vec<u8> },
    /// Bind a UDP relay socket on `port` (any local address of `family`) for `user` (the
    /// user part of the REST username, for quotas the shell keeps across cores), then report
    /// the outcome with [`crate::Server::handle_allocation_bound`].
    CreateAllocation {
        port: RelayPort,
        family: Family,
        user: Box<str>,
    },
    /// Close the relay socket on `port` (if it is bound).
    FreeAllocation { port: RelayPort },
}

/// Why the shell could not carry out a [`Output::CreateAllocation`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindError {
    /// The port could not be bound: another one is tried (up to `bind_attempts`), then 508.
    PortUnavailable,
    /// The user is at its allocation quota across every core (486).
    UserQuota,
}

/// Fast path of [`crate::Server::handle_peer_input`]: the peer is bound to a channel, so the
/// shell sends `[channel, len][datagram]` (plus padding to 4 bytes on TCP/TLS) to `client`.
/// [`crate::channel_data_header`] and [`crate::channel_data_padding`] build those bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerToClient {
    pub client: ClientSocket,
    pub channel: u16,
}

/// Which way relayed data went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ClientToPeer = 0,
    PeerToClient = 1,
}

/// How relayed data was framed on the client side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelayKind {
    ChannelData = 0,
    /// Send (client→peer) or Data (peer→client) indication.
    Indication = 1,
}

/// Packets and bytes (payload only) relayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Traffic {
    pub packets: u64,
    pub bytes: u64,
}

/// Monotonic counters (plus the `allocations_active` gauge), for Prometheus.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub allocations_created: u64,
    /// Ended by their lifetime running out.
    pub allocations_expired: u64,
    /// Ended by a Refresh with LIFETIME 0 or the client's TCP/TLS connection closing.
    pub allocations_deleted: u64,
    pub allocations_active: u64,
    /// Requests answered (all methods, success or error).
    pub requests: u64,
    pub error_responses: u64,
    /// 401 for a request without MESSAGE-INTEGRITY (the normal first step of every client).
    pub auth_missing: u64,
    pub auth_bad_integrity: u64,
    /// 401 for a USERNAME that is not a REST username or whose expiry has passed.
    pub auth_unknown_user: u64,
    pub auth_stale_nonce: u64,
    /// 441: a request on an allocation with another USERNAME than the one that created it.
    pub auth_wrong_credentials: u64,
    /// 401 for credentials whose grant (call) was revoked.
    pub auth_revoked: u64,
    /// Unauthenticated answers to a UDP source over its rate (not sent).
    pub unauth_dropped: u64,
    /// Allocations ended because their grant (call) was revoked.
    pub allocations_revoked: u64,
    /// Peer addresses refused by the peer filter (403 or a dropped Send indication).
    pub peers_denied: u64,
    /// `relayed[direction][transport][kind]`, see [`Counters::relayed`].
    pub relayed: [[[Traffic; 2]; 3]; 2],
    /// 486 Allocation Quota Reached (allocations per user).
    pub quota_user: u64,
    /// 508 Insufficient Capacity: total allocations, permissions or channels per
    /// allocation, or no free relay port.
    pub quota_capacity: u64,
    /// Relay socket binds the shell reported as failed.
    pub bind_failures: u64,
    /// Undecodable, oversized, truncated or otherwise malformed client input.
    pub malformed_dropped: u64,
    /// Data from or to a peer without a permission.
    pub no_permission_dropped: u64,
    /// Data without an allocation or channel to go to (or a STUN response / unknown
    /// indication from a client).
    pub unroutable_dropped: u64,
    /// Data over an allocation's byte rate.
    pub rate_limited_dropped: u64,
    /// Messages to clients dropped because the shell did not drain the command queue.
    pub queue_full_dropped: u64,
}

impl Counters {
    /// Relayed traffic for one direction, client transport and framing.
    pub fn relayed(&self, dir: Direction, transport: Transport, kind: RelayKind) -> Traffic {
        self.relayed[dir as usize][transport.index()][kind as usize]
    }

    pub(crate) fn count_relayed(
        &mut self,
        dir: Direction,
        transport: Transport,
        kind: RelayKind,
        bytes: usize,
    ) {
        let t = &mut self.relayed[dir as usize][transport.index()][kind as usize];
        t.packets += 1;
        t.bytes += bytes as u64;
    }
}
