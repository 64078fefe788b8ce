//! Writes the seed corpus, `fuzz/corpus/<target>/<seed>`: for each target a handful of
//! inputs that mean something (valid events, a chat, a call, a TURN allocation with
//! permissions and channels, a connected media call, real file types, multipart forms, …),
//! encoded in the targets' formats with `tandem_fuzz::Writer`.
//!
//! Run after changing a target's input format (nightly, like the targets):
//! `cargo +nightly run --manifest-path fuzz/Cargo.toml --example seeds`

use std::path::{Path, PathBuf};

use tandem_fuzz::{media_ops as m, signaling_ops as s, turn_ops as t, Writer};
use tandem_signaling::files::UrlSigner;
use tandem_signaling::{FileId, RoomId};
use tandem_turn::stun_rs::attributes::turn::{LifeTime, RequestedTrasport};
use tandem_turn::stun_rs::methods::{ALLOCATE, BINDING};
use tandem_turn::stun_rs::{
    protocols, MessageClass, MessageEncoderBuilder, StunMessageBuilder, TransactionId,
};

fn corpus(target: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).expect("corpus directory");
    dir
}

fn write(target: &str, name: &str, bytes: &[u8]) {
    std::fs::write(corpus(target).join(name), bytes).expect("seed written");
}

// ---- signaling_parse -----------------------------------------------------------------------

fn signaling_parse() {
    let seeds: [(&str, &str); 12] = [
        ("match_start", "match:start\0{\"interests\":[\"music\",\"Go\",\" chess \"]}"),
        ("match_next", "match:next"),
        ("chat_message", "chat:message\0{\"clientId\":\"c-1\",\"type\":\"text\",\"content\":\" hello\\nworld \"}"),
        ("chat_read", "chat:message:read\0{\"id\":\"00000000000000ff\"}"),
        ("chat_report", "chat:report\0{\"reason\":\"spam\"}"),
        ("typing", "typing:start\0null"),
        ("call_request", "call:request\0{\"video\":true}"),
        ("offer", "webrtc:offer\0{\"sdp\":\"v=0\\r\\no=- 1 2 IN IP4 127.0.0.1\\r\\ns=-\\r\\nt=0 0\\r\\nm=audio 9 UDP/TLS/RTP/SAVPF 111\\r\\n\"}"),
        ("answer", "webrtc:answer\0{\"sdp\":\"v=0\\r\\nm=video 9 UDP/TLS/RTP/SAVPF 96\\r\\n\"}"),
        ("candidate", "webrtc:ice-candidate\0{\"candidate\":\"a=candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host\",\"sdpMid\":\"0\",\"sdpMLineIndex\":0}"),
        ("end_of_candidates", "webrtc:ice-candidate\0{\"candidate\":\"\",\"sdpMid\":null}"),
        ("unknown", "chat:shout\0{\"content\":\"hi\"}"),
    ];
    for (name, seed) in seeds {
        write("signaling_parse", name, seed.as_bytes());
    }
    // A regression: 'İ' lowercases to two characters (wire.rs checks the lowercased tag).
    let longer = format!(
        "match:start\0{{\"interests\":[\"{}\"]}}",
        "\u{130}".repeat(24)
    );
    write(
        "signaling_parse",
        "interest_lowercase_longer",
        longer.as_bytes(),
    );
}

// ---- signaling_core ------------------------------------------------------------------------

/// Opcodes and arguments of `fuzz_targets/signaling_core.rs`. Guests and sockets are picked
/// by their index in creation / connection order.
struct Sig(Writer);

impl Sig {
    fn new(config: u8) -> Sig {
        let mut w = Writer::new();
        w.u8(config);
        Sig(w)
    }
    /// A guest, from client address `client` (0: not counted, else one of three).
    fn create_from(&mut self, name: Option<&str>, client: u8) -> &mut Self {
        self.0
            .u8(s::CREATE)
            .bool(name.is_some())
            .string(name.unwrap_or(""))
            .u8(client);
        self
    }
    fn create(&mut self, name: Option<&str>) -> &mut Self {
        self.create_from(name, 0)
    }
    fn connect(&mut self, guest: u8) -> &mut Self {
        self.0.u8(s::CONNECT).u8(guest);
        self
    }
    fn disconnect(&mut self, conn: u8) -> &mut Self {
        self.0.u8(s::DISCONNECT).u8(conn);
        self
    }
    /// An event by its index in `ClientEvent::NAMES`, without a payload.
    fn bare(&mut self, conn: u8, name: u8) -> &mut Self {
        self.0.u8(s::EVENT).u8(conn).u8(name).u8(s::PAYLOAD_NONE);
        self
    }
    fn json(&mut self, conn: u8, name: u8, json: &str) -> &mut Self {
        self.0
            .u8(s::EVENT)
            .u8(conn)
            .u8(name)
            .u8(s::PAYLOAD_JSON)
            .string(json);
        self
    }
    /// An event with a templated payload; `args` writes the template's fields.
    fn templ(&mut self, conn: u8, name: u8, args: impl FnOnce(&mut Writer)) -> &mut Self {
        self.0
            .u8(s::EVENT)
            .u8(conn)
            .u8(name)
            .u8(s::PAYLOAD_TEMPLATE);
        args(&mut self.0);
        self
    }
    fn message(&mut self, conn: u8, id: &str, text: &str) -> &mut Self {
        self.templ(conn, 5, |w| {
            w.string(id).string(text);
        })
    }
    fn advance(&mut self, ms: u16, scale: u8) -> &mut Self {
        self.0.u8(s::ADVANCE).u16(ms).u8(scale);
        self
    }
    fn media(
        &mut self,
        call: u8,
        guest: u8,
        kind: u8,
        args: impl FnOnce(&mut Writer),
    ) -> &mut Self {
        self.0.u8(s::MEDIA).u8(call).u8(guest).u8(kind);
        args(&mut self.0);
        self
    }
    fn delivered(&mut self, i: u8) -> &mut Self {
        self.0.u8(s::DELIVERED).u8(i);
        self
    }
    fn undelivered(&mut self, i: u8) -> &mut Self {
        self.0.u8(s::UNDELIVERED).u8(i);
        self
    }
    fn timers(&mut self) -> &mut Self {
        self.0.u8(s::RUN_TIMERS);
        self
    }
    /// Two guests with a socket each (sockets 0 and 1), paired.
    fn pair(&mut self) -> &mut Self {
        self.create(Some("alice"))
            .create(None)
            .connect(0)
            .connect(1)
            .bare(0, 0)
            .bare(1, 0)
    }
    fn done(&mut self, name: &str) {
        write("signaling_core", name, &self.0.finish());
    }
}

fn signaling_core() {
    Sig::new(1)
        .pair()
        .message(0, "c1", "hello")
        .delivered(0)
        .templ(1, 6, |w| {
            w.u8(0);
        })
        .bare(0, 7)
        .advance(6000, 0)
        .bare(1, 8)
        .message(1, "c2", "bye")
        .bare(0, 3)
        .timers()
        .done("chat");
    Sig::new(1)
        .pair()
        .templ(0, 9, |w| {
            w.bool(true);
        })
        .bare(1, 10)
        .templ(0, 13, |w| {
            w.string("o=- 1 2 IN IP4 127.0.0.1")
                .string("audio 9 UDP/TLS/RTP/SAVPF 111");
        })
        .media(0, 0, 0, |w| {
            w.string("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n");
        })
        .templ(1, 15, |w| {
            w.string("candidate:1 1 udp 2122260223 192.0.2.1 54321 typ host")
                .bool(true)
                .string("0")
                .bool(true)
                .u16(0);
        })
        .media(0, 0, 4, |_| {})
        .media(0, 1, 4, |_| {})
        .media(0, 1, 1, |w| {
            w.string("v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n");
        })
        .templ(1, 14, |w| {
            w.string("o=- 1 2 IN IP4 127.0.0.1")
                .string("video 9 UDP/TLS/RTP/SAVPF 96");
        })
        .media(0, 0, 6, |_| {})
        .bare(1, 12)
        .done("call");
    Sig::new(1)
        .pair()
        .templ(0, 9, |w| {
            w.bool(false);
        })
        .advance(31_000, 0)
        .templ(1, 9, |w| {
            w.bool(true);
        })
        .bare(0, 11)
        .done("call_timeout");
    Sig::new(1)
        .pair()
        .disconnect(1)
        .message(0, "a", "one")
        .message(0, "b", "two")
        .advance(10_000, 0)
        .connect(1)
        .undelivered(0)
        .disconnect(2)
        .advance(4, 2)
        .timers()
        .done("away");
    Sig::new(2)
        .pair()
        .create_from(Some("carol"), 1)
        .create_from(None, 1)
        .create_from(None, 1)
        .connect(2)
        .connect(2)
        .connect(2)
        .bare(2, 0)
        .bare(0, 7)
        .bare(0, 7)
        .bare(0, 7)
        .bare(0, 7)
        .bare(0, 2)
        .advance(6, 2)
        .timers()
        .done("tight_limits");
    Sig::new(0)
        .pair()
        .json(0, 0, "{\"interests\":[\"A\",\"a\",\"b\"]}")
        .json(1, 5, "{\"clientId\":\"x\",\"content\":\"hi\"}")
        .json(1, 4, "{\"reason\":\"rude\"}")
        .done("json");
    let mut files = Sig::new(1);
    files.pair();
    files
        .0
        .u8(s::POST_FILE)
        .u8(0)
        .bool(false)
        .string("f1")
        .u64(42)
        .string("voice.ogg")
        .u64(1234)
        .string("/api/files/x")
        .string("2030-01-01T00:00:00Z")
        .bool(true)
        .u64(1500);
    files.delivered(0).done("files");
}

// ---- turn_core -----------------------------------------------------------------------------

/// Opcodes and arguments of `fuzz_targets/turn_core.rs`.
struct Turn(Writer);

/// Credentials as `Harness::creds` reads them: user index, grant index, the learned nonce,
/// the configured realm, the right password, MESSAGE-INTEGRITY (or -SHA256).
fn creds(w: &mut Writer, user: u8, grant: u8, sha256: bool) {
    w.u8(user).u8(grant).u8(0).u8(0).u8(0).u8(0).bool(sha256);
}

impl Turn {
    fn new(flags: u8) -> Turn {
        let mut w = Writer::new();
        w.u8(flags);
        Turn(w)
    }
    /// The unauthenticated Allocate (401 with a nonce) then the authenticated one and the
    /// bind: client `c` has an allocation.
    fn allocate(&mut self, c: u8, user: u8, grant: u8, sha256: bool) -> &mut Self {
        self.try_allocate(c, user, grant, sha256);
        self.0.u8(t::BOUND).u8(0).u16(0).u8(0);
        self
    }
    /// The two Allocates without the bind (for one that is refused).
    fn try_allocate(&mut self, c: u8, user: u8, grant: u8, sha256: bool) -> &mut Self {
        self.0.u8(t::ALLOCATE).u8(c).u8(0).u8(0);
        self.0.u8(t::ALLOCATE).u8(c).u8(1);
        creds(&mut self.0, user, grant, sha256);
        self.0.u8(0);
        self
    }
    fn permission(&mut self, c: u8, peers: &[u8]) -> &mut Self {
        self.0.u8(t::PERMISSION).u8(c);
        creds(&mut self.0, 0, 0, false);
        self.0.u8(peers.len() as u8);
        for p in peers {
            self.0.u8(*p);
        }
        self
    }
    fn channel(&mut self, c: u8, channel: u8, peer: u8) -> &mut Self {
        self.0.u8(t::CHANNEL_BIND).u8(c);
        creds(&mut self.0, 0, 0, false);
        self.0.u8(channel).u8(peer);
        self
    }
    fn channel_data(&mut self, c: u8, channel: u8, data: &[u8], pad: u8) -> &mut Self {
        self.0
            .u8(t::CHANNEL_DATA)
            .u8(c)
            .u8(channel)
            .bytes(data)
            .u8(pad);
        self
    }
    fn send(&mut self, c: u8, peer: u8, data: &[u8]) -> &mut Self {
        self.0.u8(t::SEND).u8(c).u8(peer).bytes(data).bool(true);
        self
    }
    fn peer(&mut self, port: u8, peer: u8, data: &[u8]) -> &mut Self {
        self.0.u8(t::PEER).u8(port).u16(0).u8(peer).bytes(data);
        self
    }
    fn refresh(&mut self, c: u8, lifetime: Option<u32>) -> &mut Self {
        self.0.u8(t::REFRESH).u8(c);
        creds(&mut self.0, 0, 0, false);
        match lifetime {
            None => self.0.u8(0),
            Some(0) => self.0.u8(1),
            Some(l) => self.0.u8(2).u32(l),
        };
        self
    }
    fn advance(&mut self, ms: u16, scale: u8) -> &mut Self {
        self.0.u8(t::ADVANCE).u16(ms).u8(scale);
        self
    }
    fn done(&mut self, name: &str) {
        write("turn_core", name, &self.0.finish());
    }
}

fn turn_core() {
    // Peer 0 is tandem's media address (always allowed), 1 a public address, 2 loopback.
    Turn::new(0)
        .allocate(0, 0, 0, false)
        .permission(0, &[0])
        .send(0, 0, b"indication")
        .peer(0, 0, b"data back")
        .channel(0, 0, 0)
        .channel_data(0, 0, b"hello", 3)
        .peer(0, 0, b"fast path")
        .refresh(0, Some(1200))
        .advance(5, 1)
        .refresh(0, Some(0))
        .done("allocate_udp");
    Turn::new(0)
        .allocate(1, 1, 1, true)
        .permission(1, &[0, 1, 2])
        .channel(1, 1, 0)
        .channel_data(1, 1, b"over tcp", 0)
        .advance(10, 2)
        .done("allocate_tcp_sha256");
    let mut dis = Turn::new(16);
    dis.allocate(2, 0, 0, false).permission(2, &[5]);
    dis.0.u8(t::DISCONNECTED).u8(2);
    dis.done("tls_v6_disconnect");
    Turn::new(1 | 2 | 4)
        .allocate(0, 0, 0, false)
        .permission(0, &[1, 2, 3])
        .permission(0, &[4, 6, 7])
        .send(0, 1, &[0u8; 1200])
        .send(0, 1, &[0u8; 1200])
        .peer(0, 1, &[1u8; 1200])
        .done("open_relay_rate");
    Turn::new(8)
        .allocate(0, 0, 0, false)
        .try_allocate(3, 0, 0, false)
        .allocate(1, 1, 0, false)
        .try_allocate(2, 1, 0, false)
        .permission(0, &[0, 1, 5])
        .channel(0, 0, 0)
        .channel(0, 1, 0)
        .channel(0, 2, 0)
        .advance(6, 1)
        .done("small_quotas");
    let mut rev = Turn::new(0);
    rev.allocate(0, 0, 1, false).permission(0, &[0]);
    rev.0.u8(t::REVOKE).u8(0).u8(2);
    rev.advance(3, 1)
        .refresh(0, Some(600))
        .done("revoked_grant");
    let mut raw = Turn::new(32);
    raw.0.u8(t::BINDING).u8(0).bool(true);
    raw.0.u8(t::BINDING).u8(3).bool(false);
    raw.0.u8(t::RAW).u8(0).bytes(&[
        0, 1, 0, 0, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
    ]);
    raw.0
        .u8(t::MUTATED)
        .u8(0)
        .u8(1)
        .u8(0)
        .u8(0)
        .u8(2)
        .u16(3)
        .u8(0xff)
        .u16(30)
        .u8(1)
        .bool(false);
    raw.0.u8(t::RAW).u8(1).bytes(&[0x40, 0, 0, 2, 1, 2, 0, 0]);
    raw.done("binding_and_garbage");
    Turn::new(0)
        .allocate(0, 0, 0, false)
        .permission(0, &[0])
        .advance(61, 2)
        .peer(0, 0, b"after expiry")
        .done("expiry");
}

// ---- turn_framing --------------------------------------------------------------------------

fn stun(method: tandem_turn::stun_rs::MessageMethod, with_attrs: bool) -> Vec<u8> {
    let mut b = StunMessageBuilder::new(method, MessageClass::Request)
        .with_transaction_id(TransactionId::from([7; 12]));
    if with_attrs {
        b = b
            .with_attribute(RequestedTrasport::from(protocols::UDP))
            .with_attribute(LifeTime::new(600));
    }
    let mut buf = vec![0u8; 1024];
    let n = MessageEncoderBuilder::default()
        .build()
        .encode(&mut buf, &b.build())
        .expect("encodes");
    buf.truncate(n);
    buf
}

fn turn_framing() {
    let binding = stun(BINDING, false);
    let allocate = stun(ALLOCATE, true);
    let channel_data = [
        0x40, 0x01, 0x00, 0x05, b'h', b'e', b'l', b'l', b'o', 0, 0, 0,
    ];
    let frame = |cuts: &[u16], parts: &[&[u8]]| {
        let mut w = Writer::new();
        w.u8(cuts.len() as u8);
        for c in cuts {
            w.u16(*c);
        }
        for p in parts {
            w.raw(p);
        }
        w.finish()
    };
    write("turn_framing", "binding", &frame(&[], &[&binding]));
    write(
        "turn_framing",
        "mixed_split",
        &frame(&[3, 10, 21, 1], &[&allocate, &channel_data, &binding]),
    );
    write(
        "turn_framing",
        "channel_data_partial",
        &frame(&[2], &[&channel_data[..7]]),
    );
    write(
        "turn_framing",
        "bad_cookie",
        &frame(&[], &[&[0, 1, 0, 0, 1, 2, 3, 4]]),
    );
    write(
        "turn_framing",
        "too_long_channel",
        &frame(&[1], &[&[0x7f, 0xff, 0xff, 0xff, 1, 2, 3]]),
    );
}

// ---- media_core ----------------------------------------------------------------------------

/// Opcodes and arguments of `fuzz_targets/media_core.rs`. Sides: 0 and 1 are the two clients.
struct Media(Writer);

impl Media {
    fn new(flags: u8) -> Media {
        let mut w = Writer::new();
        w.u8(flags);
        Media(w)
    }
    fn open(&mut self, call: u8) -> &mut Self {
        self.0.u8(m::OPEN).u8(call).bool(true);
        self
    }
    fn offer(&mut self, call: u8, side: u8) -> &mut Self {
        self.0.u8(m::OFFER).u8(call).u8(side).u8(m::SDP_CLIENT);
        self
    }
    fn candidate(&mut self, call: u8, side: u8) -> &mut Self {
        self.0
            .u8(m::CANDIDATE)
            .u8(call)
            .u8(side)
            .u8(0)
            .bool(false)
            .bool(true)
            .u16(0);
        self
    }
    fn advance(&mut self, ms: u16, n: usize) -> &mut Self {
        for _ in 0..n {
            self.0.u8(m::ADVANCE).u16(ms).bool(true);
        }
        self
    }
    /// Open call 1, both clients offer and trickle their candidate.
    fn setup(&mut self) -> &mut Self {
        self.open(1)
            .offer(1, 0)
            .candidate(1, 0)
            .candidate(1, 1)
            .offer(1, 1)
    }
    fn write_media(&mut self, side: u8, video: bool, n: usize) -> &mut Self {
        for i in 0..n {
            let payload = [0x10, 0, 0x9d, 0x01, 0x2a, i as u8, 1, 2, 3, 4];
            self.0.u8(m::WRITE).u8(side).bool(video).bytes(&payload);
            self.0.u8(m::ADVANCE).u16(20).bool(true);
        }
        self
    }
    fn done(&mut self, name: &str) {
        write("media_core", name, &self.0.finish());
    }
}

fn media_core() {
    Media::new(0)
        .setup()
        .advance(10, 40)
        .write_media(0, false, 5)
        .write_media(1, true, 5)
        .done("connected_call");
    let mut restart = Media::new(1);
    restart.setup().advance(10, 40);
    restart.0.u8(m::RESTART).u8(0).bool(true).bool(true);
    restart.offer(1, 0).advance(10, 20);
    restart.0.u8(m::ANSWER).u8(1).u8(0).u8(m::SDP_CLIENT);
    restart.advance(10, 10).done("ice_restart");
    let mut edited = Media::new(0);
    edited.open(1);
    edited
        .0
        .u8(m::OFFER)
        .u8(1)
        .u8(0)
        .u8(m::SDP_EDITED)
        .u8(5)
        .u8(0);
    edited
        .0
        .u8(m::OFFER)
        .u8(1)
        .u8(1)
        .u8(m::SDP_EDITED)
        .u8(9)
        .u8(1)
        .string("a=fingerprint:sha-256 00");
    edited
        .0
        .u8(m::OFFER)
        .u8(1)
        .u8(1)
        .u8(m::SDP_RAW)
        .string("v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\n");
    edited.advance(10, 5).done("edited_offers");
    let mut lossy = Media::new(0);
    lossy.setup();
    for i in 0..40u8 {
        lossy.0.u8(m::ADVANCE).u16(10).bool(false);
        lossy.0.u8(m::DELIVER).bool(i % 2 == 0).u8(8);
        for j in 0..8u8 {
            // Mostly delivered; now and then dropped, corrupted or cut.
            let action = if (i + j) % 7 == 0 { 2 + (i + j) % 3 } else { 0 };
            lossy.0.u8(action).u16(u16::from(j) * 7).u8(0x55);
        }
    }
    lossy.done("lossy_network");
    let mut raw = Media::new(3);
    raw.setup();
    raw.0.u8(m::RAW).u8(2).bool(false).bytes(&[
        0, 1, 0, 8, 0x21, 0x12, 0xa4, 0x42, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0, 6, 0, 3,
        b'a', b':', b'b', 0,
    ]);
    raw.0
        .u8(m::RAW)
        .u8(0)
        .bool(true)
        .bytes(&[0x80, 0x6f, 0, 1, 0, 0, 0, 1, 0, 0, 0, 2, 9, 9]);
    raw.0
        .u8(m::RAW)
        .u8(1)
        .bool(false)
        .bytes(&[22, 254, 253, 0, 0]);
    raw.0.u8(m::CLOSE).u8(1);
    raw.advance(300, 3).done("raw_datagrams");
    Media::new(0)
        .open(1)
        .offer(1, 0)
        .advance(5000, 2)
        .done("offer_timeout");
}

// ---- files_classify ------------------------------------------------------------------------

fn files_classify() {
    let png = {
        let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        v.resize(64, 0);
        v
    };
    let pdf =
        b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\ntrailer\n<<>>\n%%EOF\n".to_vec();
    let ogg = {
        let mut v = b"OggS\0\x02".to_vec();
        v.resize(64, 0);
        v
    };
    let key = b"url-signing-key";
    let (file, room, exp) = (
        0x0123_4567_89ab_cdefu64,
        0xfedc_ba98_7654_3210u64,
        1_700_003_600u64,
    );
    // As the target derives the ids.
    let signer = UrlSigner::new(key);
    let sig = signer.sign(
        FileId::from_raw(u128::from(file) << 64 | u128::from(room)),
        RoomId::from_raw(u128::from(room).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        exp,
    );
    let seed = |declared: Option<&str>, name: &str, sig: &str, bytes: &[u8]| {
        let mut w = Writer::new();
        w.bool(declared.is_some())
            .string(declared.unwrap_or(""))
            .string(name)
            .bytes(key)
            .string(sig)
            .u64(file)
            .u64(room)
            .u64(exp)
            .raw(bytes);
        w.finish()
    };
    let long = format!("{}.png", "a".repeat(150));
    let seeds: [(&str, Vec<u8>); 8] = [
        ("png", seed(Some("image/png"), "photo.png", &sig, &png)),
        (
            "pdf_octet_stream",
            seed(Some("application/octet-stream"), "report.pdf", &sig, &pdf),
        ),
        (
            "ogg_voice",
            seed(Some("audio/ogg; codecs=opus"), "voice note.ogg", "", &ogg),
        ),
        (
            "text",
            seed(
                None,
                "notes.txt",
                &sig.to_uppercase(),
                b"plain text\nline two\t\r\n",
            ),
        ),
        (
            "html_as_text",
            seed(
                Some("text/plain"),
                "x.txt",
                &sig,
                b"<script>alert(1)</script>",
            ),
        ),
        (
            "bidi_name",
            seed(Some("image/png"), "../../evil\u{202e}gnp.exe", &sig, &png),
        ),
        ("long_name", seed(Some("image/png"), &long, &sig, &png)),
        ("mismatch", seed(Some("image/jpeg"), "cat.jpg", &sig, &png)),
    ];
    for (name, bytes) in seeds {
        write("files_classify", name, &bytes);
    }
}

// ---- file_url ------------------------------------------------------------------------------

fn file_url() {
    let signer = UrlSigner::new(b"k");
    let url = signer.url(
        FileId::from_raw(0xabc),
        RoomId::from_raw(0xdef),
        1_700_003_600,
    );
    let (path, query) = url.split_once('?').expect("a query");
    let id = path.trim_start_matches("/api/files/");
    let seeds = [
        ("signed", format!("{id}\0{query}")),
        ("query_only", query.to_owned()),
        ("repeated", format!("{id}\0{query}&sig=00")),
        ("extra_params", format!("{id}\0x=1&&flag&{query}&room")),
        (
            "bad_exp",
            format!("{id}\0room=0000000000000000000000000000000d&exp=-1&sig="),
        ),
        ("empty", String::new()),
    ];
    for (name, seed) in seeds {
        write("file_url", name, seed.as_bytes());
    }
}

// ---- multipart_upload ----------------------------------------------------------------------

fn multipart(boundary: &str, parts: &[(&str, Option<(&str, &str)>, &[u8])]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, file, value) in parts {
        body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
        match file {
            Some((file_name, ct)) => body.extend_from_slice(
                format!(
                    "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file_name}\"\r\nContent-Type: {ct}\r\n\r\n"
                )
                .as_bytes(),
            ),
            None => body.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        body.extend_from_slice(value);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    body
}

fn multipart_upload() {
    let png = {
        let mut v = b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR".to_vec();
        v.resize(200, 7);
        v
    };
    let ogg = {
        let mut v = b"OggS\0\x02".to_vec();
        v.resize(120, 0);
        v
    };
    let b = "XyZzY";
    let seed = |limits: u8, cuts: &[u16], fail: bool, body: &[u8]| {
        let mut w = Writer::new();
        w.u8(limits)
            .u8(3)
            .string(b)
            .bool(true)
            .string(&body.len().to_string());
        w.u8(cuts.len() as u8);
        for c in cuts {
            w.u16(*c);
        }
        w.bool(fail).raw(body);
        w.finish()
    };
    let file = multipart(
        b,
        &[
            ("clientId", None, b"c-42"),
            ("file", Some(("cat.png", "image/png")), &png),
            ("kind", None, b"file"),
        ],
    );
    let voice = multipart(
        b,
        &[
            ("kind", None, b"voice"),
            ("durationMs", None, b"1500"),
            ("file", Some(("voice.ogg", "audio/ogg")), &ogg),
        ],
    );
    let text = multipart(
        b,
        &[("file", Some(("notes.txt", "text/plain")), b"hello there\n")],
    );
    let twice = multipart(
        b,
        &[
            ("file", Some(("a.png", "image/png")), &png),
            ("file", Some(("b.png", "image/png")), &png),
        ],
    );
    let no_file = multipart(b, &[("kind", None, b"file"), ("other", None, b"x")]);
    let seeds: [(&str, Vec<u8>); 8] = [
        ("png_file", seed(0, &[40, 100], false, &file)),
        ("voice_note", seed(0, &[], false, &voice)),
        ("text_file", seed(0, &[1, 1, 1], false, &text)),
        ("twice", seed(0, &[], false, &twice)),
        ("no_file", seed(0, &[], false, &no_file)),
        ("storage_full", seed(1, &[150], false, &file)),
        ("too_large", seed(2, &[], false, &file)),
        ("reset", seed(0, &[60], true, &file[..file.len() / 2])),
    ];
    for (name, bytes) in seeds {
        write("multipart_upload", name, &bytes);
    }
}

fn main() {
    signaling_parse();
    signaling_core();
    turn_core();
    turn_framing();
    media_core();
    files_classify();
    file_url();
    multipart_upload();
}
