//! What cores of a cluster say to each other ([`ClusterMsg`], over the shell's bus as opaque
//! bytes) and to the cluster's one matchmaker ([`MatchRequest`] out, [`MatchAnswer`] in).
//!
//! A room has one owner, its **home**: the core whose matchmaker answer paired the two guests.
//! A guest whose sockets are on another node is, for the home core, a guest with a *remote
//! connection* (one per node): its node forwards its client events ([`ClusterMsg::Event`]) and
//! the home sends back what it emits to it ([`ClusterMsg::Emit`]). See `docs/cluster.md`.

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::ids::NodeId;
use crate::ids::{CallId, ConnId, MessageId, RoomId, SessionId};
use crate::SignalError;

/// The first byte of every encoded [`ClusterMsg`]; a node refuses other versions.
pub const VERSION: u8 = 1;

/// The largest encoded message [`ClusterMsg::decode`] accepts (the bus's own cap).
pub const MAX_MSG_BYTES: usize = 1 << 20;

/// The answer to a forwarded event, as the client's ack will carry it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckResult {
    /// The ack's JSON (`{ ok: true, … }`).
    Ok(Value),
    /// Refused with this wire code.
    Err(String),
    /// `match:next`: the home ended the chat; the guest's own node starts the search with these
    /// interests (the matchmaker request is the guest's node's to make) and acks it.
    Next(Vec<String>),
}

/// One node-to-node message. Every one names its sender in the bus envelope, not here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ClusterMsg {
    /// Guest's node → home: socket `conn` of `sid` connected here (the home answers as for a
    /// local socket: `connection:established`, presence, messages not yet acknowledged).
    Attach { sid: SessionId, conn: ConnId },
    /// Guest's node → home: the guest's last socket on this node closed.
    Detach { sid: SessionId, conn: ConnId },
    /// Guest's node → home: a client event of socket `conn`; answered by [`ClusterMsg::Ack`]
    /// with the same `req`. `name` and `payload` are as the client sent them (the home parses).
    Event {
        sid: SessionId,
        conn: ConnId,
        req: u64,
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        payload: Option<Value>,
    },
    /// Home → guest's node: the ack of [`ClusterMsg::Event`] `req`.
    Ack { req: u64, result: AckResult },
    /// Home → guest's node: a server event for the guest's sockets on that node (one socket
    /// when `conn` is set). With `ack`, it is a partner message that socket must acknowledge
    /// (then the node sends [`ClusterMsg::Delivered`]).
    Emit {
        sid: SessionId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conn: Option<ConnId>,
        name: String,
        payload: Value,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ack: Option<(RoomId, MessageId)>,
    },
    /// Guest's node → home: a socket acknowledged message `msg` of `room`.
    Delivered { room: RoomId, msg: MessageId },
    /// Home → the partner's node: `sid` (a guest of that node) was paired with `partner`
    /// (named `partner_name`) in `room`, whose home is the sender.
    Paired {
        sid: SessionId,
        partner: SessionId,
        partner_name: String,
        room: RoomId,
    },
    /// Home → guest's node: `sid`'s chat `room` ended (its end was emitted before); the
    /// session is that node's again.
    Released { sid: SessionId, room: RoomId },
    /// Home → guest's node: `sid`'s call in its chat `room` (homed at the sender) is `call`
    /// (ringing or accepted; its media terminate at the sender's media server), or (`None`)
    /// it has none any more. Sent before the events that start or end the call, to every node
    /// the guest has a socket on (or had, while the call lasts), so that the guest's node
    /// answers `/api/ice-servers` for it and revokes what it handed out when the call ends.
    CallState {
        sid: SessionId,
        room: RoomId,
        call: Option<CallId>,
    },
    /// Any node → the seeker's node: the cluster's matchmaker paired `seeker` (a guest of the
    /// receiving node) with `partner` of `partner_node`, and the node whose request formed the
    /// pair holds neither (a cooldown that ended, say): the receiver takes it as its own
    /// [`MatchAnswer::Paired`].
    Matched {
        seeker: SessionId,
        partner: SessionId,
        partner_name: String,
        partner_node: NodeId,
    },
    /// The uploading node → home: guest `sid` shared a file (stored on the sender) in `room`;
    /// answered by [`ClusterMsg::Ack`] with `req` (`{ id, timestamp }` of the message).
    PostFile {
        sid: SessionId,
        req: u64,
        room: RoomId,
        client_id: String,
        file: Box<crate::files::FileInfo>,
    },
    /// Home → a node that stored files of `room`: the chat ended, its files go.
    RoomClosed { room: RoomId },
    /// The partner's node → home: `sid` was no longer searching when its [`ClusterMsg::Paired`]
    /// for `room` arrived (it cancelled, left or went): the home ends that chat at once (its
    /// other guest hears the stranger disconnected) instead of after a grace period.
    Declined { sid: SessionId, room: RoomId },
    /// The seeker's node → the partner's node: the matchmaker paired `sid` (a guest of the
    /// receiver, taken out of the queue) with a seeker that stopped searching meanwhile: queue
    /// it again if it still searches.
    Requeue { sid: SessionId },
    /// A node that lost the claim of `room` → the winner: the messages its guest `sender` sent
    /// there that the dead home had not delivered (its node's copies): kept for the partner.
    Restore {
        room: RoomId,
        sender: SessionId,
        messages: Vec<crate::wire::ChatMessage>,
    },
    /// A draining node → every node: it is leaving.
    Shutdown,
}

impl ClusterMsg {
    /// The bytes for the bus: [`VERSION`], then the message as JSON.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Parses bytes from the bus; anything malformed, too large or of another version is
    /// refused with `invalid_payload`. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Self, SignalError> {
        decode_versioned(bytes)
    }

    /// The session this message is about, if one.
    pub fn session(&self) -> Option<SessionId> {
        match self {
            Self::Attach { sid, .. }
            | Self::Detach { sid, .. }
            | Self::Event { sid, .. }
            | Self::Emit { sid, .. }
            | Self::Paired { sid, .. }
            | Self::Released { sid, .. }
            | Self::PostFile { sid, .. }
            | Self::CallState { sid, .. }
            | Self::Requeue { sid }
            | Self::Declined { sid, .. }
            | Self::Restore { sender: sid, .. } => Some(*sid),
            Self::Matched { seeker, .. } => Some(*seeker),
            Self::Ack { .. }
            | Self::Delivered { .. }
            | Self::RoomClosed { .. }
            | Self::Shutdown => None,
        }
    }
}

/// What a clustered core asks of the cluster's matchmaker (`src/cluster/matchmaker.rs`); the
/// shell runs it and hands the pairs it forms to [`crate::Core::handle_match`] of the seeker's
/// node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchRequest {
    /// Queue `sid` (or pair it at once). `username` travels with the entry so that a home can
    /// name this guest to its partner.
    Enqueue {
        sid: SessionId,
        username: String,
        interests: Vec<String>,
        present: bool,
    },
    Cancel {
        sid: SessionId,
    },
    /// The guest went away (`true`) or came back; back may pair it at once.
    Away {
        sid: SessionId,
        away: bool,
    },
    /// A chat between `a` and `b` ended: they may not be paired again for `ttl` (`blocked`:
    /// a report, for the token lifetime).
    RecordEnd {
        a: SessionId,
        b: SessionId,
        blocked: bool,
        ttl: std::time::Duration,
    },
    /// The cooldown this core recorded for `a` and `b` is over: pair whichever waits.
    CooldownOver {
        a: SessionId,
        b: SessionId,
    },
    /// The session's shared record: `sid`'s chat is `room` homed at this node (`None`: it has
    /// no chat any more). A node that gets a socket of a guest it does not hold reads it
    /// ([`crate::Core::adopt`]) to find the chat's home.
    Home {
        sid: SessionId,
        room: Option<RoomId>,
        /// The partner in that chat and its name (to take the room over if its home dies).
        partner: Option<(SessionId, String)>,
        ttl: std::time::Duration,
    },
    /// The session record: `sid`'s call now (`None`: none), for a node that adopts the guest
    /// mid-call (an HTTP request of it there, `/api/ice-servers`).
    CallRecord {
        sid: SessionId,
        call: Option<crate::ids::CallId>,
    },
    /// The home of `room` (a chat of a guest of this node) is gone: claim the room for this
    /// node, once for the cluster (the first claim wins). Answered through
    /// [`crate::Core::handle_claim`] with the winner.
    Claim {
        room: RoomId,
    },
    /// `sid` (made here) had no socket here by its connect deadline: its shared record goes
    /// unless a socket of it connected on some node.
    Reap {
        sid: SessionId,
    },
    /// `sid`'s session reached its expiry here: how long does its shared record (refreshed on
    /// any node) still live? Answered through [`crate::Core::handle_session_ttl`].
    Expiring {
        sid: SessionId,
    },
    /// Redis lost its data ([`crate::Core::handle_records_lost`]): write `sid`'s record again
    /// from what this node holds, merged with what other nodes write (the later expiry,
    /// connected if any says so; what this node does not know is left as it is).
    Restore {
        sid: SessionId,
        /// The session's expiry here, Unix ms.
        expires_ms: u64,
        /// A socket of it connected here.
        connected: bool,
        /// Its chat as this node knows it: the home, the room, the partner and its name.
        chat: Option<RecordChat>,
        /// Its call, from the chat's home only (`Some(None)`: none); `None`: not known here.
        call: Option<Option<crate::ids::CallId>>,
    },
}

/// One journal entry: a partner message `sender` posted that its receiver has not
/// acknowledged yet, kept in Redis by the chat's home (see [`crate::JournalOp`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Kept {
    pub sender: SessionId,
    /// The home's order of posting (messages of one millisecond keep their order).
    pub seq: u64,
    pub message: crate::wire::ChatMessage,
}

impl Kept {
    /// The entry's bytes: [`VERSION`], then JSON.
    pub fn encode(&self) -> Vec<u8> {
        encode_versioned(self)
    }

    /// Parses an entry read back from Redis; anything else is refused with `invalid_payload`.
    pub fn decode(bytes: &[u8]) -> Result<Self, SignalError> {
        decode_versioned(bytes)
    }
}

/// [`VERSION`], then `value` as JSON.
fn encode_versioned(value: &impl Serialize) -> Vec<u8> {
    let mut out = vec![VERSION];
    // Serializing these types cannot fail (string keys only, no custom errors).
    if serde_json::to_writer(&mut out, value).is_err() {
        out.truncate(1);
    }
    out
}

/// What [`encode_versioned`] made; anything malformed, too large or of another version is
/// refused with `invalid_payload`. Never panics.
fn decode_versioned<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, SignalError> {
    match bytes.split_first() {
        Some((&VERSION, body)) if bytes.len() <= MAX_MSG_BYTES => {
            serde_json::from_slice(body).map_err(|_| SignalError::InvalidPayload)
        }
        _ => Err(SignalError::InvalidPayload),
    }
}

/// A guest's chat as a session record keeps it: its home, the room, the partner and its name.
pub type RecordChat = (NodeId, RoomId, Option<(SessionId, String)>);

/// What a guest's shared record says about its chat (see [`crate::Core::adopt`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordHome {
    pub node: NodeId,
    pub room: RoomId,
    /// The partner and its name, when the record has them.
    pub partner: Option<(SessionId, String)>,
    /// `node` is in the registry (else the room is claimed for the adopting node).
    pub alive: bool,
    /// The guest's call there (ringing or accepted), if any.
    pub call: Option<crate::ids::CallId>,
}

/// An answer of the cluster's matchmaker, for the core of the seeker's node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchAnswer {
    /// `seeker` (a guest of this core) was paired with `partner`, a guest of `partner_node`
    /// (maybe this one): this core becomes the room's home.
    Paired {
        seeker: SessionId,
        partner: SessionId,
        partner_name: String,
        partner_node: NodeId,
    },
    /// The enqueue of `sid` failed (Redis lost, queue full): it is told and is online again.
    Refused { sid: SessionId, error: SignalError },
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn samples() -> Vec<ClusterMsg> {
        let sid = SessionId::from_raw(7);
        let room = RoomId::from_raw(9);
        vec![
            ClusterMsg::Attach {
                sid,
                conn: ConnId(3),
            },
            ClusterMsg::Event {
                sid,
                conn: ConnId(3),
                req: 1,
                name: "chat:message".into(),
                payload: Some(serde_json::json!({"clientId": "c", "content": "hi"})),
            },
            ClusterMsg::Ack {
                req: 1,
                result: AckResult::Err("not_in_chat".into()),
            },
            ClusterMsg::Emit {
                sid,
                conn: None,
                name: "chat:message".into(),
                payload: serde_json::json!({"id": "x"}),
                ack: Some((room, MessageId::from_raw(5))),
            },
            ClusterMsg::Paired {
                sid,
                partner: SessionId::from_raw(8),
                partner_name: "b".into(),
                room,
            },
            ClusterMsg::Matched {
                seeker: sid,
                partner: SessionId::from_raw(8),
                partner_name: "b".into(),
                partner_node: NodeId::from_raw(3),
            },
            ClusterMsg::CallState {
                sid,
                room,
                call: Some(CallId(u64::MAX - 1)),
            },
            ClusterMsg::CallState {
                sid,
                room,
                call: None,
            },
            ClusterMsg::Shutdown,
        ]
    }

    #[test]
    fn round_trips_and_refuses_other_versions() {
        for m in samples() {
            let bytes = m.encode();
            assert_eq!(ClusterMsg::decode(&bytes), Ok(m));
            let mut other = bytes.clone();
            other[0] = VERSION + 1;
            assert!(ClusterMsg::decode(&other).is_err());
        }
        assert!(ClusterMsg::decode(&[]).is_err());
    }

    proptest! {
        #[test]
        fn hostile_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = ClusterMsg::decode(&bytes);
        }

        #[test]
        fn mutated_messages_never_panic(i in any::<usize>(), at in any::<usize>(), b in any::<u8>()) {
            let samples = samples();
            let mut bytes = samples[i % samples.len()].encode();
            let at = at % bytes.len();
            bytes[at] = b;
            let _ = ClusterMsg::decode(&bytes);
            bytes.truncate(at);
            let _ = ClusterMsg::decode(&bytes);
        }
    }
}
