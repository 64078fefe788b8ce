//! A hand-driven server and a tiny TURN client built with the same codec.
#![allow(dead_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use tandem_turn::stun_rs::attributes::stun::{
    ErrorCode, MessageIntegrity, MessageIntegritySha256, Nonce, Realm, UserName,
};
use tandem_turn::stun_rs::attributes::turn::{
    ChannelNumber, Data, LifeTime, RequestedTrasport, XorPeerAddress,
};
use tandem_turn::stun_rs::methods::{ALLOCATE, CHANNEL_BIND, CREATE_PERMMISSION, REFRESH, SEND};
use tandem_turn::stun_rs::{
    protocols, Algorithm, AlgorithmId, DecoderContextBuilder, HMACKey, MessageClass,
    MessageDecoderBuilder, MessageEncoderBuilder, MessageMethod, StunAttribute, StunMessage,
    StunMessageBuilder, TransactionId,
};
use tandem_turn::{rest_credentials, ClientSocket, Config, Output, RelayPort, Server, Transport};

pub const SECRET: &[u8] = b"test-secret";
pub const REALM: &str = "tandem.test";
/// Wall clock at the harness's start.
pub const UNIX0: u64 = 1_700_000_000;
pub const RELAY_IP: [u8; 4] = [203, 0, 113, 10];

pub fn config() -> Config {
    Config {
        realm: REALM.to_owned(),
        auth_secret: SECRET.to_vec(),
        relay_ipv4: Some(RELAY_IP.into()),
        port_range: 50000..=50999,
        // Most tests relay to public documentation-free peers; the strict default is tested
        // on its own.
        open_relay: true,
        ..Config::default()
    }
}

pub fn sock(s: &str) -> ClientSocket {
    ClientSocket {
        addr: s.parse().unwrap(),
        transport: Transport::Udp,
    }
}

pub fn tcp(s: &str) -> ClientSocket {
    ClientSocket {
        addr: s.parse().unwrap(),
        transport: Transport::Tcp,
    }
}

pub fn addr(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

pub struct Harness {
    pub server: Server,
    pub t0: Instant,
    pub now: Instant,
}

impl Harness {
    pub fn new(cfg: Config) -> Harness {
        let t0 = Instant::now();
        let server = Server::new(cfg, [42; 32], t0, UNIX0 * 1000).unwrap();
        Harness {
            server,
            t0,
            now: t0,
        }
    }

    pub fn advance(&mut self, d: Duration) {
        self.now += d;
        self.server.handle_timeout(self.now);
    }

    pub fn commands(&mut self) -> Vec<Output> {
        std::iter::from_fn(|| self.server.poll_output()).collect()
    }

    /// Sends `bytes` and returns the responses to `from` (decoded), plus other commands.
    pub fn exchange(
        &mut self,
        bytes: &[u8],
        from: ClientSocket,
    ) -> (Vec<StunMessage>, Vec<Output>) {
        let out = self.server.handle_client_input(bytes, from, self.now);
        assert!(out.is_none(), "a request produced relay output");
        self.split(from)
    }

    pub fn split(&mut self, to: ClientSocket) -> (Vec<StunMessage>, Vec<Output>) {
        let mut msgs = Vec::new();
        let mut other = Vec::new();
        for c in self.commands() {
            match c {
                Output::SendToClient { to: t, bytes } if t == to => msgs.push(decode(&bytes)),
                c => other.push(c),
            }
        }
        (msgs, other)
    }

    /// Sends a request, expects exactly one response.
    pub fn one(&mut self, bytes: &[u8], from: ClientSocket) -> StunMessage {
        let (mut msgs, other) = self.exchange(bytes, from);
        assert_eq!(msgs.len(), 1, "responses: {msgs:?}, other: {other:?}");
        msgs.pop().unwrap()
    }
}

pub fn decode(bytes: &[u8]) -> StunMessage {
    MessageDecoderBuilder::default()
        .build()
        .decode(bytes)
        .expect("decodable response")
        .0
}

/// Decodes and checks MESSAGE-INTEGRITY with `key` (fails if absent or wrong).
pub fn decode_verified(bytes: &[u8], key: &HMACKey) -> StunMessage {
    let ctx = DecoderContextBuilder::default()
        .with_key(key.clone())
        .with_validation()
        .build();
    MessageDecoderBuilder::default()
        .with_context(ctx)
        .build()
        .decode(bytes)
        .expect("valid integrity")
        .0
}

pub fn error_code(msg: &StunMessage) -> Option<u16> {
    msg.get::<ErrorCode>()
        .and_then(|a| a.as_error_code().ok())
        .map(|e| e.error_code().error_code())
}

pub fn nonce_of(msg: &StunMessage) -> Option<String> {
    msg.get::<Nonce>()
        .and_then(|a| a.as_nonce().ok())
        .map(|n| n.as_str().to_owned())
}

pub fn has<T: tandem_turn::stun_rs::StunAttributeType>(msg: &StunMessage) -> bool {
    msg.get::<T>().is_some()
}

/// A TURN client's credentials and current nonce.
#[derive(Debug)]
pub struct Creds {
    pub username: String,
    pub password: String,
    pub nonce: String,
    pub sha256: bool,
}

impl Creds {
    pub fn rest(session: &str, expiry: u64, nonce: &str) -> Creds {
        let (username, password) = rest_credentials(SECRET, session, None, expiry);
        Creds {
            username,
            password,
            nonce: nonce.to_owned(),
            sha256: false,
        }
    }

    pub fn key(&self) -> HMACKey {
        HMACKey::new_long_term(
            &self.username,
            REALM,
            &self.password,
            Algorithm::from(AlgorithmId::MD5),
        )
        .unwrap()
    }
}

pub fn tid(n: u8) -> TransactionId {
    TransactionId::from([n; 12])
}

/// Encodes a message of `method`/`class` with `attrs`, signed with `creds` if given.
pub fn message(
    method: MessageMethod,
    class: MessageClass,
    t: TransactionId,
    attrs: Vec<StunAttribute>,
    creds: Option<&Creds>,
) -> Vec<u8> {
    let mut b = StunMessageBuilder::new(method, class).with_transaction_id(t);
    for a in attrs {
        b = b.with_attribute(a);
    }
    if let Some(c) = creds {
        b = b
            .with_attribute(UserName::new(&c.username).unwrap())
            .with_attribute(Realm::new(REALM).unwrap())
            .with_attribute(Nonce::new(&c.nonce).unwrap());
        b = if c.sha256 {
            b.with_attribute(MessageIntegritySha256::new(c.key()))
        } else {
            b.with_attribute(MessageIntegrity::new(c.key()))
        };
    }
    let msg = b.build();
    let mut buf = vec![0u8; 70_000];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &msg)
        .unwrap();
    buf.truncate(n);
    buf
}

pub fn request(
    method: MessageMethod,
    t: TransactionId,
    attrs: Vec<StunAttribute>,
    creds: Option<&Creds>,
) -> Vec<u8> {
    message(method, MessageClass::Request, t, attrs, creds)
}

pub fn allocate_req(t: TransactionId, creds: Option<&Creds>, extra: Vec<StunAttribute>) -> Vec<u8> {
    let mut attrs = vec![RequestedTrasport::from(protocols::UDP).into()];
    attrs.extend(extra);
    request(ALLOCATE, t, attrs, creds)
}

pub fn refresh_req(t: TransactionId, creds: &Creds, lifetime: Option<u32>) -> Vec<u8> {
    let attrs = lifetime
        .map(|l| LifeTime::new(l).into())
        .into_iter()
        .collect();
    request(REFRESH, t, attrs, Some(creds))
}

pub fn permission_req(t: TransactionId, creds: &Creds, peers: &[SocketAddr]) -> Vec<u8> {
    let attrs = peers
        .iter()
        .map(|p| XorPeerAddress::from(*p).into())
        .collect();
    request(CREATE_PERMMISSION, t, attrs, Some(creds))
}

pub fn channel_bind_req(
    t: TransactionId,
    creds: &Creds,
    channel: u16,
    peer: SocketAddr,
) -> Vec<u8> {
    let attrs = vec![
        ChannelNumber::new(channel).into(),
        XorPeerAddress::from(peer).into(),
    ];
    request(CHANNEL_BIND, t, attrs, Some(creds))
}

pub fn send_ind(peer: SocketAddr, payload: &[u8]) -> Vec<u8> {
    let attrs = vec![
        XorPeerAddress::from(peer).into(),
        Data::from(payload).into(),
    ];
    message(SEND, MessageClass::Indication, tid(99), attrs, None)
}

pub fn lifetime_of(msg: &StunMessage) -> Option<u32> {
    msg.get::<LifeTime>()
        .and_then(|a| a.as_life_time().ok())
        .map(|l| l.as_u32())
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

/// Runs the whole handshake (401, authenticated Allocate, bind) for `from`, returning the
/// credentials (with a valid nonce) and the relay port.
pub fn allocate(h: &mut Harness, from: ClientSocket, session: &str) -> (Creds, RelayPort) {
    let first = h.one(&allocate_req(tid(1), None, vec![]), from);
    assert_eq!(error_code(&first), Some(401));
    let creds = Creds::rest(session, UNIX0 + 86_400, &nonce_of(&first).unwrap());
    let (msgs, other) = h.exchange(&allocate_req(tid(2), Some(&creds), vec![]), from);
    assert!(msgs.is_empty(), "{msgs:?}");
    let [Output::CreateAllocation { port, .. }] = other[..] else {
        panic!("expected CreateAllocation, got {other:?}");
    };
    h.server.handle_allocation_bound(port, Ok(()), h.now);
    let (msgs, _) = h.split(from);
    assert_eq!(msgs.len(), 1);
    assert_eq!(
        msgs[0].class(),
        MessageClass::SuccessResponse,
        "{:?}",
        msgs[0]
    );
    (creds, port)
}
