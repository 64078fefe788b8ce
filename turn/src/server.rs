//! The TURN server state machine. See the crate docs.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::time::{Duration, Instant};

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use stun_rs::attributes::stun::{
    ErrorCode, Fingerprint, MessageIntegrity, MessageIntegritySha256, Nonce, Realm, Software,
    UnknownAttributes, UserName, XorMappedAddress,
};
use stun_rs::attributes::turn::{
    ChannelNumber, Data, EvenPort, LifeTime, RequestedAddressFamily, RequestedTrasport,
    ReservationToken, XorPeerAddress, XorRelayedAddress,
};
use stun_rs::methods::{ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMMISSION, DATA, REFRESH, SEND};
use stun_rs::{
    get_input_text, AddressFamily, Algorithm, AlgorithmId, HMACKey, MessageClass, MessageDecoder,
    MessageDecoderBuilder, MessageEncoder, MessageEncoderBuilder, MessageMethod, MessageType,
    StunAttribute, StunMessage, StunMessageBuilder, TransactionId,
};

use crate::auth::{parse_username, rest_password, NonceCheck, Nonces, RestUser};
use crate::config::Config;
use crate::error::TurnError;
use crate::filter::PeerFilter;
use crate::framing::{
    parse_channel_data, CHANNEL_MAX, CHANNEL_MIN, MAGIC_COOKIE, MAX_MESSAGE_LEN, STUN_HEADER_LEN,
};
use crate::types::{
    BindError, ClientSocket, Counters, Direction, Family, Output, PeerToClient, RelayKind,
    RelayPort, Transport,
};

/// Type of the DATA attribute (its value is located, not decoded, on the Send fast path).
const DATA_ATTR: u16 = 0x0013;
/// IANA protocol number of UDP, the only REQUESTED-TRANSPORT supported.
const PROTO_UDP: u8 = 17;
/// Outputs queued at most before SendToClient ones are dropped (the shell drains after each
/// input, so this is only reached by a shell bug).
const MAX_QUEUED_COMMANDS: usize = 4096;
/// Random picks before the port search falls back to a scan.
const PORT_PICKS: usize = 32;
/// Unknown attribute types listed in a 420 at most.
const MAX_UNKNOWN_LISTED: usize = 16;
/// Encode buffer for responses (they carry a handful of small attributes).
const RESPONSE_BUF: usize = 1024;
/// Bytes of a Data indication besides the payload: header, XOR-PEER-ADDRESS (IPv6),
/// DATA header and padding, FINGERPRINT.
const DATA_INDICATION_OVERHEAD: usize = 20 + 24 + 4 + 3 + 8;

/// Comprehension-required attribute types this server understands (anything else in a
/// request is answered with 420). DONT-FRAGMENT (0x001A) and USERHASH (0x001E) are
/// deliberately absent: neither is supported. PRIORITY and USE-CANDIDATE (ICE) are accepted
/// and ignored so a stray connectivity check still gets its Binding response.
const KNOWN_REQUIRED: &[u16] = &[
    0x0001, // MAPPED-ADDRESS
    0x0006, // USERNAME
    0x0008, // MESSAGE-INTEGRITY
    0x0009, // ERROR-CODE
    0x000A, // UNKNOWN-ATTRIBUTES
    0x000C, // CHANNEL-NUMBER
    0x000D, // LIFETIME
    0x0012, // XOR-PEER-ADDRESS
    0x0013, // DATA
    0x0014, // REALM
    0x0015, // NONCE
    0x0016, // XOR-RELAYED-ADDRESS
    0x0017, // REQUESTED-ADDRESS-FAMILY
    0x0018, // EVEN-PORT
    0x0019, // REQUESTED-TRANSPORT
    0x001C, // MESSAGE-INTEGRITY-SHA256
    0x001D, // PASSWORD-ALGORITHM
    0x0020, // XOR-MAPPED-ADDRESS
    0x0022, // RESERVATION-TOKEN
    0x0024, // PRIORITY
    0x0025, // USE-CANDIDATE
];

/// The long-term key and integrity algorithm a request was authenticated with; responses
/// are signed the same way.
#[derive(Clone)]
struct Auth {
    username: Box<str>,
    /// Session id part of the REST username (what per-user quotas count).
    user: Box<str>,
    /// What the credentials were handed out for (a call), if the username names it.
    grant: Option<Box<str>>,
    key: HMACKey,
    sha256: bool,
}

#[derive(Debug, Clone, Copy)]
struct Channel {
    peer: SocketAddr,
    expires: Instant,
}

#[derive(Debug, Clone, Copy)]
struct TokenBucket {
    tokens: u64,
    last: Instant,
}

struct Allocation {
    client: ClientSocket,
    family: Family,
    username: Box<str>,
    user: Box<str>,
    grant: Option<Box<str>>,
    /// The Allocate that created it, to answer its retransmissions.
    allocate_tid: [u8; 12],
    expires: Instant,
    permissions: HashMap<IpAddr, Instant>,
    channels: HashMap<u16, Channel>,
    channel_by_peer: HashMap<SocketAddr, u16>,
    bucket: Option<TokenBucket>,
    /// The deadline this allocation has in the timer heap (older heap entries are stale).
    scheduled: Instant,
    /// Its lifetime was cut by a revoked grant.
    revoked: bool,
}

impl Allocation {
    /// The earliest moment something in it expires.
    fn next_deadline(&self) -> Instant {
        let perms = self.permissions.values().copied();
        let chans = self.channels.values().map(|c| c.expires);
        perms.chain(chans).fold(self.expires, Instant::min)
    }

    fn permitted(&self, ip: IpAddr, now: Instant) -> bool {
        self.permissions.get(&ip).is_some_and(|&exp| exp > now)
    }

    /// Takes `bytes` from the allocation's byte budget; false if over it.
    fn take_tokens(&mut self, rate: Option<u64>, bytes: usize, now: Instant) -> bool {
        let (Some(rate), Some(bucket)) = (rate, self.bucket.as_mut()) else {
            return true;
        };
        let burst = rate.max(MAX_MESSAGE_LEN as u64);
        let elapsed = now.saturating_duration_since(bucket.last);
        if !elapsed.is_zero() {
            let refill = elapsed.as_nanos().saturating_mul(u128::from(rate)) / 1_000_000_000;
            let refill = u64::try_from(refill).unwrap_or(u64::MAX);
            bucket.tokens = bucket.tokens.saturating_add(refill).min(burst);
            bucket.last = now;
        }
        match bucket.tokens.checked_sub(bytes as u64) {
            Some(left) => {
                bucket.tokens = left;
                true
            }
            None => false,
        }
    }
}

/// An Allocate waiting for the shell to bind its relay socket.
struct Pending {
    client: ClientSocket,
    family: Family,
    auth: Auth,
    tid: [u8; 12],
    lifetime: Duration,
    even: bool,
    /// Ports that failed to bind, so the next pick avoids them.
    tried: Vec<u16>,
    deadline: Instant,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Allocation(RelayPort),
    Pending(RelayPort),
}

/// Why a request is answered with an error (the reason phrase goes with the code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    BadRequest,
    Unauthorized,
    Forbidden,
    AllocationMismatch,
    StaleNonce,
    FamilyNotSupported,
    WrongCredentials,
    UnsupportedTransport,
    PeerFamilyMismatch,
    QuotaReached,
    InsufficientCapacity,
}

impl Reject {
    fn code(self) -> (u16, &'static str) {
        match self {
            Reject::BadRequest => (400, "Bad Request"),
            Reject::Unauthorized => (401, "Unauthorized"),
            Reject::Forbidden => (403, "Forbidden"),
            Reject::AllocationMismatch => (437, "Allocation Mismatch"),
            Reject::StaleNonce => (438, "Stale Nonce"),
            Reject::FamilyNotSupported => (440, "Address Family not Supported"),
            Reject::WrongCredentials => (441, "Wrong Credentials"),
            Reject::UnsupportedTransport => (442, "Unsupported Transport Protocol"),
            Reject::PeerFamilyMismatch => (443, "Peer Address Family Mismatch"),
            Reject::QuotaReached => (486, "Allocation Quota Reached"),
            Reject::InsufficientCapacity => (508, "Insufficient Capacity"),
        }
    }
}

/// The request being answered.
struct Req<'a> {
    from: ClientSocket,
    method: MessageMethod,
    tid: &'a TransactionId,
}

/// The TURN server core. See the crate docs.
pub struct Server {
    cfg: Config,
    filter: PeerFilter,
    rng: ChaCha8Rng,
    nonces: Nonces,
    decoder: MessageDecoder,
    encoder: MessageEncoder,
    start: Instant,
    /// Milliseconds since the Unix epoch at `start`.
    unix_start_ms: u64,
    allocations: HashMap<RelayPort, Allocation>,
    pending: HashMap<RelayPort, Pending>,
    /// Allocation or pending Allocate of each client 5-tuple.
    by_client: HashMap<ClientSocket, RelayPort>,
    /// Allocations (and pending ones) per user.
    per_user: HashMap<Box<str>, usize>,
    /// Revoked grants: from when their credentials stop working.
    revoked: HashMap<Box<str>, Instant>,
    /// The same grants with the moment they are forgotten, oldest first.
    revoked_order: VecDeque<(Instant, Box<str>)>,
    /// Unauthenticated answers per UDP source: the GCRA's theoretical arrival time.
    unauth: HashMap<SourceKey, Instant>,
    timers: BinaryHeap<Reverse<(Instant, Timer)>>,
    commands: VecDeque<Output>,
    counters: Counters,
    /// The latest `now` of any input (responses are sent within an input's handling).
    now: Instant,
}

/// Who the unauthenticated-answer limit counts: an IPv4 address or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum SourceKey {
    V4(u32),
    V6(u64),
}

impl SourceKey {
    fn of(ip: IpAddr) -> SourceKey {
        match ip.to_canonical() {
            IpAddr::V4(v4) => SourceKey::V4(v4.into()),
            IpAddr::V6(v6) => SourceKey::V6((u128::from(v6) >> 64) as u64),
        }
    }
}

impl Server {
    /// A server with no allocations. `now` and `unix_now_ms` (milliseconds since the Unix
    /// epoch, the wall-clock unit of every tandem core) are the same moment on the monotonic
    /// and the wall clock: wall time later is `unix_now_ms + (now' - now)`.
    /// `rng_seed` drives port picks, transaction ids and the nonce key.
    pub fn new(
        cfg: Config,
        rng_seed: [u8; 32],
        now: Instant,
        unix_now_ms: u64,
    ) -> Result<Server, TurnError> {
        cfg.validate()?;
        let mut rng = ChaCha8Rng::from_seed(rng_seed);
        let mut nonce_key = [0u8; 32];
        rng.fill_bytes(&mut nonce_key);
        let filter = PeerFilter::new(
            cfg.allow_peers.clone(),
            cfg.deny_peers.clone(),
            cfg.allow_loopback_peers,
            cfg.always_allow.clone(),
        )
        .strict(!cfg.open_relay)
        .host_addresses(cfg.host_addresses.clone());
        Ok(Server {
            cfg,
            filter,
            rng,
            nonces: Nonces::new(nonce_key),
            decoder: MessageDecoderBuilder::default().build(),
            encoder: MessageEncoderBuilder::default().build(),
            start: now,
            unix_start_ms: unix_now_ms,
            allocations: HashMap::new(),
            pending: HashMap::new(),
            by_client: HashMap::new(),
            per_user: HashMap::new(),
            revoked: HashMap::new(),
            revoked_order: VecDeque::new(),
            unauth: HashMap::new(),
            timers: BinaryHeap::new(),
            commands: VecDeque::new(),
            counters: Counters::default(),
            now,
        })
    }

    /// Counters so far (a copy; `allocations_active` is current).
    pub fn counters(&self) -> Counters {
        let mut c = self.counters.clone();
        c.allocations_active = self.allocations.len() as u64;
        c
    }

    /// How many entries each of the core's tables holds, for leak watching (a soak run checks
    /// that every one of them levels off).
    pub fn sizes(&self) -> [(&'static str, usize); 7] {
        [
            ("allocations", self.allocations.len()),
            ("pending", self.pending.len()),
            ("clients", self.by_client.len()),
            ("users", self.per_user.len()),
            ("revoked_grants", self.revoked.len()),
            ("unauthenticated_sources", self.unauth.len()),
            ("timers", self.timers.len()),
        ]
    }

    /// Allocations with a bound relay socket.
    pub fn allocations(&self) -> usize {
        self.allocations.len()
    }

    /// Allocates waiting for their relay socket.
    pub fn pending_allocations(&self) -> usize {
        self.pending.len()
    }

    /// The relay port of a client's allocation, if it has one.
    pub fn allocation_of(&self, client: &ClientSocket) -> Option<RelayPort> {
        self.by_client
            .get(client)
            .copied()
            .filter(|p| self.allocations.contains_key(p))
    }

    /// The next thing the shell must do.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.commands.pop_front()
    }

    /// When [`Server::handle_timeout`] should be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.peek().map(|Reverse((at, _))| *at)
    }

    fn wall_secs(&self, now: Instant) -> u64 {
        let elapsed = now.saturating_duration_since(self.start).as_millis();
        self.unix_start_ms
            .saturating_add(u64::try_from(elapsed).unwrap_or(u64::MAX))
            / 1000
    }

    // ---------------------------------------------------------------- client input

    /// One datagram (UDP) or one framed message (TCP/TLS, split with [`crate::frame_len`])
    /// from a client. Returns the payload to relay, when it is ChannelData or a Send
    /// indication that may go out: the shell sends `bytes[range]` from relay port `port` to
    /// `peer`. Everything else the message causes is in [`Server::poll_command`].
    pub fn handle_client_input(
        &mut self,
        bytes: &[u8],
        from: ClientSocket,
        now: Instant,
    ) -> Option<(RelayPort, SocketAddr, Range<usize>)> {
        self.now = self.now.max(now);
        if bytes.len() > MAX_MESSAGE_LEN + 4 {
            self.counters.malformed_dropped += 1;
            return None;
        }
        match bytes.first().map(|b| b >> 6) {
            Some(0b01) => self.client_channel_data(bytes, from, now),
            Some(0b00) => self.client_stun(bytes, from, now),
            _ => {
                self.counters.malformed_dropped += 1;
                None
            }
        }
    }

    /// The client's TCP/TLS connection closed: its allocation (if any) ends (RFC 8656 §3.1).
    pub fn handle_client_disconnected(&mut self, client: ClientSocket, _now: Instant) {
        let Some(port) = self.by_client.get(&client).copied() else {
            return;
        };
        if self.allocations.contains_key(&port) {
            self.counters.allocations_deleted += 1;
            self.free_allocation(port);
        } else if let Some(p) = self.pending.remove(&port) {
            self.by_client.remove(&client);
            self.release_user(&p.auth.user);
            self.push_command(Output::FreeAllocation { port });
        }
    }

    fn client_channel_data(
        &mut self,
        bytes: &[u8],
        from: ClientSocket,
        now: Instant,
    ) -> Option<(RelayPort, SocketAddr, Range<usize>)> {
        let Some((number, range)) = parse_channel_data(bytes) else {
            self.counters.malformed_dropped += 1;
            return None;
        };
        let rate = self.cfg.bytes_per_sec_per_allocation;
        let Some((port, alloc)) = self
            .by_client
            .get(&from)
            .and_then(|port| Some((*port, self.allocations.get_mut(port)?)))
        else {
            self.counters.unroutable_dropped += 1;
            return None;
        };
        let Some(peer) = alloc
            .channels
            .get(&number)
            .filter(|c| c.expires > now)
            .map(|c| c.peer)
        else {
            self.counters.unroutable_dropped += 1;
            return None;
        };
        admit_outbound(
            alloc,
            &mut self.counters,
            rate,
            peer,
            from,
            RelayKind::ChannelData,
            range.len(),
            now,
        )
        .then_some((port, peer, range))
    }

    fn client_stun(
        &mut self,
        bytes: &[u8],
        from: ClientSocket,
        now: Instant,
    ) -> Option<(RelayPort, SocketAddr, Range<usize>)> {
        let Some(header) = bytes.get(..STUN_HEADER_LEN) else {
            self.counters.malformed_dropped += 1;
            return None;
        };
        let declared = usize::from(u16::from_be_bytes([header[2], header[3]]));
        if header[4..8] != MAGIC_COOKIE
            || declared % 4 != 0
            || STUN_HEADER_LEN + declared != bytes.len()
        {
            self.counters.malformed_dropped += 1;
            return None;
        }
        let msg_type = MessageType::from(u16::from_be_bytes([header[0], header[1]]));
        let msg = match self.decoder.decode(bytes) {
            Ok((msg, _)) => msg,
            Err(_) => {
                self.counters.malformed_dropped += 1;
                if msg_type.class() == MessageClass::Request {
                    let mut tid = [0u8; 12];
                    tid.copy_from_slice(&header[8..20]);
                    let tid = TransactionId::from(tid);
                    let req = Req {
                        from,
                        method: msg_type.method(),
                        tid: &tid,
                    };
                    self.reject(&req, Reject::BadRequest, None, Vec::new());
                }
                return None;
            }
        };
        if let Some(fp) = msg
            .get::<Fingerprint>()
            .and_then(|a| a.as_fingerprint().ok())
        {
            let valid = get_input_text::<Fingerprint>(bytes).is_some_and(|i| fp.validate(&i));
            if !valid {
                self.counters.malformed_dropped += 1;
                return None;
            }
        }
        match msg.class() {
            MessageClass::Request => {
                self.handle_request(&msg, bytes, from, now);
                None
            }
            MessageClass::Indication if msg.method() == SEND => {
                self.send_indication(&msg, bytes, from, now)
            }
            _ => {
                self.counters.unroutable_dropped += 1;
                None
            }
        }
    }

    fn send_indication(
        &mut self,
        msg: &StunMessage,
        bytes: &[u8],
        from: ClientSocket,
        now: Instant,
    ) -> Option<(RelayPort, SocketAddr, Range<usize>)> {
        let peer = msg
            .get::<XorPeerAddress>()
            .and_then(|a| a.as_xor_peer_address().ok())
            .map(|a| *a.socket_address());
        let range = find_attribute(bytes, DATA_ATTR);
        let (Some(peer), Some(range)) = (peer, range) else {
            self.counters.malformed_dropped += 1;
            return None;
        };
        if has_unknown_required(msg) {
            self.counters.malformed_dropped += 1;
            return None;
        }
        let rate = self.cfg.bytes_per_sec_per_allocation;
        let Some((port, alloc)) = self
            .by_client
            .get(&from)
            .and_then(|port| Some((*port, self.allocations.get_mut(port)?)))
        else {
            self.counters.unroutable_dropped += 1;
            return None;
        };
        if Family::of(&peer) != alloc.family || !self.filter.is_allowed_addr(peer) {
            self.counters.peers_denied += 1;
            return None;
        }
        admit_outbound(
            alloc,
            &mut self.counters,
            rate,
            peer,
            from,
            RelayKind::Indication,
            range.len(),
            now,
        )
        .then_some((port, peer, range))
    }

    // ---------------------------------------------------------------- peer input

    /// A datagram that reached relay port `port` from `peer`. With a channel bound to the
    /// peer, returns where to send it as ChannelData (the fast path: the shell prepends
    /// [`crate::channel_data_header`]); otherwise, with a permission, a Data indication is
    /// queued as a command; without one, it is dropped and counted.
    pub fn handle_peer_input(
        &mut self,
        bytes: &[u8],
        port: RelayPort,
        peer: SocketAddr,
        now: Instant,
    ) -> Option<PeerToClient> {
        // Must fit the 16-bit length of a ChannelData header.
        if bytes.len() > usize::from(u16::MAX) {
            self.counters.malformed_dropped += 1;
            return None;
        }
        let rate = self.cfg.bytes_per_sec_per_allocation;
        let Some(alloc) = self.allocations.get_mut(&port) else {
            self.counters.unroutable_dropped += 1;
            return None;
        };
        // A dual-stack IPv6 socket reports IPv4 peers as ::ffff:a.b.c.d.
        let peer = match (alloc.family, peer) {
            (Family::V4, SocketAddr::V6(v6)) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => SocketAddr::new(IpAddr::V4(v4), v6.port()),
                None => peer,
            },
            _ => peer,
        };
        if !alloc.permitted(peer.ip(), now) {
            self.counters.no_permission_dropped += 1;
            return None;
        }
        if !alloc.take_tokens(rate, bytes.len(), now) {
            self.counters.rate_limited_dropped += 1;
            return None;
        }
        let client = alloc.client;
        let channel = alloc
            .channel_by_peer
            .get(&peer)
            .copied()
            .filter(|n| alloc.channels.get(n).is_some_and(|c| c.expires > now));
        if let Some(channel) = channel {
            self.counters.count_relayed(
                Direction::PeerToClient,
                client.transport,
                RelayKind::ChannelData,
                bytes.len(),
            );
            return Some(PeerToClient { client, channel });
        }
        // Permissions are per IP; a host that is reachable only on one port (tandem's own
        // media address) must not reach the client from its other ports. Off the fast path:
        // a bound channel already names the exact, checked peer address.
        if !self.filter.is_allowed_addr(peer) {
            self.counters.peers_denied += 1;
            return None;
        }
        // The codec's encoder overflows (panics in debug builds) past a 65 535-byte message,
        // so a datagram too long for a Data indication is dropped here.
        if bytes.len() + DATA_INDICATION_OVERHEAD > usize::from(u16::MAX) {
            self.counters.malformed_dropped += 1;
            return None;
        }
        let mut tid = [0u8; 12];
        self.rng.fill_bytes(&mut tid);
        let msg = StunMessageBuilder::new(DATA, MessageClass::Indication)
            .with_transaction_id(TransactionId::from(tid))
            .with_attribute(XorPeerAddress::from(peer))
            .with_attribute(Data::from(bytes))
            .with_attribute(Fingerprint::default())
            .build();
        match self.encode(&msg, bytes.len() + DATA_INDICATION_OVERHEAD) {
            Some(out) => {
                self.counters.count_relayed(
                    Direction::PeerToClient,
                    client.transport,
                    RelayKind::Indication,
                    bytes.len(),
                );
                self.push_command(Output::SendToClient {
                    to: client,
                    bytes: out,
                });
            }
            None => self.counters.malformed_dropped += 1,
        }
        None
    }

    // ---------------------------------------------------------------- requests

    fn handle_request(
        &mut self,
        msg: &StunMessage,
        bytes: &[u8],
        from: ClientSocket,
        now: Instant,
    ) {
        let req = Req {
            from,
            method: msg.method(),
            tid: msg.transaction_id(),
        };
        let unknown = unknown_required(msg);
        if !unknown.is_empty() {
            let mut list = UnknownAttributes::default();
            for t in unknown {
                list.add(t);
            }
            let (code, reason) = (420, "Unknown Attribute");
            self.send_error(&req, code, reason, None, vec![list.into()]);
            return;
        }
        match msg.method() {
            BINDING => {
                let attrs = vec![XorMappedAddress::from(from.addr).into()];
                self.send_success(&req, None, attrs);
            }
            ALLOCATE => self.allocate(&req, msg, bytes, now),
            REFRESH => self.refresh(&req, msg, bytes, now),
            CREATE_PERMMISSION => self.create_permission(&req, msg, bytes, now),
            CHANNEL_BIND => self.channel_bind(&req, msg, bytes, now),
            _ => self.reject(&req, Reject::BadRequest, None, Vec::new()),
        }
    }

    /// Long-term credential check (RFC 8489 §9.2.4). On failure the error response has been
    /// sent.
    fn authenticate(
        &mut self,
        req: &Req,
        msg: &StunMessage,
        bytes: &[u8],
        now: Instant,
    ) -> Option<Auth> {
        let mi = msg
            .get::<MessageIntegrity>()
            .and_then(|a| a.as_message_integrity().ok());
        let mi256 = msg
            .get::<MessageIntegritySha256>()
            .and_then(|a| a.as_message_integrity_sha256().ok());
        if mi.is_none() && mi256.is_none() {
            self.counters.auth_missing += 1;
            self.challenge(req, Reject::Unauthorized, now);
            return None;
        }
        let username = msg.get::<UserName>().and_then(|a| a.as_user_name().ok());
        let realm = msg.get::<Realm>().and_then(|a| a.as_realm().ok());
        let nonce = msg.get::<Nonce>().and_then(|a| a.as_nonce().ok());
        let (Some(username), Some(_realm), Some(nonce)) = (username, realm, nonce) else {
            self.reject(req, Reject::BadRequest, None, Vec::new());
            return None;
        };
        let wall = self.wall_secs(now);
        if self.nonces.check(nonce.as_str(), &req.from, wall) != NonceCheck::Valid {
            self.counters.auth_stale_nonce += 1;
            self.challenge(req, Reject::StaleNonce, now);
            return None;
        }
        let username = username.as_str();
        // Not a REST username, or its expiry has passed.
        let Some(RestUser { user, grant, .. }) =
            parse_username(username).filter(|u| u.expiry >= wall)
        else {
            self.counters.auth_unknown_user += 1;
            self.challenge(req, Reject::Unauthorized, now);
            return None;
        };
        // Handed out for a call that has ended (and its grace has passed).
        if self.grant_deadline(grant).is_some_and(|at| at <= now) {
            self.counters.auth_revoked += 1;
            self.challenge(req, Reject::Unauthorized, now);
            return None;
        }
        let password = rest_password(&self.cfg.auth_secret, username);
        let key = HMACKey::new_long_term(
            username,
            &self.cfg.realm,
            password,
            Algorithm::from(AlgorithmId::MD5),
        );
        // RFC 8489 §14.6: with both, only MESSAGE-INTEGRITY-SHA256 counts.
        let valid = match (&key, mi256, mi) {
            (Ok(key), Some(mi256), _) => get_input_text::<MessageIntegritySha256>(bytes)
                .is_some_and(|input| mi256.validate(&input, key)),
            (Ok(key), None, Some(mi)) => get_input_text::<MessageIntegrity>(bytes)
                .is_some_and(|input| mi.validate(&input, key)),
            _ => false,
        };
        match key {
            Ok(key) if valid => Some(Auth {
                username: username.into(),
                user: user.into(),
                grant: grant.map(Into::into),
                key,
                sha256: mi256.is_some(),
            }),
            _ => {
                self.counters.auth_bad_integrity += 1;
                self.challenge(req, Reject::Unauthorized, now);
                None
            }
        }
    }

    /// The allocation of the request's 5-tuple, checked against the request's credentials
    /// (437 / 441 sent otherwise).
    fn own_allocation(&mut self, req: &Req, auth: &Auth) -> Option<RelayPort> {
        let port = self.by_client.get(&req.from).copied();
        let Some((port, alloc)) = port.and_then(|p| Some((p, self.allocations.get(&p)?))) else {
            self.reject(req, Reject::AllocationMismatch, Some(auth), Vec::new());
            return None;
        };
        if *alloc.username != *auth.username {
            self.counters.auth_wrong_credentials += 1;
            self.reject(req, Reject::WrongCredentials, Some(auth), Vec::new());
            return None;
        }
        Some(port)
    }

    fn allocate(&mut self, req: &Req, msg: &StunMessage, bytes: &[u8], now: Instant) {
        let Some(auth) = self.authenticate(req, msg, bytes, now) else {
            return;
        };
        if let Some(port) = self.by_client.get(&req.from).copied() {
            let tid = *req.tid.as_bytes();
            if let Some(alloc) = self.allocations.get(&port) {
                if alloc.allocate_tid == tid && *alloc.username == *auth.username {
                    // A retransmission whose response got lost: answer it again.
                    let left = alloc.expires.saturating_duration_since(now);
                    let family = alloc.family;
                    let attrs = self.allocate_success_attrs(req, port, family, left);
                    self.send_success(req, Some(&auth), attrs);
                    return;
                }
            } else if self.pending.get(&port).is_some_and(|p| p.tid == tid) {
                // A retransmission while the bind is under way: its answer is coming.
                return;
            }
            self.reject(req, Reject::AllocationMismatch, Some(&auth), Vec::new());
            return;
        }
        let transport = msg
            .get::<RequestedTrasport>()
            .and_then(|a| a.as_requested_trasport().ok())
            .map(|t| t.protocol().as_u8());
        match transport {
            None => return self.reject(req, Reject::BadRequest, Some(&auth), Vec::new()),
            Some(PROTO_UDP) => {}
            Some(_) => {
                return self.reject(req, Reject::UnsupportedTransport, Some(&auth), Vec::new())
            }
        }
        let even_port = msg.get::<EvenPort>().and_then(|a| a.as_even_port().ok());
        let even = even_port.is_some();
        if even_port.is_some_and(|e| e.reserve()) {
            // RFC 8656 §7.2: a server that cannot reserve the next port too answers 508.
            // Reservations are not kept here; EVEN-PORT without the R bit is served.
            return self.reject(req, Reject::InsufficientCapacity, Some(&auth), Vec::new());
        }
        if msg.get::<ReservationToken>().is_some() {
            // Never issued here (EVEN-PORT's R bit is not honoured), so never found.
            let reject = if even {
                Reject::BadRequest
            } else {
                Reject::InsufficientCapacity
            };
            return self.reject(req, reject, Some(&auth), Vec::new());
        }
        let family = match msg
            .get::<RequestedAddressFamily>()
            .and_then(|a| a.as_requested_address_family().ok())
            .map(|f| f.family())
        {
            None | Some(AddressFamily::IPv4) => Family::V4,
            Some(AddressFamily::IPv6) => Family::V6,
        };
        let supported = match family {
            Family::V4 => self.cfg.relay_ipv4.is_some(),
            Family::V6 => self.cfg.relay_ipv6.is_some(),
        };
        if !supported {
            return self.reject(req, Reject::FamilyNotSupported, Some(&auth), Vec::new());
        }
        if self.per_user.get(&auth.user).copied().unwrap_or(0) >= self.cfg.max_allocations_per_user
        {
            self.counters.quota_user += 1;
            return self.reject(req, Reject::QuotaReached, Some(&auth), Vec::new());
        }
        if self.allocations.len() + self.pending.len() >= self.cfg.max_allocations {
            self.counters.quota_capacity += 1;
            return self.reject(req, Reject::InsufficientCapacity, Some(&auth), Vec::new());
        }
        let requested = msg
            .get::<LifeTime>()
            .and_then(|a| a.as_life_time().ok())
            .map(|l| Duration::from_secs(u64::from(l.as_u32())));
        let lifetime = self.grant_lifetime(requested);
        let Some(port) = self.pick_port(even, &[]) else {
            self.counters.quota_capacity += 1;
            return self.reject(req, Reject::InsufficientCapacity, Some(&auth), Vec::new());
        };
        *self.per_user.entry(auth.user.clone()).or_insert(0) += 1;
        self.by_client.insert(req.from, port);
        let deadline = now + self.cfg.bind_timeout;
        self.pending.insert(
            port,
            Pending {
                client: req.from,
                family,
                auth,
                tid: *req.tid.as_bytes(),
                lifetime,
                even,
                tried: Vec::new(),
                deadline,
            },
        );
        self.timers.push(Reverse((deadline, Timer::Pending(port))));
        let user = self.pending[&port].auth.user.clone();
        self.commands
            .push_back(Output::CreateAllocation { port, family, user });
    }

    /// The shell's answer to [`Output::CreateAllocation`]: `Ok` once the relay socket is
    /// bound (the Allocate succeeds); [`BindError::PortUnavailable`] if the bind failed
    /// (another port is tried, up to `bind_attempts`, then 508);
    /// [`BindError::UserQuota`] if the user is over its quota across cores (486). A port the
    /// core no longer waits for (timed out, client gone) gets a [`Output::FreeAllocation`]
    /// back.
    pub fn handle_allocation_bound(
        &mut self,
        port: RelayPort,
        result: Result<(), BindError>,
        now: Instant,
    ) {
        self.now = self.now.max(now);
        let Some(mut p) = self.pending.remove(&port) else {
            if result.is_ok() && !self.allocations.contains_key(&port) {
                self.push_command(Output::FreeAllocation { port });
            }
            return;
        };
        let tid = TransactionId::from(p.tid);
        let req = Req {
            from: p.client,
            method: ALLOCATE,
            tid: &tid,
        };
        if result == Err(BindError::UserQuota) {
            self.by_client.remove(&p.client);
            self.release_user(&p.auth.user);
            self.counters.quota_user += 1;
            return self.reject(&req, Reject::QuotaReached, Some(&p.auth), Vec::new());
        }
        if result.is_err() {
            self.counters.bind_failures += 1;
            p.tried.push(port.0);
            let next = if p.tried.len() < self.cfg.bind_attempts as usize {
                self.pick_port(p.even, &p.tried)
            } else {
                None
            };
            match next {
                Some(next) => {
                    self.by_client.insert(p.client, next);
                    let family = p.family;
                    let deadline = p.deadline;
                    self.pending.insert(next, p);
                    self.timers.push(Reverse((deadline, Timer::Pending(next))));
                    let user = self.pending[&next].auth.user.clone();
                    self.commands.push_back(Output::CreateAllocation {
                        port: next,
                        family,
                        user,
                    });
                }
                None => {
                    self.by_client.remove(&p.client);
                    self.release_user(&p.auth.user);
                    self.counters.quota_capacity += 1;
                    self.reject(
                        &req,
                        Reject::InsufficientCapacity,
                        Some(&p.auth),
                        Vec::new(),
                    );
                }
            }
            return;
        }
        let expires = self.clamp_to_grant(p.auth.grant.as_deref(), now + p.lifetime);
        let bucket = self
            .cfg
            .bytes_per_sec_per_allocation
            .map(|rate| TokenBucket {
                tokens: rate.max(MAX_MESSAGE_LEN as u64),
                last: now,
            });
        self.allocations.insert(
            port,
            Allocation {
                client: p.client,
                family: p.family,
                username: p.auth.username.clone(),
                user: p.auth.user.clone(),
                grant: p.auth.grant.clone(),
                allocate_tid: p.tid,
                expires,
                permissions: HashMap::new(),
                channels: HashMap::new(),
                channel_by_peer: HashMap::new(),
                bucket,
                scheduled: expires,
                revoked: self.grant_deadline(p.auth.grant.as_deref()).is_some(),
            },
        );
        self.timers
            .push(Reverse((expires, Timer::Allocation(port))));
        self.counters.allocations_created += 1;
        let attrs = self.allocate_success_attrs(&req, port, p.family, p.lifetime);
        self.send_success(&req, Some(&p.auth), attrs);
    }

    fn allocate_success_attrs(
        &self,
        req: &Req,
        port: RelayPort,
        family: Family,
        lifetime: Duration,
    ) -> Vec<StunAttribute> {
        let ip = match family {
            Family::V4 => self.cfg.relay_ipv4.map(IpAddr::V4),
            Family::V6 => self.cfg.relay_ipv6.map(IpAddr::V6),
        }
        .expect("allocations are only made for a family with a configured relay address");
        vec![
            XorRelayedAddress::from(SocketAddr::new(ip, port.0)).into(),
            lifetime_attr(lifetime),
            XorMappedAddress::from(req.from.addr).into(),
        ]
    }

    fn grant_lifetime(&self, requested: Option<Duration>) -> Duration {
        requested
            .unwrap_or(self.cfg.default_lifetime)
            .clamp(self.cfg.default_lifetime, self.cfg.max_lifetime)
    }

    fn refresh(&mut self, req: &Req, msg: &StunMessage, bytes: &[u8], now: Instant) {
        let Some(auth) = self.authenticate(req, msg, bytes, now) else {
            return;
        };
        let Some(port) = self.own_allocation(req, &auth) else {
            return;
        };
        let requested = msg
            .get::<LifeTime>()
            .and_then(|a| a.as_life_time().ok())
            .map(|l| Duration::from_secs(u64::from(l.as_u32())));
        if requested == Some(Duration::ZERO) {
            self.counters.allocations_deleted += 1;
            self.free_allocation(port);
            return self.send_success(req, Some(&auth), vec![lifetime_attr(Duration::ZERO)]);
        }
        let lifetime = self.grant_lifetime(requested);
        let expires = self.clamp_to_grant(auth.grant.as_deref(), now + lifetime);
        let lifetime = expires.saturating_duration_since(now);
        if let Some(alloc) = self.allocations.get_mut(&port) {
            alloc.expires = expires;
        }
        self.reschedule(port);
        self.send_success(req, Some(&auth), vec![lifetime_attr(lifetime)]);
    }

    /// Peer addresses of a request, checked (400 / 443 / 403 sent otherwise).
    fn checked_peers(
        &mut self,
        req: &Req,
        msg: &StunMessage,
        auth: &Auth,
        port: RelayPort,
    ) -> Option<Vec<SocketAddr>> {
        let family = self.allocations.get(&port).map(|a| a.family)?;
        let peers: Vec<SocketAddr> = msg
            .attributes()
            .iter()
            .filter_map(|a| a.as_xor_peer_address().ok())
            .map(|a| *a.socket_address())
            .take(self.cfg.max_permissions_per_allocation + 1)
            .collect();
        if peers.is_empty() {
            self.reject(req, Reject::BadRequest, Some(auth), Vec::new());
            return None;
        }
        if peers.iter().any(|p| Family::of(p) != family) {
            self.reject(req, Reject::PeerFamilyMismatch, Some(auth), Vec::new());
            return None;
        }
        if peers.iter().any(|p| !self.filter.is_allowed_addr(*p)) {
            self.counters.peers_denied += 1;
            self.reject(req, Reject::Forbidden, Some(auth), Vec::new());
            return None;
        }
        Some(peers)
    }

    fn create_permission(&mut self, req: &Req, msg: &StunMessage, bytes: &[u8], now: Instant) {
        let Some(auth) = self.authenticate(req, msg, bytes, now) else {
            return;
        };
        let Some(port) = self.own_allocation(req, &auth) else {
            return;
        };
        let Some(peers) = self.checked_peers(req, msg, &auth, port) else {
            return;
        };
        let max = self.cfg.max_permissions_per_allocation;
        let expires = now + self.cfg.permission_lifetime;
        let Some(alloc) = self.allocations.get_mut(&port) else {
            return;
        };
        let mut new: Vec<IpAddr> = peers
            .iter()
            .map(|p| p.ip())
            .filter(|ip| !alloc.permissions.contains_key(ip))
            .collect();
        new.sort_unstable();
        new.dedup();
        if alloc.permissions.len() + new.len() > max {
            self.counters.quota_capacity += 1;
            return self.reject(req, Reject::InsufficientCapacity, Some(&auth), Vec::new());
        }
        for p in &peers {
            alloc.permissions.insert(p.ip(), expires);
        }
        if expires < alloc.scheduled {
            self.reschedule(port);
        }
        self.send_success(req, Some(&auth), Vec::new());
    }

    fn channel_bind(&mut self, req: &Req, msg: &StunMessage, bytes: &[u8], now: Instant) {
        let Some(auth) = self.authenticate(req, msg, bytes, now) else {
            return;
        };
        let Some(port) = self.own_allocation(req, &auth) else {
            return;
        };
        let number = msg
            .get::<ChannelNumber>()
            .and_then(|a| a.as_channel_number().ok())
            .map(|c| c.number())
            .filter(|n| (CHANNEL_MIN..=CHANNEL_MAX).contains(n));
        let Some(number) = number else {
            return self.reject(req, Reject::BadRequest, Some(&auth), Vec::new());
        };
        let Some(peers) = self.checked_peers(req, msg, &auth, port) else {
            return;
        };
        let [peer] = peers[..] else {
            return self.reject(req, Reject::BadRequest, Some(&auth), Vec::new());
        };
        let (max_perms, max_chans) = (
            self.cfg.max_permissions_per_allocation,
            self.cfg.max_channels_per_allocation,
        );
        let (perm_exp, chan_exp) = (
            now + self.cfg.permission_lifetime,
            now + self.cfg.channel_lifetime,
        );
        let Some(alloc) = self.allocations.get_mut(&port) else {
            return;
        };
        // RFC 8656 §11.2: a channel stays with its peer, a peer with its channel.
        let number_taken = alloc.channels.get(&number).is_some_and(|c| c.peer != peer);
        let peer_taken = alloc
            .channel_by_peer
            .get(&peer)
            .is_some_and(|n| *n != number);
        if number_taken || peer_taken {
            return self.reject(req, Reject::BadRequest, Some(&auth), Vec::new());
        }
        let new_channel = !alloc.channels.contains_key(&number);
        let new_perm = !alloc.permissions.contains_key(&peer.ip());
        if (new_channel && alloc.channels.len() >= max_chans)
            || (new_perm && alloc.permissions.len() >= max_perms)
        {
            self.counters.quota_capacity += 1;
            return self.reject(req, Reject::InsufficientCapacity, Some(&auth), Vec::new());
        }
        alloc.channels.insert(
            number,
            Channel {
                peer,
                expires: chan_exp,
            },
        );
        alloc.channel_by_peer.insert(peer, number);
        alloc.permissions.insert(peer.ip(), perm_exp);
        if perm_exp.min(chan_exp) < alloc.scheduled {
            self.reschedule(port);
        }
        self.send_success(req, Some(&auth), Vec::new());
    }

    // ---------------------------------------------------------------- grants

    /// The credentials handed out for `grant` (a call) stop working at `at` (the shell passes
    /// the call's end plus a grace): from then on they are refused (401) and every allocation
    /// made with them ends (its lifetime is cut to `at`; Refresh cannot extend it past that).
    /// The grant is remembered for `revoked_grant_memory` after `at`.
    pub fn handle_grant_revoked(&mut self, grant: &str, at: Instant, now: Instant) {
        self.now = self.now.max(now);
        self.forget_revoked(now);
        if self.revoked.contains_key(grant) {
            return;
        }
        if self.revoked.len() >= self.cfg.max_revoked_grants {
            if let Some((_, oldest)) = self.revoked_order.pop_front() {
                self.revoked.remove(&oldest);
            }
        }
        let grant: Box<str> = grant.into();
        self.revoked.insert(grant.clone(), at);
        self.revoked_order
            .push_back((at + self.cfg.revoked_grant_memory, grant.clone()));
        let ports: Vec<RelayPort> = self
            .allocations
            .iter()
            .filter(|(_, a)| a.grant.as_deref() == Some(&*grant) && a.expires > at)
            .map(|(p, _)| *p)
            .collect();
        for port in ports {
            if let Some(alloc) = self.allocations.get_mut(&port) {
                alloc.expires = at;
                alloc.revoked = true;
            }
            self.reschedule(port);
        }
    }

    /// Revoked grants whose memory has run out are dropped.
    fn forget_revoked(&mut self, now: Instant) {
        while let Some((forget_at, _)) = self.revoked_order.front() {
            if *forget_at > now {
                break;
            }
            if let Some((_, grant)) = self.revoked_order.pop_front() {
                self.revoked.remove(&grant);
            }
        }
    }

    /// When the credentials of `grant` stop working, if it was revoked.
    fn grant_deadline(&self, grant: Option<&str>) -> Option<Instant> {
        grant.and_then(|g| self.revoked.get(g).copied())
    }

    /// `expires`, but no later than the grant's revocation.
    fn clamp_to_grant(&self, grant: Option<&str>, expires: Instant) -> Instant {
        self.grant_deadline(grant)
            .map_or(expires, |at| expires.min(at))
    }

    // ---------------------------------------------------------------- time

    /// Expires allocations, permissions, channels and overdue relay binds.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        while let Some(&Reverse((at, timer))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Allocation(port) => self.expire_allocation(port, at, now),
                Timer::Pending(port) => self.expire_pending(port, now),
            }
        }
        self.forget_revoked(now);
        // Stale entries (from deadlines moved earlier) are bounded by the live ones.
        let live = self.allocations.len() + self.pending.len();
        if self.timers.len() > 2 * live + 64 {
            self.rebuild_timers();
        }
    }

    fn expire_allocation(&mut self, port: RelayPort, at: Instant, now: Instant) {
        let Some(alloc) = self.allocations.get_mut(&port) else {
            return;
        };
        if alloc.scheduled != at {
            return; // stale heap entry
        }
        if alloc.expires <= now {
            if alloc.revoked {
                self.counters.allocations_revoked += 1;
            } else {
                self.counters.allocations_expired += 1;
            }
            self.free_allocation(port);
            return;
        }
        alloc.permissions.retain(|_, exp| *exp > now);
        let channels = &mut alloc.channels;
        alloc
            .channel_by_peer
            .retain(|_, n| channels.get(n).is_some_and(|c| c.expires > now));
        channels.retain(|_, c| c.expires > now);
        let next = alloc.next_deadline();
        alloc.scheduled = next;
        self.timers.push(Reverse((next, Timer::Allocation(port))));
    }

    fn expire_pending(&mut self, port: RelayPort, now: Instant) {
        if self.pending.get(&port).is_none_or(|p| p.deadline > now) {
            return;
        }
        let Some(p) = self.pending.remove(&port) else {
            return;
        };
        self.by_client.remove(&p.client);
        self.release_user(&p.auth.user);
        self.counters.bind_failures += 1;
        self.counters.quota_capacity += 1;
        // The shell may still bind it: make sure the socket goes.
        self.push_command(Output::FreeAllocation { port });
        let tid = TransactionId::from(p.tid);
        let req = Req {
            from: p.client,
            method: ALLOCATE,
            tid: &tid,
        };
        self.reject(
            &req,
            Reject::InsufficientCapacity,
            Some(&p.auth),
            Vec::new(),
        );
    }

    /// Pushes the allocation's next deadline if it moved earlier than the scheduled one.
    fn reschedule(&mut self, port: RelayPort) {
        let Some(alloc) = self.allocations.get_mut(&port) else {
            return;
        };
        let next = alloc.next_deadline();
        if next < alloc.scheduled {
            alloc.scheduled = next;
            self.timers.push(Reverse((next, Timer::Allocation(port))));
        }
    }

    fn rebuild_timers(&mut self) {
        let allocs = self
            .allocations
            .iter()
            .map(|(p, a)| Reverse((a.scheduled, Timer::Allocation(*p))));
        let pending = self
            .pending
            .iter()
            .map(|(p, x)| Reverse((x.deadline, Timer::Pending(*p))));
        self.timers = allocs.chain(pending).collect();
    }

    // ---------------------------------------------------------------- helpers

    fn free_allocation(&mut self, port: RelayPort) {
        if let Some(alloc) = self.allocations.remove(&port) {
            self.by_client.remove(&alloc.client);
            self.release_user(&alloc.user);
            self.push_command(Output::FreeAllocation { port });
        }
    }

    fn release_user(&mut self, user: &str) {
        if let Some(n) = self.per_user.get_mut(user) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_user.remove(user);
            }
        }
    }

    fn port_free(&self, port: u16, avoid: &[u16]) -> bool {
        let p = RelayPort(port);
        !self.allocations.contains_key(&p)
            && !self.pending.contains_key(&p)
            && !avoid.contains(&port)
    }

    /// A free relay port from the range, chosen at random (even if asked).
    fn pick_port(&mut self, even: bool, avoid: &[u16]) -> Option<RelayPort> {
        let (lo, hi) = (
            u32::from(*self.cfg.port_range.start()),
            u32::from(*self.cfg.port_range.end()),
        );
        let span = hi - lo + 1;
        let ok = |p: u32| !even || p & 1 == 0;
        for _ in 0..PORT_PICKS {
            let p = lo + self.rng.next_u32() % span;
            let p = if even { p & !1 } else { p };
            if p >= lo && ok(p) {
                let p = u16::try_from(p).expect("ports come from a u16 range");
                if self.port_free(p, avoid) {
                    return Some(RelayPort(p));
                }
            }
        }
        // Nearly full: scan once from a random start.
        let start = self.rng.next_u32() % span;
        (0..span)
            .map(|i| lo + (start + i) % span)
            .filter(|p| ok(*p))
            .map(|p| u16::try_from(p).expect("ports come from a u16 range"))
            .find(|p| self.port_free(*p, avoid))
            .map(RelayPort)
    }

    /// One more unauthenticated answer to `ip`'s source (GCRA: `unauth_per_sec` with a burst
    /// of `unauth_burst`). Idle sources are forgotten when the table is full; if it is still
    /// full, new sources get no answer.
    fn admit_unauthenticated(&mut self, ip: IpAddr) -> bool {
        let now = self.now;
        let interval = Duration::from_secs(1) / self.cfg.unauth_per_sec;
        let tolerance = interval * self.cfg.unauth_burst.saturating_sub(1);
        let key = SourceKey::of(ip);
        if !self.unauth.contains_key(&key) && self.unauth.len() >= self.cfg.max_unauth_sources {
            self.unauth.retain(|_, tat| *tat > now);
            if self.unauth.len() >= self.cfg.max_unauth_sources {
                return false;
            }
        }
        let tat = self.unauth.entry(key).or_insert(now);
        let start = (*tat).max(now);
        if start.saturating_duration_since(now) > tolerance {
            return false;
        }
        *tat = start + interval;
        true
    }

    fn push_command(&mut self, cmd: Output) {
        if matches!(cmd, Output::SendToClient { .. }) && self.commands.len() >= MAX_QUEUED_COMMANDS
        {
            self.counters.queue_full_dropped += 1;
            return;
        }
        self.commands.push_back(cmd);
    }

    fn encode(&mut self, msg: &StunMessage, capacity: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; capacity];
        let len = self.encoder.encode(&mut buf, msg).ok()?;
        buf.truncate(len);
        Some(buf)
    }

    fn send(
        &mut self,
        req: &Req,
        class: MessageClass,
        auth: Option<&Auth>,
        attrs: Vec<StunAttribute>,
    ) {
        let mut b = StunMessageBuilder::new(req.method, class).with_transaction_id(*req.tid);
        for a in attrs {
            b = b.with_attribute(a);
        }
        if let Ok(software) = Software::new(&self.cfg.software) {
            b = b.with_attribute(software);
        }
        match auth {
            Some(a) if a.sha256 => b = b.with_attribute(MessageIntegritySha256::new(a.key.clone())),
            Some(a) => b = b.with_attribute(MessageIntegrity::new(a.key.clone())),
            None => {}
        }
        // Unauthenticated answers over UDP go to whatever source address the request claims:
        // rate limited per source, so the server is no amplifier against a spoofed victim.
        if auth.is_none()
            && req.from.transport == Transport::Udp
            && !self.admit_unauthenticated(req.from.addr.ip())
        {
            self.counters.unauth_dropped += 1;
            return;
        }
        let msg = b.with_attribute(Fingerprint::default()).build();
        self.counters.requests += 1;
        if class == MessageClass::ErrorResponse {
            self.counters.error_responses += 1;
        }
        // Every attribute here is small and well-formed; failure would be a codec bug, and
        // then the client simply retransmits.
        if let Some(bytes) = self.encode(&msg, RESPONSE_BUF) {
            self.push_command(Output::SendToClient {
                to: req.from,
                bytes,
            });
        }
    }

    fn send_success(&mut self, req: &Req, auth: Option<&Auth>, attrs: Vec<StunAttribute>) {
        self.send(req, MessageClass::SuccessResponse, auth, attrs);
    }

    fn send_error(
        &mut self,
        req: &Req,
        code: u16,
        reason: &str,
        auth: Option<&Auth>,
        mut attrs: Vec<StunAttribute>,
    ) {
        let error = stun_rs::ErrorCode::new(code, reason)
            .expect("the error codes used here are all in 300..700");
        attrs.insert(0, ErrorCode::from(error).into());
        self.send(req, MessageClass::ErrorResponse, auth, attrs);
    }

    fn reject(&mut self, req: &Req, why: Reject, auth: Option<&Auth>, attrs: Vec<StunAttribute>) {
        let (code, reason) = why.code();
        self.send_error(req, code, reason, auth, attrs);
    }

    /// 401 / 438 with REALM and a fresh NONCE (no MESSAGE-INTEGRITY: no key is agreed).
    fn challenge(&mut self, req: &Req, why: Reject, now: Instant) {
        let expiry = self
            .wall_secs(now)
            .saturating_add(self.cfg.nonce_lifetime.as_secs());
        let nonce = self.nonces.mint(expiry, &req.from);
        let mut attrs = Vec::with_capacity(2);
        if let Ok(realm) = Realm::new(&self.cfg.realm) {
            attrs.push(realm.into());
        }
        if let Ok(nonce) = Nonce::new(nonce) {
            attrs.push(nonce.into());
        }
        self.reject(req, why, None, attrs);
    }
}

fn lifetime_attr(lifetime: Duration) -> StunAttribute {
    let secs = u32::try_from(lifetime.as_secs()).unwrap_or(u32::MAX);
    LifeTime::new(secs).into()
}

/// Comprehension-required attribute types of a message that this server does not handle.
fn unknown_required(msg: &StunMessage) -> Vec<u16> {
    let mut out = Vec::new();
    for a in msg.attributes() {
        let t = a.attribute_type().as_u16();
        if t < 0x8000 && !KNOWN_REQUIRED.contains(&t) && !out.contains(&t) {
            out.push(t);
            if out.len() == MAX_UNKNOWN_LISTED {
                break;
            }
        }
    }
    out
}

fn has_unknown_required(msg: &StunMessage) -> bool {
    msg.attributes().iter().any(|a| {
        let t = a.attribute_type().as_u16();
        // DONT-FRAGMENT in a Send indication is ignored rather than refused (RFC 8656 §10.2).
        t < 0x8000 && t != 0x001A && !KNOWN_REQUIRED.contains(&t)
    })
}

/// Where the value of the first attribute of type `ty` lies in a STUN message whose header
/// has been checked (walks the type-length-value headers, reads no value).
fn find_attribute(bytes: &[u8], ty: u16) -> Option<Range<usize>> {
    let mut at = STUN_HEADER_LEN;
    while let Some(h) = bytes.get(at..at + 4) {
        let t = u16::from_be_bytes([h[0], h[1]]);
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let value = at + 4..at + 4 + len;
        if value.end > bytes.len() {
            return None;
        }
        if t == ty {
            return Some(value);
        }
        at = value.start + len.next_multiple_of(4);
    }
    None
}

/// The last checks of a client → peer datagram (ChannelData or Send indication), then its count:
/// a live permission for the peer and room in the allocation's byte budget.
#[allow(clippy::too_many_arguments)]
#[inline]
fn admit_outbound(
    alloc: &mut Allocation,
    counters: &mut Counters,
    rate: Option<u64>,
    peer: SocketAddr,
    from: ClientSocket,
    kind: RelayKind,
    len: usize,
    now: Instant,
) -> bool {
    if !alloc.permitted(peer.ip(), now) {
        counters.no_permission_dropped += 1;
        return false;
    }
    if !alloc.take_tokens(rate, len, now) {
        counters.rate_limited_dropped += 1;
        return false;
    }
    counters.count_relayed(Direction::ClientToPeer, from.transport, kind, len);
    true
}
