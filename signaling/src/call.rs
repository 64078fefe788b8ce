//! The interface between the signaling core and the media server (SFU). The core decides who
//! is in which call and relays SDP and ICE between the clients and the media server: it queues
//! [`MediaCommand`]s (as [`crate::Output::Media`]) and takes [`MediaEvent`]s back through
//! [`crate::Core::handle_media`].

use crate::ids::{CallId, RoomId, SessionId};

/// What the core asks the media server to do, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaCommand {
    /// The callee accepted: set up a media session for the two guests (`[caller, callee]`).
    Open {
        call: CallId,
        room: RoomId,
        guests: [SessionId; 2],
        video: bool,
    },
    /// A guest's offer (the first one, or a renegotiation / ICE restart). Answer it with
    /// [`MediaEvent::Answer`] or refuse it with [`MediaEvent::OfferRejected`].
    Offer {
        call: CallId,
        guest: SessionId,
        sdp: String,
    },
    /// A guest's answer to the media server's [`MediaEvent::Offer`].
    Answer {
        call: CallId,
        guest: SessionId,
        sdp: String,
    },
    /// A trickled ICE candidate from a guest (never the empty end-of-candidates marker).
    Candidate {
        call: CallId,
        guest: SessionId,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: Option<u16>,
    },
    /// The call is over: drop its media session.
    Close { call: CallId },
}

/// What the media server reports back. Events for a call that is over (or a guest who is not
/// in it) are ignored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MediaEvent {
    /// The answer to a guest's offer: sent to that guest as `webrtc:answer`.
    Answer {
        call: CallId,
        guest: SessionId,
        sdp: String,
    },
    /// A server-initiated (re)negotiation: sent as `webrtc:offer`; the guest's `webrtc:answer`
    /// is expected next.
    Offer {
        call: CallId,
        guest: SessionId,
        sdp: String,
    },
    /// A server ICE candidate: sent as `webrtc:ice-candidate`.
    Candidate {
        call: CallId,
        guest: SessionId,
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: Option<u16>,
    },
    /// The guest's offer could not be used: sent to it as an `error` event with code
    /// `invalid_sdp` and `event: "webrtc:offer"`.
    OfferRejected {
        call: CallId,
        guest: SessionId,
        message: String,
    },
    /// The guest's media is flowing.
    Connected { call: CallId, guest: SessionId },
    /// The guest's media stopped (it may come back, e.g. after an ICE restart).
    Disconnected { call: CallId, guest: SessionId },
    /// The guest's media failed for good. If the guest is away the call waits for it (it ends
    /// with the chat if the guest never returns); otherwise the call ends with `failed`.
    Failed { call: CallId, guest: SessionId },
}

/// How many calls are in each phase, for a gauge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CallStates {
    /// Requested, not yet accepted.
    pub ringing: u64,
    /// Accepted, not both sides connected.
    pub connecting: u64,
    /// Both sides connected.
    pub connected: u64,
}
