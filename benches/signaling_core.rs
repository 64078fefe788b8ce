//! Hot paths of the sans-I/O signaling core, on a pre-built state of 1,000 paired guests
//! (500 chats). Every benchmark reports the time of one operation, outputs drained; set-up and
//! upkeep (time advancing, due timers, resetting chats) run outside the measured time.
//!
//! `baseline/serialize_chat_message` is `serde_json::to_string` of one `chat:message` payload, so
//! the other numbers can be read as a ratio to it.
//!
//! Run: `cargo bench --bench signaling_core` (short: `-- --warm-up-time 1 --measurement-time 2`).

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tandem_signaling::wire::{ChatMessage, GuestState, MessageType, Sender};
use tandem_signaling::{
    Ack, ClientEvent, ConnId, Core, CoreConfig, MessageId, Output, RoomId, ServerEvent, SessionId,
};

/// Paired guests in the pre-built state.
const PAIRED: usize = 1_000;
/// Idle guests used by the match benchmark.
const IDLE: usize = 64;
/// Operations measured between two upkeep pauses.
const CHUNK: u64 = 512;
/// Fake time between two operations: each guest acts about every half second, well inside its
/// rate limits, and at most a few thousand typing timers are pending at once.
const STEP: Duration = Duration::from_millis(1);

struct Guest {
    conn: ConnId,
}

struct Fixture {
    core: Core,
    now: Instant,
    /// `paired[2k]` and `paired[2k + 1]` share `rooms[k]`.
    paired: Vec<Guest>,
    rooms: Vec<RoomId>,
    idle: Vec<Guest>,
    next: usize,
    message: ClientEvent,
    /// Messages handed out and not yet acknowledged: the core keeps them until an ack, at most
    /// `away_queue_max` per receiver, so upkeep acknowledges them.
    unacked: Vec<(RoomId, MessageId)>,
}

impl Fixture {
    fn new() -> Self {
        let cfg = CoreConfig {
            // The benchmark runs hours of fake time: nothing may expire, no limit may bite.
            token_ttl: Duration::from_secs(100 * 365 * 24 * 3600),
            repair_cooldown: Duration::ZERO,
            chat_messages_per_sec: 1_000,
            match_per_sec: 1_000,
            match_burst: 1_000,
            typing_per_sec: 1_000,
            events_per_sec: 1_000,
            ..CoreConfig::default()
        };
        let t0 = Instant::now();
        let mut fx = Self {
            core: Core::new(cfg, [7u8; 32], t0, 1_700_000_000_000),
            now: t0,
            paired: Vec::with_capacity(PAIRED),
            rooms: Vec::with_capacity(PAIRED / 2),
            idle: Vec::with_capacity(IDLE),
            next: 0,
            unacked: Vec::with_capacity(CHUNK as usize),
            message: ClientEvent::ChatMessage {
                client_id: "c-42".into(),
                content: "hello there, how are you?".into(),
            },
        };
        let mut conn = 0;
        let mut guest = |core: &mut Core, now: Instant| -> Guest {
            let id: SessionId = core
                .create_guest(None, now)
                .expect("room for guests")
                .session_id;
            conn += 1;
            core.connect(id, ConnId(conn), now).expect("connect");
            Guest { conn: ConnId(conn) }
        };
        for _ in 0..PAIRED / 2 {
            let a = guest(&mut fx.core, fx.now);
            let b = guest(&mut fx.core, fx.now);
            fx.core
                .handle_event(
                    a.conn,
                    ClientEvent::MatchStart { interests: vec![] },
                    fx.now,
                )
                .unwrap();
            fx.core
                .handle_event(
                    b.conn,
                    ClientEvent::MatchStart { interests: vec![] },
                    fx.now,
                )
                .unwrap();
            fx.paired.push(a);
            fx.paired.push(b);
        }
        for _ in 0..IDLE {
            let g = guest(&mut fx.core, fx.now);
            fx.idle.push(g);
        }
        // Learn each room's id from the match:found events.
        while let Some(out) = fx.core.poll_output() {
            if let Output::Emit {
                event: ServerEvent::Found(r),
                ..
            } = out
            {
                if fx.rooms.last() != Some(&r.room_id) {
                    fx.rooms.push(r.room_id);
                }
            }
        }
        assert_eq!(fx.rooms.len(), PAIRED / 2);
        assert_eq!(fx.core.stats(fx.now).connected_users, PAIRED as u64);
        fx.upkeep();
        fx
    }

    fn drain(&mut self) {
        while let Some(out) = self.core.poll_output() {
            if let Output::Deliver { message, .. } = &out {
                self.unacked.push((message.room_id, message.id));
            }
            black_box(out);
        }
    }

    /// Runs due timers (typing expiries, unblocks, stats), acknowledges what was delivered, and
    /// drops the outputs.
    fn upkeep(&mut self) {
        self.core.handle_timeout(self.now);
        self.drain();
        for (room, id) in std::mem::take(&mut self.unacked) {
            self.core.handle_delivered(room, id, self.now);
        }
        self.drain();
    }

    fn next_paired(&mut self) -> usize {
        let i = self.next;
        self.next = (self.next + 1) % PAIRED;
        self.now += STEP;
        i
    }

    /// Measures `iters` operations in chunks, with `prep` (untimed) before and upkeep after each.
    fn measure(
        &mut self,
        iters: u64,
        mut prep: impl FnMut(&mut Self, u64) -> Vec<(RoomId, MessageId)>,
        mut op: impl FnMut(&mut Self, u64, &[(RoomId, MessageId)]),
    ) -> Duration {
        let mut total = Duration::ZERO;
        let mut done = 0;
        while done < iters {
            let n = CHUNK.min(iters - done);
            let input = prep(self, n);
            let start = Instant::now();
            for k in 0..n {
                op(self, k, &input);
            }
            total += start.elapsed();
            done += n;
            self.upkeep();
        }
        total
    }
}

fn no_prep(_: &mut Fixture, _: u64) -> Vec<(RoomId, MessageId)> {
    Vec::new()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("signaling_core");

    let message = ServerEvent::Message(ChatMessage {
        id: MessageId::from_raw(0x1234_5678_9abc_def0),
        room_id: RoomId::from_raw(0x0123_4567_89ab_cdef_0123_4567_89ab_cdef),
        kind: MessageType::Text,
        content: "hello there, how are you?".into(),
        timestamp: 1_700_000_123_456,
        from: Sender::Partner,
    });
    g.bench_function("baseline/serialize_chat_message", |b| {
        b.iter(|| serde_json::to_string(black_box(&message)).unwrap())
    });

    let mut fx = Fixture::new();
    g.bench_function("chat_message_relay", |b| {
        b.iter_custom(|iters| {
            fx.measure(iters, no_prep, |fx, _, _| {
                let i = fx.next_paired();
                let ev = fx.message.clone();
                let ack = fx.core.handle_event(fx.paired[i].conn, ev, fx.now);
                black_box(ack.is_ok());
                fx.drain();
            })
        })
    });

    let mut fx = Fixture::new();
    g.bench_function("delivered_receipt", |b| {
        b.iter_custom(|iters| {
            fx.measure(
                iters,
                |fx, n| {
                    // One fresh message per measured receipt (untimed).
                    (0..n)
                        .map(|_| {
                            let i = fx.next_paired();
                            let id = match fx.core.handle_event(
                                fx.paired[i].conn,
                                fx.message.clone(),
                                fx.now,
                            ) {
                                Ok(Ack::Sent { id, .. }) => id,
                                other => panic!("message refused: {other:?}"),
                            };
                            fx.drain();
                            (fx.rooms[i / 2], id)
                        })
                        .collect()
                },
                |fx, k, input| {
                    let (room, id) = input[k as usize];
                    fx.core.handle_delivered(room, id, fx.now);
                    fx.drain();
                },
            )
        })
    });

    let mut fx = Fixture::new();
    g.bench_function("typing_start", |b| {
        b.iter_custom(|iters| {
            fx.measure(iters, no_prep, |fx, _, _| {
                let i = fx.next_paired();
                let ack = fx
                    .core
                    .handle_event(fx.paired[i].conn, ClientEvent::TypingStart, fx.now);
                black_box(ack.is_ok());
                fx.drain();
            })
        })
    });

    let mut fx = Fixture::new();
    let mut pair = 0usize;
    g.bench_function("match_two_guests", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let a = (2 * pair) % IDLE;
                let b = a + 1;
                pair += 1;
                fx.now += STEP;
                let (ca, cb) = (fx.idle[a].conn, fx.idle[b].conn);
                let start = Instant::now();
                let ra =
                    fx.core
                        .handle_event(ca, ClientEvent::MatchStart { interests: vec![] }, fx.now);
                let rb =
                    fx.core
                        .handle_event(cb, ClientEvent::MatchStart { interests: vec![] }, fx.now);
                fx.drain();
                total += start.elapsed();
                assert_eq!(ra, Ok(Ack::State(GuestState::Searching)));
                assert_eq!(rb, Ok(Ack::State(GuestState::InChat)));
                // Reset (untimed): leave the chat; the zero cooldown unblocks at the next upkeep.
                fx.core
                    .handle_event(ca, ClientEvent::ChatLeave, fx.now)
                    .unwrap();
                fx.upkeep();
            }
            total
        })
    });

    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
