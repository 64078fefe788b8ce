//! Rooms and their chat: the two guests of each room, the messages each has not acknowledged
//! yet, the recent messages receipts may name, and who is typing. Ending a chat is closing its
//! room: everything kept for it goes with it. The chat's events (messages, receipts, typing,
//! presence, the end) are emitted from here into the core's [`Outbox`].

use std::collections::{HashMap, VecDeque};

use crate::cluster::Kept;
use crate::ids::{ConnId, MessageId, RoomId, SessionId};
use crate::output::{JournalOp, Outbox, Output, Target};
use crate::wire::{
    ChatMessage, Content, EndReason, Ended, MessageRef, MessageType, Partner, Presence,
    PresenceChange, RoomInfo, RoomRef, Sender, Sent, ServerEvent,
};
use crate::SignalError;

/// Recent messages remembered per room, for receipts.
pub const RECENT_MESSAGES: usize = 256;

struct Recent {
    id: MessageId,
    from: SessionId,
}

struct Room {
    guests: [SessionId; 2],
    /// The last [`RECENT_MESSAGES`] messages, oldest first.
    recent: VecDeque<Recent>,
    /// Per guest (by index in `guests`): partner messages it has not acknowledged, in order:
    /// queued while it was away, or handed out and not acknowledged yet. At most
    /// `away_queue_max`.
    unacked: [VecDeque<ChatMessage>; 2],
    /// Per guest: the generation of its typing indicator, while it is on.
    typing: [Option<u64>; 2],
}

impl Room {
    /// The index of `id` in `guests` (the second for a stranger, as `other` treats it).
    fn side(&self, id: SessionId) -> usize {
        usize::from(self.guests[0] != id)
    }

    fn other(&self, me: SessionId) -> SessionId {
        self.guests[1 - self.side(me)]
    }
}

/// Every open room.
pub(crate) struct Rooms {
    rooms: HashMap<RoomId, Room>,
    /// Partner messages kept per guest until acknowledged; past it posting is refused.
    away_queue_max: usize,
    /// The last typing generation handed out (one sequence for all rooms, so that a stale
    /// typing timer never matches a later indicator of the same guest).
    typing_gen: u64,
    /// (Cluster only.) Every change to what is kept unacknowledged is journaled
    /// ([`Output::Journal`]); the number of the last entry.
    journal: Option<u64>,
}

impl Rooms {
    pub(crate) fn new(away_queue_max: usize, journal: bool) -> Self {
        Self {
            rooms: HashMap::new(),
            away_queue_max,
            typing_gen: 0,
            journal: journal.then_some(0),
        }
    }

    /// Journals `op` for `room` (cluster only).
    fn journal(&self, room: RoomId, op: JournalOp, out: &mut Outbox) {
        if self.journal.is_some() {
            out.push(Output::Journal {
                room,
                op,
                ticket: None,
            });
        }
    }

    /// Journals that `sender`'s `message` is kept for its receiver (cluster only).
    pub(crate) fn journal_keep(
        &mut self,
        sender: SessionId,
        message: &ChatMessage,
        out: &mut Outbox,
    ) {
        let Some(seq) = self.journal.as_mut() else {
            return;
        };
        *seq += 1;
        let kept = Kept {
            sender,
            seq: *seq,
            message: message.clone(),
        };
        self.journal(message.room_id, JournalOp::Keep(kept), out);
    }

    /// Journals that `room`'s chat ended (cluster only).
    pub(crate) fn journal_clear(&self, room: RoomId, out: &mut Outbox) {
        self.journal(room, JournalOp::Clear, out);
    }

    pub(crate) fn contains(&self, room: RoomId) -> bool {
        self.rooms.contains_key(&room)
    }

    /// Opens a room for `guests` (in the order the matchmaker paired them) and tells each who
    /// its partner is (`chat:found`, the first guest first; `names` are the guests').
    pub(crate) fn open(
        &mut self,
        room: RoomId,
        guests: [SessionId; 2],
        [a, b]: [String; 2],
        out: &mut Outbox,
    ) {
        self.rooms.insert(
            room,
            Room {
                guests,
                recent: VecDeque::new(),
                unacked: [VecDeque::new(), VecDeque::new()],
                typing: [None, None],
            },
        );
        for (me, username) in [(guests[0], b), (guests[1], a)] {
            let found = RoomInfo {
                room_id: room,
                partner: Partner { username },
                call: None,
            };
            out.emit(Target::Guest(me), ServerEvent::Found(found));
        }
    }

    /// Opens `room` again on a node that takes it over from a home that died: its two guests,
    /// nothing kept (the dead home's unacknowledged messages went with it), nothing emitted.
    pub(crate) fn restore(&mut self, room: RoomId, guests: [SessionId; 2]) {
        self.rooms.entry(room).or_insert(Room {
            guests,
            recent: VecDeque::new(),
            unacked: [VecDeque::new(), VecDeque::new()],
            typing: [None, None],
        });
    }

    /// Keeps `messages` for `receiver` in `room` (not yet acknowledged), after a takeover: the
    /// copies the sender's node kept of what the dead home had not delivered. Bounded like
    /// any queue of the room.
    pub(crate) fn restore_unacked(
        &mut self,
        room: RoomId,
        receiver: SessionId,
        messages: impl IntoIterator<Item = ChatMessage>,
    ) {
        let max = self.away_queue_max;
        if let Some(r) = self.rooms.get_mut(&room) {
            let side = r.side(receiver);
            let from = r.guests[1 - side];
            for m in messages {
                if r.unacked[side].len() < max && !r.unacked[side].iter().any(|k| k.id == m.id) {
                    // Remembered for receipts too: the receiver may read it here.
                    if !r.recent.iter().any(|k| k.id == m.id) {
                        if r.recent.len() == RECENT_MESSAGES {
                            r.recent.pop_front();
                        }
                        r.recent.push_back(Recent { id: m.id, from });
                    }
                    r.unacked[side].push_back(m);
                }
            }
        }
    }

    /// The partner of `me` in `room`, if the room is open.
    pub(crate) fn partner(&self, room: RoomId, me: SessionId) -> Option<SessionId> {
        self.rooms.get(&room).map(|r| r.other(me))
    }

    /// Closes the room and drops everything kept for it: if it was open, its two guests,
    /// `actor` (who ends it) first.
    pub(crate) fn close(&mut self, room: RoomId, actor: SessionId) -> Option<[SessionId; 2]> {
        self.rooms.remove(&room).map(|r| [actor, r.other(actor)])
    }

    /// Tells `who`'s partner that `who` went away or came back.
    pub(crate) fn tell_presence(
        &self,
        room: RoomId,
        who: SessionId,
        status: Presence,
        out: &mut Outbox,
    ) {
        if let Some(partner) = self.partner(room, who) {
            let change = PresenceChange {
                room_id: room,
                status,
            };
            out.emit(Target::Guest(partner), ServerEvent::Presence(change));
        }
    }

    /// Hands out every message `receiver` has not acknowledged, in order: to all its sockets
    /// (`conn` `None`, it returns), or to its new socket `conn`.
    pub(crate) fn hand_out(
        &self,
        room: RoomId,
        receiver: SessionId,
        conn: Option<ConnId>,
        out: &mut Outbox,
    ) {
        let Some(r) = self.rooms.get(&room) else {
            return;
        };
        for message in r.unacked[r.side(receiver)].iter().cloned() {
            out.push(match conn {
                None => Output::Deliver {
                    to: receiver,
                    message,
                },
                Some(conn) => Output::Redeliver { conn, message },
            });
        }
    }

    /// May one more message be kept for `receiver`? Refused with `partner_away_queue_full`
    /// when it holds `away_queue_max` unacknowledged ones (away or not: a guest whose
    /// connection died unnoticed holds them too).
    pub(crate) fn check_room_for(
        &self,
        room: RoomId,
        receiver: SessionId,
    ) -> Result<(), SignalError> {
        match self.rooms.get(&room) {
            Some(r) if r.unacked[r.side(receiver)].len() >= self.away_queue_max => {
                Err(SignalError::PartnerAwayQueueFull)
            }
            _ => Ok(()),
        }
    }

    /// Posts `message` (client id `client_id`) from `from` into its room (after
    /// [`Rooms::check_room_for`] its partner): `chat:message:sent` to `from`, the message
    /// remembered for receipts and kept for the partner until one of its sockets acknowledges
    /// it, and delivered to it unless it is `away`.
    pub(crate) fn post(
        &mut self,
        from: SessionId,
        client_id: String,
        message: ChatMessage,
        away: bool,
        out: &mut Outbox,
    ) {
        if !self.rooms.contains_key(&message.room_id) {
            return;
        }
        self.journal_keep(from, &message, out);
        let Some(room) = self.rooms.get_mut(&message.room_id) else {
            return;
        };
        if room.recent.len() == RECENT_MESSAGES {
            room.recent.pop_front();
        }
        let id = message.id;
        room.recent.push_back(Recent { id, from });
        let sent = Sent {
            client_id,
            id,
            timestamp: message.timestamp,
        };
        out.emit(Target::Guest(from), ServerEvent::Sent(sent));
        let receiver = 1 - room.side(from);
        if away {
            room.unacked[receiver].push_back(message);
        } else {
            room.unacked[receiver].push_back(message.clone());
            let to = room.guests[receiver];
            out.push(Output::Deliver { to, message });
        }
    }

    /// `reader` read its partner's message `msg`: refused with `unknown_message` unless it is
    /// one of the recent messages from the partner. Reading a message means receiving it and
    /// those before it: the ones still waiting for an ack are no longer kept and their sender
    /// gets `chat:message:delivered` for each, so that `delivered` never comes after `read`;
    /// then `chat:message:read`. Returns how many were delivered so.
    pub(crate) fn read(
        &mut self,
        room: RoomId,
        reader: SessionId,
        msg: MessageId,
        out: &mut Outbox,
    ) -> Result<u64, SignalError> {
        let r = self.rooms.get_mut(&room).ok_or(SignalError::NotInChat)?;
        let partner = r.other(reader);
        if !r
            .recent
            .iter()
            .rev()
            .any(|m| m.id == msg && m.from == partner)
        {
            return Err(SignalError::UnknownMessage);
        }
        let unacked = &mut r.unacked[r.side(reader)];
        let mut delivered = 0;
        let mut acked = Vec::new();
        if let Some(at) = unacked.iter().position(|m| m.id == msg) {
            for m in unacked.drain(..=at) {
                delivered += 1;
                let event = ServerEvent::Delivered(MessageRef { id: m.id });
                out.emit(Target::Guest(partner), event);
                acked.push(m.id);
            }
        }
        let event = ServerEvent::Read(MessageRef { id: msg });
        out.emit(Target::Guest(partner), event);
        for id in acked {
            self.journal(room, JournalOp::Drop(id), out);
        }
        Ok(delivered)
    }

    /// A socket of the receiver of `msg` acknowledged it: it is no longer kept, and its sender
    /// gets `chat:message:delivered`, once. False for a message not kept (or a room not open).
    pub(crate) fn delivered(&mut self, room: RoomId, msg: MessageId, out: &mut Outbox) -> bool {
        let Some(r) = self.rooms.get_mut(&room) else {
            return false;
        };
        for side in 0..2 {
            let unacked = &mut r.unacked[side];
            if let Some(i) = unacked.iter().position(|m| m.id == msg) {
                unacked.remove(i);
                let event = ServerEvent::Delivered(MessageRef { id: msg });
                out.emit(Target::Guest(r.guests[1 - side]), event);
                self.journal(room, JournalOp::Drop(msg), out);
                return true;
            }
        }
        false
    }

    /// `who` started (or goes on) typing: its partner is told, and the indicator's new
    /// generation is returned, for a timer to pass to [`Rooms::is_typing`] later.
    pub(crate) fn start_typing(
        &mut self,
        room: RoomId,
        who: SessionId,
        out: &mut Outbox,
    ) -> Option<u64> {
        let r = self.rooms.get_mut(&room)?;
        self.typing_gen += 1;
        let side = r.side(who);
        r.typing[side] = Some(self.typing_gen);
        let event = ServerEvent::TypingStart(RoomRef { room_id: room });
        out.emit(Target::Guest(r.guests[1 - side]), event);
        Some(self.typing_gen)
    }

    /// Is `who`'s indicator on, and still generation `gen`?
    pub(crate) fn is_typing(&self, room: RoomId, who: SessionId, gen: u64) -> bool {
        self.rooms
            .get(&room)
            .is_some_and(|r| r.typing[r.side(who)] == Some(gen))
    }

    /// Turns `who`'s indicator off; if it was on, its partner is told.
    pub(crate) fn stop_typing(&mut self, room: RoomId, who: SessionId, out: &mut Outbox) {
        let Some(r) = self.rooms.get_mut(&room) else {
            return;
        };
        let side = r.side(who);
        if r.typing[side].take().is_some() {
            let event = ServerEvent::TypingStop(RoomRef { room_id: room });
            out.emit(Target::Guest(r.guests[1 - side]), event);
        }
    }

    /// Open rooms.
    pub(crate) fn len(&self) -> usize {
        self.rooms.len()
    }
}

/// Tells both guests of a closed room that their chat ended and why (`chat:ended` and a
/// system message each, `actor` first; `ids` are the two messages' ids, `timestamp` their
/// time).
pub(crate) fn announce_end(
    room: RoomId,
    [actor, other]: [SessionId; 2],
    reason: EndReason,
    ids: [MessageId; 2],
    timestamp: u64,
    out: &mut Outbox,
) {
    let (mine, theirs) = match reason {
        EndReason::Left => ("You left the chat.", "Stranger has left the chat."),
        EndReason::Skipped => (
            "You skipped to the next stranger.",
            "Stranger has skipped to someone else.",
        ),
        EndReason::Reported => (
            "You reported the stranger. You won't be matched again.",
            "Stranger has ended the chat.",
        ),
        EndReason::Disconnected => (
            "You were disconnected from the chat.",
            "Stranger has disconnected.",
        ),
    };
    for ((id, text), msg_id) in [(actor, mine), (other, theirs)].into_iter().zip(ids) {
        let ended = Ended {
            room_id: room,
            reason,
        };
        out.emit(Target::Guest(id), ServerEvent::Ended(ended));
        let message = ChatMessage {
            id: msg_id,
            room_id: room,
            kind: MessageType::System,
            content: Content::Text(text.to_owned()),
            timestamp,
            from: Sender::System,
        };
        out.emit(Target::Guest(id), ServerEvent::Message(message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ROOM: RoomId = RoomId::from_raw(0xa);
    const A: SessionId = SessionId::from_raw(1);
    const B: SessionId = SessionId::from_raw(2);

    fn drain(out: &mut Outbox) -> Vec<Output> {
        std::iter::from_fn(|| out.pop()).collect()
    }

    fn message(id: u64) -> ChatMessage {
        ChatMessage {
            id: MessageId::from_raw(id),
            room_id: ROOM,
            kind: MessageType::Text,
            content: Content::Text(format!("m{id}")),
            timestamp: 1_000 + id,
            from: Sender::Partner,
        }
    }

    fn emit(to: SessionId, event: ServerEvent) -> Output {
        Output::Emit {
            to: Target::Guest(to),
            event,
        }
    }

    fn delivered_event(to: SessionId, id: u64) -> Output {
        emit(
            to,
            ServerEvent::Delivered(MessageRef {
                id: MessageId::from_raw(id),
            }),
        )
    }

    fn room(max: usize) -> Rooms {
        let mut r = Rooms::new(max, false);
        r.open(ROOM, [A, B], names(), &mut Outbox::default());
        r
    }

    fn names() -> [String; 2] {
        ["Ann".into(), "Bob".into()]
    }

    #[test]
    fn opening_tells_each_who_the_other_is() {
        let mut r = Rooms::new(10, false);
        let mut out = Outbox::default();
        r.open(ROOM, [B, A], names(), &mut out);
        let found = |username: &str| {
            ServerEvent::Found(RoomInfo {
                room_id: ROOM,
                partner: Partner {
                    username: username.into(),
                },
                call: None,
            })
        };
        assert_eq!(
            drain(&mut out),
            [emit(B, found("Bob")), emit(A, found("Ann"))]
        );
    }

    #[test]
    fn partners_and_closing() {
        let mut r = room(10);
        assert!(r.contains(ROOM));
        assert_eq!(r.partner(ROOM, A), Some(B));
        assert_eq!(r.partner(ROOM, B), Some(A));
        assert_eq!(r.partner(RoomId::from_raw(9), A), None);
        assert_eq!(r.len(), 1);
        assert_eq!(r.close(ROOM, B), Some([B, A]));
        assert_eq!(r.close(ROOM, A), None);
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn a_post_is_sent_kept_and_delivered_unless_away() {
        let mut r = room(10);
        let mut out = Outbox::default();
        r.post(A, "c1".into(), message(1), false, &mut out);
        let sent = Sent {
            client_id: "c1".into(),
            id: MessageId::from_raw(1),
            timestamp: 1_001,
        };
        assert_eq!(
            drain(&mut out),
            [
                emit(A, ServerEvent::Sent(sent)),
                Output::Deliver {
                    to: B,
                    message: message(1)
                }
            ]
        );
        r.post(A, "c2".into(), message(2), true, &mut out);
        assert_eq!(drain(&mut out).len(), 1, "only the sent receipt while away");
        // Back: both, in order, to all sockets; a new socket gets them again.
        r.hand_out(ROOM, B, None, &mut out);
        let to_all: Vec<Output> = [1, 2]
            .map(|id| Output::Deliver {
                to: B,
                message: message(id),
            })
            .into();
        assert_eq!(drain(&mut out), to_all);
        r.hand_out(ROOM, B, Some(ConnId(7)), &mut out);
        assert!(matches!(
            drain(&mut out).as_slice(),
            [
                Output::Redeliver {
                    conn: ConnId(7),
                    ..
                },
                Output::Redeliver { .. }
            ]
        ));
        // The sender holds nothing of its own.
        r.hand_out(ROOM, A, None, &mut out);
        assert!(drain(&mut out).is_empty());
    }

    #[test]
    fn the_partner_holds_at_most_the_limit() {
        let mut r = room(2);
        let mut out = Outbox::default();
        for id in 1..=2 {
            assert_eq!(r.check_room_for(ROOM, B), Ok(()));
            r.post(A, "c".into(), message(id), true, &mut out);
        }
        assert_eq!(
            r.check_room_for(ROOM, B),
            Err(SignalError::PartnerAwayQueueFull)
        );
        assert_eq!(r.check_room_for(ROOM, A), Ok(()));
        assert!(r.delivered(ROOM, MessageId::from_raw(1), &mut out));
        assert_eq!(r.check_room_for(ROOM, B), Ok(()));
    }

    #[test]
    fn an_ack_delivers_once_to_the_sender() {
        let mut r = room(10);
        let mut out = Outbox::default();
        r.post(B, "c".into(), message(5), false, &mut out);
        drain(&mut out);
        assert!(r.delivered(ROOM, MessageId::from_raw(5), &mut out));
        assert_eq!(drain(&mut out), [delivered_event(B, 5)]);
        assert!(!r.delivered(ROOM, MessageId::from_raw(5), &mut out));
        assert!(!r.delivered(RoomId::from_raw(9), MessageId::from_raw(5), &mut out));
        assert!(drain(&mut out).is_empty());
    }

    #[test]
    fn reading_delivers_what_was_not_acked_up_to_it() {
        let mut r = room(10);
        let mut out = Outbox::default();
        for id in 1..=3 {
            r.post(A, "c".into(), message(id), true, &mut out);
        }
        r.post(B, "c".into(), message(4), true, &mut out);
        drain(&mut out);
        let read = |id| {
            ServerEvent::Read(MessageRef {
                id: MessageId::from_raw(id),
            })
        };
        // Only the partner's recent messages can be read.
        for (reader, id) in [(B, 4), (B, 99), (A, 1)] {
            assert_eq!(
                r.read(ROOM, reader, MessageId::from_raw(id), &mut out),
                Err(SignalError::UnknownMessage)
            );
        }
        assert_eq!(r.read(ROOM, B, MessageId::from_raw(2), &mut out), Ok(2));
        assert_eq!(
            drain(&mut out),
            [
                delivered_event(A, 1),
                delivered_event(A, 2),
                emit(A, read(2))
            ]
        );
        // Read again: nothing left to deliver.
        assert_eq!(r.read(ROOM, B, MessageId::from_raw(2), &mut out), Ok(0));
        assert_eq!(drain(&mut out), [emit(A, read(2))]);
        assert!(r.delivered(ROOM, MessageId::from_raw(3), &mut out));
    }

    #[test]
    fn only_recent_messages_are_remembered() {
        let mut r = room(usize::MAX);
        let mut out = Outbox::default();
        for id in 0..=RECENT_MESSAGES as u64 {
            r.post(A, "c".into(), message(id), false, &mut out);
        }
        assert_eq!(
            r.read(ROOM, B, MessageId::from_raw(0), &mut out),
            Err(SignalError::UnknownMessage)
        );
        assert!(r.read(ROOM, B, MessageId::from_raw(1), &mut out).is_ok());
    }

    #[test]
    fn typing_generations_and_stops() {
        let mut r = room(10);
        let other = RoomId::from_raw(0xb);
        let guests = [SessionId::from_raw(3), SessionId::from_raw(4)];
        r.open(other, guests, names(), &mut Outbox::default());
        let mut out = Outbox::default();
        let start = emit(B, ServerEvent::TypingStart(RoomRef { room_id: ROOM }));
        let stop = emit(B, ServerEvent::TypingStop(RoomRef { room_id: ROOM }));
        let first = r.start_typing(ROOM, A, &mut out).unwrap();
        assert_eq!(drain(&mut out), [start]);
        assert!(r.is_typing(ROOM, A, first));
        assert!(!r.is_typing(ROOM, B, first));
        // Generations are one sequence across rooms.
        let elsewhere = r
            .start_typing(other, SessionId::from_raw(3), &mut out)
            .unwrap();
        let second = r.start_typing(ROOM, A, &mut out).unwrap();
        assert!(first < elsewhere && elsewhere < second);
        assert!(!r.is_typing(ROOM, A, first) && r.is_typing(ROOM, A, second));
        drain(&mut out);
        r.stop_typing(ROOM, A, &mut out);
        r.stop_typing(ROOM, A, &mut out);
        assert_eq!(drain(&mut out), [stop]);
        assert!(!r.is_typing(ROOM, A, second));
        assert_eq!(r.start_typing(RoomId::from_raw(9), A, &mut out), None);
    }

    #[test]
    fn presence_goes_to_the_partner() {
        let r = room(10);
        let mut out = Outbox::default();
        r.tell_presence(ROOM, B, Presence::Away, &mut out);
        let change = PresenceChange {
            room_id: ROOM,
            status: Presence::Away,
        };
        assert_eq!(drain(&mut out), [emit(A, ServerEvent::Presence(change))]);
    }

    #[test]
    fn the_end_is_announced_to_both_actor_first() {
        let mut out = Outbox::default();
        let ids = [MessageId::from_raw(7), MessageId::from_raw(8)];
        announce_end(ROOM, [B, A], EndReason::Reported, ids, 5, &mut out);
        let outs = drain(&mut out);
        assert_eq!(outs.len(), 4);
        let ended = ServerEvent::Ended(Ended {
            room_id: ROOM,
            reason: EndReason::Reported,
        });
        assert_eq!(outs[0], emit(B, ended.clone()));
        assert_eq!(outs[2], emit(A, ended));
        let Output::Emit {
            event: ServerEvent::Message(m),
            ..
        } = &outs[3]
        else {
            panic!("a system message");
        };
        assert_eq!(
            (m.id, m.kind, m.from, m.timestamp),
            (ids[1], MessageType::System, Sender::System, 5)
        );
        assert_eq!(
            m.content,
            Content::Text("Stranger has ended the chat.".into())
        );
    }
}
