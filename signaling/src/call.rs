//! The interface between the signaling core and the media server (SFU). The core decides who
//! is in which call and relays SDP and ICE between the clients and the media server: it queues
//! [`MediaCommand`]s (as [`crate::Output::Media`]) and takes [`MediaEvent`]s back through
//! [`crate::Core::handle_media`].
//!
//! The calls themselves (one per room at most, each a small state machine) are kept here too,
//! in the crate-private `Calls`.

use std::collections::HashMap;
use std::time::Instant;

use crate::ids::{CallId, RoomId, SessionId};
use crate::output::{Outbox, Output, Target};
use crate::wire::{
    CallEndReason, CallEnded, CallIncoming, CallInfo, CallState, ClientEvent, ErrorEvent,
    IceCandidate, RoomRef, Sdp, ServerEvent,
};
use crate::SignalError;

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

impl MediaEvent {
    /// The call and the guest the report is about.
    pub(crate) fn target(&self) -> (CallId, SessionId) {
        match self {
            Self::Answer { call, guest, .. }
            | Self::Offer { call, guest, .. }
            | Self::Candidate { call, guest, .. }
            | Self::OfferRejected { call, guest, .. }
            | Self::Connected { call, guest }
            | Self::Disconnected { call, guest }
            | Self::Failed { call, guest } => (*call, *guest),
        }
    }
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

/// One call between the two guests of a room. Sides are indexed 0 = caller, 1 = callee.
///
/// Its state machine: ringing (requested) → accepted (the media server opens a session) →
/// each side connected or not, as the media server reports; it ends from any state (rejected,
/// hung up, timed out while ringing, failed, or with its chat).
struct Call {
    id: CallId,
    guests: [SessionId; 2],
    video: bool,
    /// When the callee accepted; `None` while ringing.
    accepted_at: Option<Instant>,
    /// Per side: the media server reports this side connected.
    connected: [bool; 2],
    /// Per side: a server offer waits for this side's `webrtc:answer`.
    offer_pending: [bool; 2],
    /// The setup time was reported.
    setup_reported: bool,
}

impl Call {
    fn side(&self, id: SessionId) -> Option<usize> {
        self.guests.iter().position(|g| *g == id)
    }

    fn state_of(&self, side: usize) -> CallState {
        match (self.accepted_at, side) {
            (None, 0) => CallState::Calling,
            (None, _) => CallState::Ringing,
            (Some(_), _) if self.connected[side] => CallState::Connected,
            (Some(_), _) => CallState::Connecting,
        }
    }
}

/// The calls of all rooms, at most one per room. The calls' events and media commands are
/// emitted from here into the core's [`Outbox`].
#[derive(Default)]
pub(crate) struct Calls {
    by_room: HashMap<RoomId, Call>,
    /// Every live call's room.
    rooms: HashMap<CallId, RoomId>,
    /// The last call id handed out.
    last: u64,
}

impl Calls {
    /// No calls; the first call's id is `after + 1`.
    pub(crate) fn numbered_after(after: u64) -> Self {
        Self {
            last: after,
            ..Self::default()
        }
    }

    /// `caller` calls `callee` in `room`: the new call rings (`call:incoming` to the callee).
    /// Refused with `call_in_progress` if the room has a call.
    pub(crate) fn request(
        &mut self,
        room: RoomId,
        [caller, callee]: [SessionId; 2],
        video: bool,
        out: &mut Outbox,
    ) -> Result<CallId, SignalError> {
        if self.by_room.contains_key(&room) {
            return Err(SignalError::CallInProgress);
        }
        self.last = self.last.wrapping_add(1);
        let id = CallId(self.last);
        let call = Call {
            id,
            guests: [caller, callee],
            video,
            accepted_at: None,
            connected: [false; 2],
            offer_pending: [false; 2],
            setup_reported: false,
        };
        self.by_room.insert(room, call);
        self.rooms.insert(id, room);
        let incoming = CallIncoming {
            room_id: room,
            video,
        };
        out.emit(Target::Guest(callee), ServerEvent::CallIncoming(incoming));
        Ok(id)
    }

    /// The room's ringing call, if `callee` is its callee (else `no_call`).
    pub(crate) fn ringing_for(
        &self,
        room: RoomId,
        callee: SessionId,
    ) -> Result<CallId, SignalError> {
        match self.by_room.get(&room) {
            Some(c) if c.accepted_at.is_none() && c.guests[1] == callee => Ok(c.id),
            _ => Err(SignalError::NoCall),
        }
    }

    /// The callee accepts the room's ringing call at `now` (else `no_call`): the media server
    /// is asked to open a session, and both guests get `call:accepted`.
    pub(crate) fn accept(
        &mut self,
        room: RoomId,
        callee: SessionId,
        now: Instant,
        out: &mut Outbox,
    ) -> Result<CallId, SignalError> {
        self.ringing_for(room, callee)?;
        let c = self.by_room.get_mut(&room).ok_or(SignalError::NoCall)?;
        c.accepted_at = Some(now);
        let (call, guests, video) = (c.id, c.guests, c.video);
        out.push(Output::Media(MediaCommand::Open {
            call,
            room,
            guests,
            video,
        }));
        for g in guests {
            let event = ServerEvent::CallAccepted(RoomRef { room_id: room });
            out.emit(Target::Guest(g), event);
        }
        Ok(call)
    }

    /// The room's call (ringing or accepted), if any.
    pub(crate) fn current(&self, room: RoomId) -> Option<CallId> {
        self.by_room.get(&room).map(|c| c.id)
    }

    /// The two guests of the room's call (caller, callee), if it has one.
    pub(crate) fn guests(&self, room: RoomId) -> Option<[SessionId; 2]> {
        self.by_room.get(&room).map(|c| c.guests)
    }

    /// The room's call if `guest` is in it.
    pub(crate) fn call_of(&self, room: RoomId, guest: SessionId) -> Option<CallId> {
        let c = self.by_room.get(&room)?;
        c.side(guest).map(|_| c.id)
    }

    /// What `guest` is told of the room's call when it (re)connects.
    pub(crate) fn info_for(&self, room: RoomId, guest: SessionId) -> Option<CallInfo> {
        let c = self.by_room.get(&room)?;
        let side = c.side(guest)?;
        Some(CallInfo {
            state: c.state_of(side),
            video: c.video,
        })
    }

    /// Is `call` the room's call, still ringing?
    pub(crate) fn is_ringing(&self, room: RoomId, call: CallId) -> bool {
        self.by_room
            .get(&room)
            .is_some_and(|c| c.id == call && c.accepted_at.is_none())
    }

    /// Ends `call` if it is still the room's call, telling both guests `reason`; whether it
    /// ended.
    pub(crate) fn end(
        &mut self,
        room: RoomId,
        call: CallId,
        reason: CallEndReason,
        out: &mut Outbox,
    ) -> bool {
        if self.by_room.get(&room).is_none_or(|c| c.id != call) {
            return false;
        }
        let Some(c) = self.take(room) else {
            return false;
        };
        let notify = c.guests.map(|g| (g, Some(reason)));
        Self::over(room, &c, notify, out);
        true
    }

    /// The chat of `room` ended (`actor` ended it, or was removed): its call, if any, ends
    /// with it: `partner_left` for `other`, `hangup` for `actor` if it is `told` (it may have
    /// no socket left). Whether there was a call.
    pub(crate) fn end_room(
        &mut self,
        room: RoomId,
        [actor, other]: [SessionId; 2],
        told: bool,
        out: &mut Outbox,
    ) -> bool {
        let Some(c) = self.take(room) else {
            return false;
        };
        let mine = told.then_some(CallEndReason::Hangup);
        let notify = [(actor, mine), (other, Some(CallEndReason::PartnerLeft))];
        Self::over(room, &c, notify, out);
        true
    }

    /// A `webrtc:offer`, `webrtc:answer` or `webrtc:ice-candidate` of `guest` in the room's
    /// accepted call (else `no_call`): passed on to the media server (not the empty
    /// end-of-candidates marker). An answer is refused with `invalid_sdp` unless the media
    /// server's offer waits for it. Other events are refused with `unknown_event`.
    pub(crate) fn webrtc(
        &mut self,
        room: RoomId,
        guest: SessionId,
        event: ClientEvent,
        out: &mut Outbox,
    ) -> Result<(), SignalError> {
        let c = match self.by_room.get_mut(&room) {
            Some(c) if c.accepted_at.is_some() => c,
            _ => return Err(SignalError::NoCall),
        };
        let side = c.side(guest).ok_or(SignalError::NoCall)?;
        let call = c.id;
        let command = match event {
            ClientEvent::WebrtcOffer { sdp } => MediaCommand::Offer { call, guest, sdp },
            ClientEvent::WebrtcAnswer { sdp } => {
                if !c.offer_pending[side] {
                    return Err(SignalError::InvalidSdp);
                }
                c.offer_pending[side] = false;
                MediaCommand::Answer { call, guest, sdp }
            }
            ClientEvent::WebrtcCandidate {
                candidate,
                sdp_mid,
                sdp_mline_index,
            } => {
                if candidate.is_empty() {
                    return Ok(());
                }
                MediaCommand::Candidate {
                    call,
                    guest,
                    candidate,
                    sdp_mid,
                    sdp_mline_index,
                }
            }
            _ => return Err(SignalError::UnknownEvent),
        };
        out.push(Output::Media(command));
        Ok(())
    }

    /// A report from the media server (`away`: the guest it is about has no socket), ignored
    /// unless its call lives, was accepted and has that guest. Returned: a call to end with
    /// `failed` (its guest's media failed for good while it is connected; if it is away the
    /// call waits for it, and ends with the chat if it never returns).
    pub(crate) fn media(
        &mut self,
        event: MediaEvent,
        away: bool,
        now: Instant,
        out: &mut Outbox,
    ) -> Option<(RoomId, CallId)> {
        let (call, guest) = event.target();
        let room = *self.rooms.get(&call)?;
        let c = self.by_room.get_mut(&room).filter(|c| c.id == call)?;
        let accepted_at = c.accepted_at?;
        let side = c.side(guest)?;
        let to = Target::Guest(guest);
        match event {
            MediaEvent::Answer { sdp, .. } => {
                out.emit(to, ServerEvent::WebrtcAnswer(Sdp { sdp }));
            }
            MediaEvent::Offer { sdp, .. } => {
                c.offer_pending[side] = true;
                out.emit(to, ServerEvent::WebrtcOffer(Sdp { sdp }));
            }
            MediaEvent::Candidate {
                candidate,
                sdp_mid,
                sdp_mline_index,
                ..
            } => {
                let candidate = IceCandidate {
                    candidate,
                    sdp_mid,
                    sdp_mline_index,
                };
                out.emit(to, ServerEvent::WebrtcCandidate(candidate));
            }
            MediaEvent::OfferRejected { message, .. } => {
                let error = ErrorEvent {
                    code: SignalError::InvalidSdp.code(),
                    message,
                    event: "webrtc:offer",
                };
                out.emit(to, ServerEvent::Error(error));
            }
            MediaEvent::Connected { .. } => {
                c.connected[side] = true;
                if c.connected == [true, true] && !c.setup_reported {
                    c.setup_reported = true;
                    let took = now.saturating_duration_since(accepted_at);
                    out.push(Output::CallSetup(took));
                }
            }
            MediaEvent::Disconnected { .. } => c.connected[side] = false,
            MediaEvent::Failed { .. } if away => c.connected[side] = false,
            MediaEvent::Failed { .. } => return Some((room, call)),
        }
        None
    }

    /// How many calls are in each phase.
    pub(crate) fn states(&self) -> CallStates {
        let mut st = CallStates::default();
        for c in self.by_room.values() {
            match c.accepted_at {
                None => st.ringing += 1,
                Some(_) if c.connected == [true, true] => st.connected += 1,
                Some(_) => st.connecting += 1,
            }
        }
        st
    }

    /// Live calls.
    pub(crate) fn len(&self) -> usize {
        self.rooms.len()
    }

    fn take(&mut self, room: RoomId) -> Option<Call> {
        let c = self.by_room.remove(&room)?;
        self.rooms.remove(&c.id);
        Some(c)
    }

    /// For a call taken out: `call:ended` to each guest with a reason, the media session
    /// closed if the call had been accepted, and the end for the shell.
    fn over(
        room: RoomId,
        call: &Call,
        notify: [(SessionId, Option<CallEndReason>); 2],
        out: &mut Outbox,
    ) {
        for (g, reason) in notify {
            if let Some(reason) = reason {
                let ended = CallEnded {
                    room_id: room,
                    reason,
                };
                out.emit(Target::Guest(g), ServerEvent::CallEnded(ended));
            }
        }
        if call.accepted_at.is_some() {
            out.push(Output::Media(MediaCommand::Close { call: call.id }));
        }
        out.push(Output::CallEnded(call.id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn g(n: u128) -> SessionId {
        SessionId::from_raw(n)
    }

    const ROOM: RoomId = RoomId::from_raw(1);
    const OTHER_ROOM: RoomId = RoomId::from_raw(2);

    fn drain(out: &mut Outbox) -> Vec<Output> {
        std::iter::from_fn(|| out.pop()).collect()
    }

    fn emit(to: SessionId, event: ServerEvent) -> Output {
        Output::Emit {
            to: Target::Guest(to),
            event,
        }
    }

    fn connected(call: CallId, guest: SessionId) -> MediaEvent {
        MediaEvent::Connected { call, guest }
    }

    /// A call in `ROOM` from 1 to 2, accepted at `t0`; the outbox drained.
    fn accepted(t0: Instant, out: &mut Outbox) -> (Calls, CallId) {
        let mut c = Calls::default();
        let id = c.request(ROOM, [g(1), g(2)], true, out).unwrap();
        c.accept(ROOM, g(2), t0, out).unwrap();
        drain(out);
        (c, id)
    }

    #[test]
    fn one_call_per_room_with_ids_from_one() {
        let mut out = Outbox::default();
        let mut c = Calls::default();
        assert_eq!(c.request(ROOM, [g(1), g(2)], true, &mut out), Ok(CallId(1)));
        let incoming = CallIncoming {
            room_id: ROOM,
            video: true,
        };
        assert_eq!(
            drain(&mut out),
            [emit(g(2), ServerEvent::CallIncoming(incoming))]
        );
        assert_eq!(
            c.request(ROOM, [g(2), g(1)], false, &mut out),
            Err(SignalError::CallInProgress)
        );
        assert!(drain(&mut out).is_empty());
        assert_eq!(
            c.request(OTHER_ROOM, [g(3), g(4)], false, &mut out),
            Ok(CallId(2))
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c.current(ROOM), Some(CallId(1)));
        assert_eq!(c.call_of(ROOM, g(2)), Some(CallId(1)));
        assert_eq!(c.call_of(ROOM, g(3)), None);
        assert_eq!(c.states().ringing, 2);
    }

    #[test]
    fn only_the_callee_accepts_a_ringing_call() {
        let t0 = Instant::now();
        let mut out = Outbox::default();
        let mut c = Calls::default();
        let id = c.request(ROOM, [g(1), g(2)], true, &mut out).unwrap();
        drain(&mut out);
        assert!(c.is_ringing(ROOM, id));
        assert_eq!(c.info_for(ROOM, g(1)).unwrap().state, CallState::Calling);
        assert_eq!(c.info_for(ROOM, g(2)).unwrap().state, CallState::Ringing);
        assert_eq!(c.info_for(ROOM, g(3)), None);
        assert_eq!(c.ringing_for(ROOM, g(1)), Err(SignalError::NoCall));
        assert_eq!(c.accept(ROOM, g(1), t0, &mut out), Err(SignalError::NoCall));
        assert_eq!(c.accept(ROOM, g(2), t0, &mut out), Ok(id));
        let accepted = emit(g(1), ServerEvent::CallAccepted(RoomRef { room_id: ROOM }));
        let outs = drain(&mut out);
        assert_eq!(
            outs[0],
            Output::Media(MediaCommand::Open {
                call: id,
                room: ROOM,
                guests: [g(1), g(2)],
                video: true
            })
        );
        assert_eq!(outs[1], accepted);
        assert_eq!(outs.len(), 3);
        assert!(!c.is_ringing(ROOM, id));
        assert_eq!(c.accept(ROOM, g(2), t0, &mut out), Err(SignalError::NoCall));
        assert_eq!(c.info_for(ROOM, g(2)).unwrap().state, CallState::Connecting);
        assert_eq!(
            c.states(),
            CallStates {
                connecting: 1,
                ..CallStates::default()
            }
        );
    }

    #[test]
    fn media_reports_only_reach_accepted_calls_and_their_guests() {
        let t0 = Instant::now();
        let mut out = Outbox::default();
        let mut c = Calls::default();
        let id = c.request(ROOM, [g(1), g(2)], false, &mut out).unwrap();
        drain(&mut out);
        let answer = |guest| MediaEvent::Answer {
            call: id,
            guest,
            sdp: "v=0".into(),
        };
        assert_eq!(c.media(answer(g(1)), false, t0, &mut out), None);
        assert!(drain(&mut out).is_empty(), "ringing: ignored");
        c.accept(ROOM, g(2), t0, &mut out).unwrap();
        drain(&mut out);
        assert_eq!(c.media(answer(g(2)), false, t0, &mut out), None);
        let sdp = ServerEvent::WebrtcAnswer(Sdp { sdp: "v=0".into() });
        assert_eq!(drain(&mut out), [emit(g(2), sdp)]);
        c.media(answer(g(3)), false, t0, &mut out);
        c.media(connected(CallId(9), g(1)), false, t0, &mut out);
        c.end_room(ROOM, [g(1), g(2)], true, &mut Outbox::default());
        c.media(answer(g(1)), false, t0, &mut out);
        assert!(drain(&mut out).is_empty());
    }

    #[test]
    fn an_answer_needs_a_pending_offer() {
        let t0 = Instant::now();
        let mut out = Outbox::default();
        let answer = || ClientEvent::WebrtcAnswer { sdp: "v=0".into() };
        let mut c = Calls::default();
        assert_eq!(
            c.webrtc(ROOM, g(1), answer(), &mut out),
            Err(SignalError::NoCall)
        );
        let (mut c, id) = accepted(t0, &mut out);
        assert_eq!(
            c.webrtc(ROOM, g(1), answer(), &mut out),
            Err(SignalError::InvalidSdp)
        );
        let offer = MediaEvent::Offer {
            call: id,
            guest: g(1),
            sdp: "o".into(),
        };
        c.media(offer, false, t0, &mut out);
        let sdp = ServerEvent::WebrtcOffer(Sdp { sdp: "o".into() });
        assert_eq!(drain(&mut out), [emit(g(1), sdp)]);
        assert_eq!(
            c.webrtc(ROOM, g(2), answer(), &mut out),
            Err(SignalError::InvalidSdp)
        );
        assert_eq!(c.webrtc(ROOM, g(1), answer(), &mut out), Ok(()));
        assert_eq!(
            drain(&mut out),
            [Output::Media(MediaCommand::Answer {
                call: id,
                guest: g(1),
                sdp: "v=0".into()
            })]
        );
        assert_eq!(
            c.webrtc(ROOM, g(1), answer(), &mut out),
            Err(SignalError::InvalidSdp)
        );
    }

    #[test]
    fn offers_and_candidates_need_an_accepted_call() {
        let t0 = Instant::now();
        let mut out = Outbox::default();
        let offer = || ClientEvent::WebrtcOffer { sdp: "v=0".into() };
        let candidate = |candidate: &str| ClientEvent::WebrtcCandidate {
            candidate: candidate.into(),
            sdp_mid: None,
            sdp_mline_index: Some(0),
        };
        let mut c = Calls::default();
        c.request(ROOM, [g(1), g(2)], false, &mut out).unwrap();
        assert_eq!(
            c.webrtc(ROOM, g(2), candidate("c"), &mut out),
            Err(SignalError::NoCall)
        );
        let (mut c, id) = accepted(t0, &mut out);
        assert_eq!(c.webrtc(ROOM, g(2), offer(), &mut out), Ok(()));
        assert_eq!(c.webrtc(ROOM, g(2), candidate("c"), &mut out), Ok(()));
        // The end-of-candidates marker goes nowhere.
        assert_eq!(c.webrtc(ROOM, g(2), candidate(""), &mut out), Ok(()));
        let outs = drain(&mut out);
        assert!(matches!(
            outs.as_slice(),
            [
                Output::Media(MediaCommand::Offer { call, .. }),
                Output::Media(MediaCommand::Candidate { .. })
            ] if *call == id
        ));
        assert_eq!(
            c.webrtc(ROOM, g(3), offer(), &mut out),
            Err(SignalError::NoCall)
        );
        assert_eq!(
            c.webrtc(ROOM, g(1), ClientEvent::CallEnd, &mut out),
            Err(SignalError::UnknownEvent)
        );
    }

    #[test]
    fn setup_time_is_reported_once_when_both_sides_first_connect() {
        let t0 = Instant::now();
        let mut out = Outbox::default();
        let (mut c, id) = accepted(t0, &mut out);
        let t = |ms| t0 + Duration::from_millis(ms);
        c.media(connected(id, g(1)), false, t(100), &mut out);
        assert!(drain(&mut out).is_empty());
        c.media(connected(id, g(2)), false, t(250), &mut out);
        assert_eq!(
            drain(&mut out),
            [Output::CallSetup(Duration::from_millis(250))]
        );
        assert_eq!(c.info_for(ROOM, g(1)).unwrap().state, CallState::Connected);
        assert_eq!(c.states().connected, 1);
        let gone = MediaEvent::Disconnected {
            call: id,
            guest: g(2),
        };
        c.media(gone, false, t(300), &mut out);
        assert_eq!(c.info_for(ROOM, g(2)).unwrap().state, CallState::Connecting);
        c.media(connected(id, g(2)), false, t(400), &mut out);
        assert!(drain(&mut out).is_empty());
    }

    #[test]
    fn a_failure_ends_the_call_unless_the_guest_is_away() {
        let t0 = Instant::now();
        let mut out = Outbox::default();
        let (mut c, id) = accepted(t0, &mut out);
        c.media(connected(id, g(1)), false, t0, &mut out);
        let failed = || MediaEvent::Failed {
            call: id,
            guest: g(1),
        };
        assert_eq!(c.media(failed(), true, t0, &mut out), None);
        assert_eq!(c.info_for(ROOM, g(1)).unwrap().state, CallState::Connecting);
        assert_eq!(c.media(failed(), false, t0, &mut out), Some((ROOM, id)));
        assert!(drain(&mut out).is_empty());
    }

    #[test]
    fn ending_only_the_current_call_and_telling_why() {
        let t0 = Instant::now();
        let mut out = Outbox::default();
        let mut c = Calls::default();
        let first = c.request(ROOM, [g(1), g(2)], false, &mut out).unwrap();
        drain(&mut out);
        let timeout = CallEndReason::Timeout;
        assert!(!c.end(ROOM, CallId(99), timeout, &mut out));
        assert!(c.end(ROOM, first, timeout, &mut out));
        let ended = |to, reason| {
            emit(
                to,
                ServerEvent::CallEnded(CallEnded {
                    room_id: ROOM,
                    reason,
                }),
            )
        };
        // Never accepted: no media session to close.
        assert_eq!(
            drain(&mut out),
            [
                ended(g(1), timeout),
                ended(g(2), timeout),
                Output::CallEnded(first)
            ]
        );
        assert!(!c.end(ROOM, first, timeout, &mut out));
        assert!(!c.is_ringing(ROOM, first));
        let (mut c, second) = accepted(t0, &mut out);
        // The chat ends: the actor (2) is told only if it is there.
        assert!(c.end_room(ROOM, [g(2), g(1)], false, &mut out));
        assert_eq!(
            drain(&mut out),
            [
                ended(g(1), CallEndReason::PartnerLeft),
                Output::Media(MediaCommand::Close { call: second }),
                Output::CallEnded(second)
            ]
        );
        assert!(!c.end_room(ROOM, [g(2), g(1)], true, &mut out));
        assert_eq!(c.len(), 0);
        assert_eq!(c.states(), CallStates::default());
    }
}
