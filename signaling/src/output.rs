//! What the core asks the shell to do ([`Output`]), and the queue the shell drains.

use std::collections::VecDeque;
use std::time::Duration;

use serde_json::Value;

use crate::call::MediaCommand;
use crate::cluster::{ClusterMsg, MatchRequest, NodeId};
use crate::ids::{CallId, ConnId, MessageId, RoomId, SessionId};
use crate::wire::{ChatMessage, ServerEvent};
use crate::SignalError;

/// Where an emitted event goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every socket of one guest.
    Guest(SessionId),
    /// One socket.
    Conn(ConnId),
    /// Every connected socket.
    All,
}

/// Why the core asks the shell to close a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CloseReason {
    /// Sustained rate-limit refusals.
    Flood,
    /// The session expired.
    SessionExpired,
}

/// An effect for the shell to carry out, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    Emit {
        to: Target,
        event: ServerEvent,
    },
    /// A partner message for every socket of `to`, each asked for an ack: on an ack call
    /// [`crate::Core::handle_delivered`]. Until then the core keeps the message and hands it out
    /// again (same id) to each new socket of `to` ([`Output::Redeliver`]), or to all of them
    /// when `to` returns from being away.
    Deliver {
        to: SessionId,
        message: ChatMessage,
    },
    /// A partner message not yet acknowledged, for one newly connected socket of its receiver
    /// (whose other sockets already got it); ack handling as for [`Output::Deliver`].
    Redeliver {
        conn: ConnId,
        message: ChatMessage,
    },
    Close {
        conn: ConnId,
        reason: CloseReason,
    },
    /// A command for the media server; results come back through
    /// [`crate::Core::handle_media`].
    Media(MediaCommand),
    /// A call's setup time: from the accept until both sides' media first connected. Once per
    /// call, for a histogram.
    CallSetup(Duration),
    /// A guest of this core was paired this long after it started searching (for the time to
    /// match histogram).
    MatchWait(Duration),
    /// A chat ended: everything kept for it outside the core (its shared files) goes.
    RoomClosed(RoomId),
    /// A call ended (ringing or accepted, for any reason): what was handed out for it (TURN
    /// credentials) stops working.
    CallEnded(CallId),
    /// (Cluster only.) A message for another node's core, over the bus.
    Bus {
        to: NodeId,
        msg: ClusterMsg,
    },
    /// (Cluster only.) A request for the cluster's matchmaker; its pairs come back through
    /// [`crate::Core::handle_match`].
    Match(MatchRequest),
    /// (Cluster only.) A change to `room`'s journal in Redis, in order with the others. With a
    /// `ticket`, the sender's acknowledgements of the message (its ack and
    /// `chat:message:sent`) wait for the write: call [`crate::Core::handle_journaled`] with
    /// the ticket once it is written, or failed (the message then lives in this node's memory
    /// only, as on a single node). Unanswered, they go out after the bus timeout anyway.
    Journal {
        room: RoomId,
        op: JournalOp,
        ticket: Option<u64>,
    },
    /// (Cluster only.) The ack of an event [`crate::Core::handle_client_event`] forwarded to
    /// the chat's home, or of a partner message held until its journal entry was written: the
    /// ack's JSON, or the refusal.
    Ack {
        conn: ConnId,
        req: u64,
        result: Result<Value, SignalError>,
    },
    /// (Cluster only.) An event the chat's home emitted for a guest of this node, to write as
    /// is. With `ack`, a partner message: on a socket's ack call
    /// [`crate::Core::handle_delivered`] with it.
    Relay {
        to: Target,
        name: String,
        payload: Value,
        ack: Option<(RoomId, MessageId)>,
    },
}

/// (Cluster only.) What the chat's home keeps in Redis of a room's partner messages until
/// their receiver acknowledges them, so that the room's next home can hand them out if this
/// one dies with both guests' sockets (see [`crate::Core::handle_claim`]).
#[derive(Debug, Clone, PartialEq)]
pub enum JournalOp {
    /// A partner message accepted (the entry is [`crate::cluster::Kept::encode`]d).
    Keep(crate::cluster::Kept),
    /// Its receiver acknowledged (or read) message `id`: its entry goes.
    Drop(MessageId),
    /// The chat ended: the room's entries go.
    Clear,
}

/// The outputs not yet polled, in order.
#[derive(Default)]
pub(crate) struct Outbox {
    queue: VecDeque<Output>,
}

impl Outbox {
    pub(crate) fn push(&mut self, out: Output) {
        self.queue.push_back(out);
    }

    pub(crate) fn emit(&mut self, to: Target, event: ServerEvent) {
        self.queue.push_back(Output::Emit { to, event });
    }

    pub(crate) fn pop(&mut self) -> Option<Output> {
        self.queue.pop_front()
    }

    pub(crate) fn len(&self) -> usize {
        self.queue.len()
    }

    /// Takes the outputs from index `start` on (those of the current input, to route).
    pub(crate) fn take_from(&mut self, start: usize) -> VecDeque<Output> {
        self.queue.split_off(start.min(self.queue.len()))
    }
}
