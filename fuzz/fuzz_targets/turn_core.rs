//! The TURN core (`tandem_turn::Server`) driven statefully, as the shell's TURN workers drive
//! it (turn/tests/common does the same by hand): four clients (UDP, TCP, TLS over IPv6, and a
//! second UDP port of the first address) send raw bytes and well-formed requests built with
//! the re-exported `stun_rs` codec — Binding, Allocate (with REST credentials and the nonce
//! the server last gave that client, so the fuzzer gets past authentication), Refresh,
//! CreatePermission, ChannelBind, Send indications, ChannelData — or such messages with bytes
//! flipped; peers send datagrams to relay ports; the shell reports binds, closed connections
//! and revoked grants; time moves on. Every command is drained, every message to a client must
//! decode. Checked: no panic, relay ranges within the datagram, quotas and timers hold.
//!
//! Input: a byte of configuration flags, then operations (`tandem_fuzz::turn_ops`), each an
//! opcode byte (modulo `COUNT`) and its arguments; see `Harness::apply`.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tandem_fuzz::turn_ops as op;
use tandem_fuzz::Reader;
use tandem_turn::stun_rs::attributes::stun::{
    Fingerprint, MessageIntegrity, MessageIntegritySha256, Nonce, Realm, UserName,
};
use tandem_turn::stun_rs::attributes::turn::{
    ChannelNumber, Data, DontFragment, EvenPort, LifeTime, RequestedAddressFamily,
    RequestedTrasport, ReservationToken, XorPeerAddress,
};
use tandem_turn::stun_rs::methods::{
    ALLOCATE, BINDING, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH, SEND,
};
use tandem_turn::stun_rs::{
    protocols, AddressFamily, Algorithm, AlgorithmId, HMACKey, MessageClass, MessageDecoderBuilder,
    MessageEncoderBuilder, MessageMethod, StunAttribute, StunMessageBuilder, TransactionId,
};
use tandem_turn::{
    rest_credentials, BindError, ClientSocket, Config, Output, RelayPort, Server, Transport,
};

const SECRET: &[u8] = b"fuzz-secret";
const REALM: &str = "tandem.fuzz";
const UNIX0: u64 = 1_700_000_000;
const RELAY_IP: Ipv4Addr = Ipv4Addr::new(203, 0, 113, 10);
const MEDIA: &str = "198.51.100.7:7882";
const MAX_OPS: usize = 192;
const USERS: [&str; 2] = ["alice", "bob"];
const GRANTS: [Option<&str>; 3] = [None, Some("call-1"), Some("call-2")];

fn config(flags: u8) -> Config {
    let small = flags & 8 != 0;
    Config {
        realm: REALM.to_owned(),
        auth_secret: SECRET.to_vec(),
        relay_ipv4: Some(RELAY_IP),
        relay_ipv6: (flags & 16 != 0).then(|| "2001:db8::10".parse().expect("address")),
        port_range: if small { 50000..=50002 } else { 50000..=50999 },
        open_relay: flags & 1 != 0,
        allow_loopback_peers: flags & 2 != 0,
        bytes_per_sec_per_allocation: (flags & 4 != 0).then_some(2000),
        max_allocations: if small { 2 } else { 10_000 },
        max_allocations_per_user: if small { 1 } else { 10 },
        max_permissions_per_allocation: if small { 2 } else { 64 },
        max_channels_per_allocation: if small { 2 } else { 64 },
        bind_attempts: if small { 2 } else { 4 },
        unauth_per_sec: if flags & 32 != 0 { 1 } else { 1000 },
        unauth_burst: if flags & 32 != 0 { 2 } else { 1000 },
        always_allow: vec![MEDIA.parse().expect("address")],
        host_addresses: vec![IpAddr::V4(RELAY_IP)],
        ..Config::default()
    }
}

fn clients() -> [ClientSocket; 4] {
    let c = |a: &str, transport| ClientSocket {
        addr: a.parse().expect("address"),
        transport,
    };
    [
        c("192.0.2.1:40000", Transport::Udp),
        c("192.0.2.2:40001", Transport::Tcp),
        c("[2001:db8::1]:40002", Transport::Tls),
        c("192.0.2.1:40003", Transport::Udp),
    ]
}

struct Harness {
    server: Server,
    max_allocations: usize,
    now: Instant,
    clients: [ClientSocket; 4],
    /// The nonce each client last got.
    nonces: [Option<String>; 4],
    /// Relay ports the core asked to bind and has not had an answer for.
    binding: Vec<RelayPort>,
    /// Every relay port the core asked for.
    ports: Vec<RelayPort>,
    next_tid: u32,
}

/// Credentials as a fuzzed client holds them.
struct Creds {
    username: String,
    password: String,
    realm: String,
    nonce: String,
    sha256: bool,
}

impl Harness {
    fn client(&self, r: &mut Reader) -> usize {
        usize::from(r.u8()) % self.clients.len()
    }

    fn peer(&self, r: &mut Reader) -> SocketAddr {
        match r.u8() % 9 {
            0 => MEDIA.parse().expect("address"),
            1 => "8.8.8.8:3478".parse().expect("address"),
            2 => "127.0.0.1:5000".parse().expect("address"),
            3 => "10.1.2.3:5000".parse().expect("address"),
            4 => "[::ffff:127.0.0.1]:5000".parse().expect("address"),
            5 => "[2606:4700::1111]:443".parse().expect("address"),
            6 => SocketAddr::new(IpAddr::V4(RELAY_IP), 50001),
            7 => "[::ffff:198.51.100.7]:7882".parse().expect("address"),
            _ => {
                let ip = IpAddr::V4(Ipv4Addr::from(r.u32()));
                SocketAddr::new(ip, r.u16())
            }
        }
    }

    /// A relay port the core asked for (255, or none yet: the `u16` that follows).
    fn port(&self, r: &mut Reader) -> RelayPort {
        let (i, raw) = (r.u8(), r.u16());
        match self.ports.get(usize::from(i) % self.ports.len().max(1)) {
            Some(p) if i != 255 => *p,
            _ => RelayPort(raw),
        }
    }

    fn creds(&self, c: usize, r: &mut Reader) -> Creds {
        let user = match r.u8() % 3 {
            2 => r.string(),
            i => USERS[usize::from(i)].to_owned(),
        };
        let grant = GRANTS[usize::from(r.u8()) % GRANTS.len()];
        let expiry = match r.u8() % 4 {
            0 | 1 => UNIX0 + 86_400,
            2 => UNIX0 - 10,
            _ => UNIX0.wrapping_add(u64::from(r.u32())),
        };
        let (username, mut password) = rest_credentials(SECRET, &user, grant, expiry);
        let nonce = match (r.u8() % 4, &self.nonces[c]) {
            (0 | 1, Some(n)) => n.clone(),
            _ => r.string(),
        };
        let realm = if r.u8() % 8 == 7 {
            r.string()
        } else {
            REALM.to_owned()
        };
        if r.u8() % 8 == 7 {
            password.push('x');
        }
        Creds {
            username,
            password,
            realm,
            nonce,
            sha256: r.bool(),
        }
    }

    fn tid(&mut self) -> TransactionId {
        self.next_tid += 1;
        let mut t = [0u8; 12];
        t[..4].copy_from_slice(&self.next_tid.to_le_bytes());
        TransactionId::from(t)
    }

    /// Encodes a message; `None` when the codec refuses what was fuzzed into it.
    fn message(
        &mut self,
        method: MessageMethod,
        class: MessageClass,
        attrs: Vec<StunAttribute>,
        creds: Option<&Creds>,
        fingerprint: bool,
    ) -> Option<Vec<u8>> {
        let mut b = StunMessageBuilder::new(method, class).with_transaction_id(self.tid());
        for a in attrs {
            b = b.with_attribute(a);
        }
        if let Some(c) = creds {
            b = b
                .with_attribute(UserName::new(&c.username).ok()?)
                .with_attribute(Realm::new(&c.realm).ok()?)
                .with_attribute(Nonce::new(&c.nonce).ok()?);
            let key = HMACKey::new_long_term(
                &c.username,
                &c.realm,
                &c.password,
                Algorithm::from(AlgorithmId::MD5),
            )
            .ok()?;
            b = if c.sha256 {
                b.with_attribute(MessageIntegritySha256::new(key))
            } else {
                b.with_attribute(MessageIntegrity::new(key))
            };
        }
        if fingerprint {
            b = b.with_attribute(Fingerprint::default());
        }
        let msg = b.build();
        let mut buf = vec![0u8; 70_000];
        let n = MessageEncoderBuilder::default()
            .build()
            .encode(&mut buf, &msg)
            .ok()?;
        buf.truncate(n);
        Some(buf)
    }

    /// One well-formed message (of the kind `kind` picks) from client `c`.
    fn valid(&mut self, kind: u8, c: usize, r: &mut Reader) -> Option<Vec<u8>> {
        let req = MessageClass::Request;
        match kind % 7 {
            0 => {
                let fp = r.bool();
                self.message(BINDING, req, Vec::new(), None, fp)
            }
            1 => {
                let authed = r.u8() % 4 != 0;
                let creds = authed.then(|| self.creds(c, r));
                let extras = r.u8();
                let mut attrs: Vec<StunAttribute> = Vec::new();
                if extras & 1 == 0 {
                    attrs.push(RequestedTrasport::from(protocols::UDP).into());
                }
                if extras & 2 != 0 {
                    attrs.push(LifeTime::new(r.u32()).into());
                }
                if extras & 4 != 0 {
                    let family = if r.bool() {
                        AddressFamily::IPv6
                    } else {
                        AddressFamily::IPv4
                    };
                    attrs.push(RequestedAddressFamily::new(family).into());
                }
                if extras & 8 != 0 {
                    attrs.push(EvenPort::new(r.bool()).into());
                }
                if extras & 16 != 0 {
                    attrs.push(DontFragment::default().into());
                }
                if extras & 32 != 0 {
                    attrs.push(ReservationToken::from([r.u8(); 8]).into());
                }
                self.message(ALLOCATE, req, attrs, creds.as_ref(), extras & 64 != 0)
            }
            2 => {
                let creds = self.creds(c, r);
                let attrs = match r.u8() % 3 {
                    0 => Vec::new(),
                    1 => vec![LifeTime::new(0).into()],
                    _ => vec![LifeTime::new(r.u32()).into()],
                };
                self.message(REFRESH, req, attrs, Some(&creds), false)
            }
            3 => {
                let creds = self.creds(c, r);
                let attrs = (0..r.u8() % 4)
                    .map(|_| XorPeerAddress::from(self.peer(r)).into())
                    .collect();
                self.message(CREATE_PERMMISSION, req, attrs, Some(&creds), false)
            }
            4 => {
                let creds = self.creds(c, r);
                let channel = channel(r);
                let peer = self.peer(r);
                let attrs = vec![
                    ChannelNumber::new(channel).into(),
                    XorPeerAddress::from(peer).into(),
                ];
                self.message(CHANNEL_BIND, req, attrs, Some(&creds), false)
            }
            5 => {
                let peer = self.peer(r);
                let data = r.bytes();
                let attrs = vec![XorPeerAddress::from(peer).into(), Data::from(data).into()];
                self.message(SEND, MessageClass::Indication, attrs, None, r.bool())
            }
            _ => {
                let channel = channel(r);
                let data = r.bytes();
                let pad = usize::from(r.u8() % 4);
                let len = u16::try_from(data.len()).unwrap_or(u16::MAX);
                let mut m = Vec::with_capacity(4 + data.len() + pad);
                m.extend_from_slice(&channel.to_be_bytes());
                m.extend_from_slice(&len.to_be_bytes());
                m.extend_from_slice(data);
                m.resize(m.len() + pad, 0);
                Some(m)
            }
        }
    }

    fn client_input(&mut self, c: usize, bytes: &[u8]) {
        let client = self.clients[c];
        if let Some((port, _peer, range)) = self.server.handle_client_input(bytes, client, self.now)
        {
            assert!(
                range.start <= range.end && range.end <= bytes.len(),
                "{range:?}"
            );
            assert_eq!(
                self.server.allocation_of(&client),
                Some(port),
                "relayed through an allocation that is not the client's"
            );
        }
    }

    fn apply(&mut self, code: u8, r: &mut Reader) {
        match code % op::COUNT {
            op::RAW => {
                let c = self.client(r);
                let bytes = r.bytes();
                self.client_input(c, bytes);
            }
            kind @ (op::BINDING
            | op::ALLOCATE
            | op::REFRESH
            | op::PERMISSION
            | op::CHANNEL_BIND
            | op::SEND
            | op::CHANNEL_DATA) => {
                let c = self.client(r);
                if let Some(m) = self.valid(kind - op::BINDING, c, r) {
                    self.client_input(c, &m);
                }
            }
            op::MUTATED => {
                let c = self.client(r);
                let kind = r.u8();
                if let Some(mut m) = self.valid(kind, c, r) {
                    for _ in 0..r.u8() % 4 {
                        let at = usize::from(r.u16());
                        let x = r.u8();
                        if !m.is_empty() {
                            let i = at % m.len();
                            m[i] ^= x;
                        }
                    }
                    if r.bool() {
                        m.truncate(usize::from(r.u16()));
                    }
                    self.client_input(c, &m);
                }
            }
            op::PEER => {
                let port = self.port(r);
                let peer = self.peer(r);
                let data = r.bytes();
                if let Some(to) = self.server.handle_peer_input(data, port, peer, self.now) {
                    assert!(self.clients.contains(&to.client));
                    assert!(
                        (0x4000..=0x7FFF).contains(&to.channel),
                        "channel {}",
                        to.channel
                    );
                    assert_eq!(self.server.allocation_of(&to.client), Some(port));
                }
            }
            op::BOUND => {
                // A port waiting for its bind (255, or none: the `u16` that follows).
                let (i, raw) = (r.u8(), r.u16());
                let port = match self.binding.get(usize::from(i) % self.binding.len().max(1)) {
                    Some(p) if i != 255 => *p,
                    _ => RelayPort(raw),
                };
                self.binding.retain(|p| *p != port);
                let result = match r.u8() % 4 {
                    0 | 1 => Ok(()),
                    2 => Err(BindError::PortUnavailable),
                    _ => Err(BindError::UserQuota),
                };
                self.server.handle_allocation_bound(port, result, self.now);
            }
            op::DISCONNECTED => {
                let c = self.client(r);
                self.server
                    .handle_client_disconnected(self.clients[c], self.now);
            }
            op::ADVANCE => {
                let ms = u64::from(r.u16());
                let scale = [1, 1000, 60_000][usize::from(r.u8() % 3)];
                self.now += Duration::from_millis(ms * scale);
                self.run_timers();
            }
            _ => {
                // REVOKE: a call ended; its credentials stop working (maybe a bit later).
                let grant = match r.u8() % 3 {
                    2 => r.string(),
                    i => GRANTS[usize::from(i) + 1].expect("a grant").to_owned(),
                };
                let at = self.now + Duration::from_secs(u64::from(r.u8()));
                self.server.handle_grant_revoked(&grant, at, self.now);
            }
        }
        self.drain();
        self.check();
    }

    fn run_timers(&mut self) {
        self.server.handle_timeout(self.now);
        if let Some(at) = self.server.poll_timeout() {
            assert!(at > self.now, "a timer is still due after handle_timeout");
        }
    }

    fn drain(&mut self) {
        let decoder = MessageDecoderBuilder::default().build();
        while let Some(cmd) = self.server.poll_output() {
            match cmd {
                Output::SendToClient { to, bytes } => {
                    let c = self
                        .clients
                        .iter()
                        .position(|c| *c == to)
                        .expect("only known clients are answered");
                    let (msg, _) = decoder
                        .decode(&bytes)
                        .expect("the server's messages decode");
                    if debug() {
                        eprintln!("to client {c}: {msg:?}");
                    }
                    if let Some(n) = msg.get::<Nonce>().and_then(|a| a.as_nonce().ok()) {
                        self.nonces[c] = Some(n.as_str().to_owned());
                    }
                }
                Output::CreateAllocation { port, .. } => {
                    if debug() {
                        eprintln!("create allocation {port:?}");
                    }
                    assert!((50000..=50999).contains(&port.0), "port {port:?}");
                    self.binding.push(port);
                    if !self.ports.contains(&port) {
                        self.ports.push(port);
                    }
                }
                Output::FreeAllocation { port } => {
                    self.binding.retain(|p| *p != port);
                }
            }
        }
    }

    fn check(&self) {
        let n = self.server.allocations();
        assert!(n + self.server.pending_allocations() <= self.max_allocations);
        assert_eq!(self.server.counters().allocations_active, n as u64);
    }
}

/// A channel number: mostly one of the first few valid ones.
fn channel(r: &mut Reader) -> u16 {
    match r.u8() {
        b @ 0..=251 => 0x4000 + u16::from(b % 4),
        _ => r.u16(),
    }
}

/// `TANDEM_FUZZ_DEBUG=1`: print what the server answers (to check what a seed reaches).
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("TANDEM_FUZZ_DEBUG").is_some())
}

fuzz_target!(|data: &[u8]| {
    let mut r = Reader::new(data);
    let cfg = config(r.u8());
    let max_allocations = cfg.max_allocations;
    let now = Instant::now();
    let mut h = Harness {
        server: Server::new(cfg, [9; 32], now, UNIX0 * 1000).expect("valid config"),
        max_allocations,
        now,
        clients: clients(),
        nonces: Default::default(),
        binding: Vec::new(),
        ports: Vec::new(),
        next_tid: 0,
    };
    for _ in 0..MAX_OPS {
        if r.is_empty() {
            break;
        }
        let code = r.u8();
        h.apply(code, &mut r);
    }
});
