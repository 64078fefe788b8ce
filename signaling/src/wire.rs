//! Wire types: client events as parsed from Socket.IO payloads, server events as serialized to
//! them. Names and shapes are fixed by docs/protocol.md.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::ids::{MessageId, RoomId, SessionId};
use crate::SignalError;

/// Longest interest tag, in characters.
pub const MAX_INTEREST_CHARS: usize = 24;
/// Most interest tags per search.
pub const MAX_INTERESTS: usize = 5;
/// Longest text message after trimming, in characters.
pub const MAX_MESSAGE_CHARS: usize = 2000;
/// Longest client-chosen message id, in characters.
pub const MAX_CLIENT_ID_CHARS: usize = 64;
/// Longest report reason, in characters.
pub const MAX_REPORT_CHARS: usize = 200;
/// Longest session description a client may send, in bytes.
pub const MAX_SDP_BYTES: usize = 16_000;
/// Longest ICE candidate line, in characters.
pub const MAX_CANDIDATE_CHARS: usize = 1024;
/// Longest `sdpMid`, in characters.
pub const MAX_SDP_MID_CHARS: usize = 64;

/// A client → server event, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    MatchStart {
        interests: Vec<String>,
    },
    MatchCancel,
    MatchNext {
        interests: Vec<String>,
    },
    ChatLeave,
    ChatReport {
        reason: Option<String>,
    },
    ChatMessage {
        client_id: String,
        content: String,
    },
    ChatRead {
        id: MessageId,
    },
    TypingStart,
    TypingStop,
    /// `call:request`: ring the partner.
    CallRequest {
        video: bool,
    },
    /// `call:accept`: the callee picks up.
    CallAccept,
    /// `call:reject`: the callee declines.
    CallReject,
    /// `call:end`: either side hangs up (or the caller cancels while ringing).
    CallEnd,
    /// `webrtc:offer`: the client's offer for the media server.
    WebrtcOffer {
        sdp: String,
    },
    /// `webrtc:answer`: the client's answer to a server (renegotiation) offer.
    WebrtcAnswer {
        sdp: String,
    },
    /// `webrtc:ice-candidate`: one trickled candidate; `candidate` is empty at the end of
    /// candidates, else it starts with `candidate:` (an `a=` prefix is stripped).
    WebrtcCandidate {
        candidate: String,
        sdp_mid: Option<String>,
        sdp_mline_index: Option<u16>,
    },
}

/// Which rate-limit bucket (and metrics label) an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Match,
    Message,
    Typing,
    /// Trickled ICE candidates: a browser sends a burst of them per offer.
    Candidate,
    Other,
}

impl ClientEvent {
    /// Every event name a client may send.
    pub const NAMES: [&'static str; 16] = [
        "match:start",
        "match:cancel",
        "match:next",
        "chat:leave",
        "chat:report",
        "chat:message",
        "chat:message:read",
        "typing:start",
        "typing:stop",
        "call:request",
        "call:accept",
        "call:reject",
        "call:end",
        "webrtc:offer",
        "webrtc:answer",
        "webrtc:ice-candidate",
    ];

    /// Parses and validates one event. `payload` is the first Socket.IO argument, if any.
    pub fn parse(name: &str, payload: Option<&Value>) -> Result<Self, SignalError> {
        let payload = payload.filter(|v| !v.is_null());
        match name {
            "match:start" => Ok(Self::MatchStart {
                interests: interests(payload)?,
            }),
            "match:cancel" => Ok(Self::MatchCancel),
            "match:next" => Ok(Self::MatchNext {
                interests: interests(payload)?,
            }),
            "chat:leave" => Ok(Self::ChatLeave),
            "chat:report" => {
                let reason = match payload {
                    None => None,
                    Some(Value::Object(o)) => match o.get("reason") {
                        None | Some(Value::Null) => None,
                        Some(Value::String(s)) if s.chars().count() <= MAX_REPORT_CHARS => {
                            Some(s.trim().to_owned())
                        }
                        Some(_) => return Err(SignalError::InvalidReport),
                    },
                    Some(_) => return Err(SignalError::InvalidPayload),
                };
                Ok(Self::ChatReport { reason })
            }
            "chat:message" => chat_message(payload),
            "chat:message:read" => {
                let id = payload
                    .and_then(|p| p.get("id"))
                    .and_then(Value::as_str)
                    .ok_or(SignalError::InvalidPayload)?;
                let id = MessageId::parse(id).ok_or(SignalError::UnknownMessage)?;
                Ok(Self::ChatRead { id })
            }
            "typing:start" => Ok(Self::TypingStart),
            "typing:stop" => Ok(Self::TypingStop),
            "call:request" => {
                let Some(Value::Object(o)) = payload else {
                    return Err(SignalError::InvalidPayload);
                };
                match o.get("video") {
                    Some(Value::Bool(video)) => Ok(Self::CallRequest { video: *video }),
                    _ => Err(SignalError::InvalidPayload),
                }
            }
            "call:accept" => Ok(Self::CallAccept),
            "call:reject" => Ok(Self::CallReject),
            "call:end" => Ok(Self::CallEnd),
            "webrtc:offer" => Ok(Self::WebrtcOffer { sdp: sdp(payload)? }),
            "webrtc:answer" => Ok(Self::WebrtcAnswer { sdp: sdp(payload)? }),
            "webrtc:ice-candidate" => ice_candidate(payload),
            _ => Err(SignalError::UnknownEvent),
        }
    }

    pub fn kind(&self) -> EventKind {
        match self {
            Self::MatchStart { .. } | Self::MatchCancel | Self::MatchNext { .. } => {
                EventKind::Match
            }
            Self::ChatMessage { .. } => EventKind::Message,
            Self::TypingStart | Self::TypingStop => EventKind::Typing,
            Self::ChatLeave
            | Self::ChatReport { .. }
            | Self::ChatRead { .. }
            | Self::CallRequest { .. }
            | Self::CallAccept
            | Self::CallReject
            | Self::CallEnd
            | Self::WebrtcOffer { .. }
            | Self::WebrtcAnswer { .. } => EventKind::Other,
            Self::WebrtcCandidate { .. } => EventKind::Candidate,
        }
    }

    /// The wire name (a bounded metrics label).
    pub fn name(&self) -> &'static str {
        match self {
            Self::MatchStart { .. } => "match:start",
            Self::MatchCancel => "match:cancel",
            Self::MatchNext { .. } => "match:next",
            Self::ChatLeave => "chat:leave",
            Self::ChatReport { .. } => "chat:report",
            Self::ChatMessage { .. } => "chat:message",
            Self::ChatRead { .. } => "chat:message:read",
            Self::TypingStart => "typing:start",
            Self::TypingStop => "typing:stop",
            Self::CallRequest { .. } => "call:request",
            Self::CallAccept => "call:accept",
            Self::CallReject => "call:reject",
            Self::CallEnd => "call:end",
            Self::WebrtcOffer { .. } => "webrtc:offer",
            Self::WebrtcAnswer { .. } => "webrtc:answer",
            Self::WebrtcCandidate { .. } => "webrtc:ice-candidate",
        }
    }
}

/// `{ sdp }`: a cheap syntactic check only (the media server parses it for real): at most
/// [`MAX_SDP_BYTES`], starting with `v=0`, with at least one `m=` line.
fn sdp(payload: Option<&Value>) -> Result<String, SignalError> {
    let Some(Value::Object(o)) = payload else {
        return Err(SignalError::InvalidPayload);
    };
    match o.get("sdp") {
        Some(Value::String(s))
            if s.len() <= MAX_SDP_BYTES && s.starts_with("v=0") && s.contains("\nm=") =>
        {
            Ok(s.clone())
        }
        _ => Err(SignalError::InvalidSdp),
    }
}

/// `{ candidate, sdpMid?, sdpMLineIndex? }`. Wrong JSON types are `invalid_payload`; a
/// candidate or `sdpMid` of the right type but the wrong form is `invalid_candidate`.
fn ice_candidate(payload: Option<&Value>) -> Result<ClientEvent, SignalError> {
    let Some(Value::Object(o)) = payload else {
        return Err(SignalError::InvalidPayload);
    };
    let Some(Value::String(raw)) = o.get("candidate") else {
        return Err(SignalError::InvalidPayload);
    };
    if raw.chars().count() > MAX_CANDIDATE_CHARS || raw.chars().any(char::is_control) {
        return Err(SignalError::InvalidCandidate);
    }
    let candidate = raw
        .strip_prefix("a=")
        .filter(|c| c.starts_with("candidate:"))
        .unwrap_or(raw);
    if !candidate.is_empty() && !candidate.starts_with("candidate:") {
        return Err(SignalError::InvalidCandidate);
    }
    let sdp_mid = match o.get("sdpMid") {
        None | Some(Value::Null) => None,
        Some(Value::String(m)) => {
            if m.chars().count() > MAX_SDP_MID_CHARS || m.chars().any(char::is_control) {
                return Err(SignalError::InvalidCandidate);
            }
            Some(m.clone())
        }
        Some(_) => return Err(SignalError::InvalidPayload),
    };
    let sdp_mline_index = match o.get("sdpMLineIndex") {
        None | Some(Value::Null) => None,
        Some(Value::Number(n)) => {
            if let Some(i) = n.as_u64() {
                match u16::try_from(i) {
                    Ok(i) if i <= 255 => Some(i),
                    _ => return Err(SignalError::InvalidCandidate),
                }
            } else if n.as_i64().is_some() {
                // A negative integer.
                return Err(SignalError::InvalidCandidate);
            } else {
                return Err(SignalError::InvalidPayload);
            }
        }
        Some(_) => return Err(SignalError::InvalidPayload),
    };
    Ok(ClientEvent::WebrtcCandidate {
        candidate: candidate.to_owned(),
        sdp_mid,
        sdp_mline_index,
    })
}

fn interests(payload: Option<&Value>) -> Result<Vec<String>, SignalError> {
    let list = match payload {
        None => return Ok(Vec::new()),
        Some(Value::Object(o)) => match o.get("interests") {
            None | Some(Value::Null) => return Ok(Vec::new()),
            Some(Value::Array(a)) => a,
            Some(_) => return Err(SignalError::InvalidInterests),
        },
        Some(_) => return Err(SignalError::InvalidPayload),
    };
    if list.len() > MAX_INTERESTS {
        return Err(SignalError::InvalidInterests);
    }
    let mut out: Vec<String> = Vec::with_capacity(list.len());
    for tag in list {
        // Lowercased before the checks: lowercasing can lengthen a tag ('İ' becomes "i̇").
        let tag = tag
            .as_str()
            .ok_or(SignalError::InvalidInterests)?
            .trim()
            .to_lowercase();
        let chars = tag.chars().count();
        if chars == 0 || chars > MAX_INTEREST_CHARS || tag.chars().any(char::is_control) {
            return Err(SignalError::InvalidInterests);
        }
        if !out.contains(&tag) {
            out.push(tag);
        }
    }
    Ok(out)
}

fn chat_message(payload: Option<&Value>) -> Result<ClientEvent, SignalError> {
    let Some(Value::Object(o)) = payload else {
        return Err(SignalError::InvalidPayload);
    };
    let client_id = match o.get("clientId") {
        Some(Value::String(s)) if (1..=MAX_CLIENT_ID_CHARS).contains(&s.chars().count()) => s,
        _ => return Err(SignalError::InvalidMessage),
    };
    match o.get("type") {
        None | Some(Value::Null) => {}
        Some(Value::String(t)) if t == "text" => {}
        Some(_) => return Err(SignalError::InvalidMessage),
    }
    let Some(Value::String(content)) = o.get("content") else {
        return Err(SignalError::InvalidMessage);
    };
    let content = content.trim();
    let chars = content.chars().count();
    if chars == 0
        || chars > MAX_MESSAGE_CHARS
        || content
            .chars()
            .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(SignalError::InvalidMessage);
    }
    Ok(ClientEvent::ChatMessage {
        client_id: client_id.clone(),
        content: content.to_owned(),
    })
}

/// A guest's state, shared by all its sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestState {
    Online,
    Searching,
    InChat,
}

/// Why a chat ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    Left,
    Skipped,
    Disconnected,
    Reported,
}

impl EndReason {
    pub const ALL: [EndReason; 4] = [
        Self::Left,
        Self::Skipped,
        Self::Disconnected,
        Self::Reported,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Left => "left",
            Self::Skipped => "skipped",
            Self::Disconnected => "disconnected",
            Self::Reported => "reported",
        }
    }
}

/// `partner:presence` status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    Away,
    Online,
}

/// Chat message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    Text,
    File,
    Voice,
    System,
}

/// Who a delivered message is from, as the receiver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Sender {
    Partner,
    System,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Partner {
    pub username: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomInfo {
    pub room_id: RoomId,
    pub partner: Partner,
    /// The room's call as this guest sees it; only in `connection:established`, only when the
    /// room has a call.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<CallInfo>,
}

/// One guest's side of a call: `calling` (the caller, before the callee accepts), `ringing`
/// (the callee, before it accepts), then `connecting` until this guest's media is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    Calling,
    Ringing,
    Connecting,
    Connected,
}

/// `room.call` in `connection:established`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallInfo {
    pub state: CallState,
    pub video: bool,
}

/// Why a call ended (`call:ended`'s `reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CallEndReason {
    /// One side sent `call:end`, or this guest ended the chat.
    Hangup,
    /// The callee sent `call:reject`.
    Rejected,
    /// Nobody accepted within the ring timeout.
    Timeout,
    /// The media connection failed.
    Failed,
    /// The chat ended because of the partner (leave, next, report, disconnect, expiry).
    PartnerLeft,
}

impl CallEndReason {
    pub const ALL: [CallEndReason; 5] = [
        Self::Hangup,
        Self::Rejected,
        Self::Timeout,
        Self::Failed,
        Self::PartnerLeft,
    ];

    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Hangup => "hangup",
            Self::Rejected => "rejected",
            Self::Timeout => "timeout",
            Self::Failed => "failed",
            Self::PartnerLeft => "partner_left",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Established {
    pub session_id: SessionId,
    pub username: String,
    pub state: GuestState,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<RoomInfo>,
}

/// The live statistics object (`realtime:stats` and `GET /api/stats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Stats {
    /// Live guest sessions.
    pub total_users: u64,
    /// Guests with at least one connected socket.
    pub online_users: u64,
    /// Guests active in the last activity window (default 5 min).
    pub active_users: u64,
    /// Guests searching.
    pub available_users: u64,
    /// Guests in a chat.
    pub connected_users: u64,
}

impl std::ops::Add for Stats {
    type Output = Stats;

    fn add(self, o: Stats) -> Stats {
        Stats {
            total_users: self.total_users + o.total_users,
            online_users: self.online_users + o.online_users,
            active_users: self.active_users + o.active_users,
            available_users: self.available_users + o.available_users,
            connected_users: self.connected_users + o.connected_users,
        }
    }
}

/// A chat message's `content`: text, or the file object of a `file` / `voice` message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    File(Box<crate::files::FileInfo>),
}

impl From<&str> for Content {
    fn from(t: &str) -> Self {
        Content::Text(t.to_owned())
    }
}

impl PartialEq<&str> for Content {
    fn eq(&self, other: &&str) -> bool {
        self.text() == Some(*other)
    }
}

impl Content {
    /// The text of a text (or system) message.
    pub fn text(&self) -> Option<&str> {
        match self {
            Content::Text(t) => Some(t),
            Content::File(_) => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub id: MessageId,
    pub room_id: RoomId,
    #[serde(rename = "type")]
    pub kind: MessageType,
    pub content: Content,
    pub timestamp: u64,
    pub from: Sender,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RoomRef {
    pub room_id: RoomId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Ended {
    pub room_id: RoomId,
    pub reason: EndReason,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Sent {
    pub client_id: String,
    pub id: MessageId,
    pub timestamp: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MessageRef {
    pub id: MessageId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PresenceChange {
    pub room_id: RoomId,
    pub status: Presence,
}

/// `{}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Empty {}

/// `call:incoming`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallIncoming {
    pub room_id: RoomId,
    pub video: bool,
}

/// `call:ended`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CallEnded {
    pub room_id: RoomId,
    pub reason: CallEndReason,
}

/// `webrtc:offer` / `webrtc:answer` from the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Sdp {
    pub sdp: String,
}

/// `webrtc:ice-candidate` from the server; `sdpMid` and `sdpMLineIndex` may be `null`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(rename = "sdpMid")]
    pub sdp_mid: Option<String>,
    #[serde(rename = "sdpMLineIndex")]
    pub sdp_mline_index: Option<u16>,
}

/// A server → client event. Serializes as its payload only; `name()` is the event name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum ServerEvent {
    Established(Established),
    Stats(Stats),
    Searching(Empty),
    Found(RoomInfo),
    Ended(Ended),
    Message(ChatMessage),
    Sent(Sent),
    Delivered(MessageRef),
    Read(MessageRef),
    TypingStart(RoomRef),
    TypingStop(RoomRef),
    Presence(PresenceChange),
    CallIncoming(CallIncoming),
    CallAccepted(RoomRef),
    CallEnded(CallEnded),
    WebrtcOffer(Sdp),
    WebrtcAnswer(Sdp),
    WebrtcCandidate(IceCandidate),
    /// An `error` event the core itself emits (e.g. the media server refused an offer).
    Error(ErrorEvent<'static>),
}

impl ServerEvent {
    pub fn name(&self) -> &'static str {
        match self {
            Self::Established(_) => "connection:established",
            Self::Stats(_) => "realtime:stats",
            Self::Searching(_) => "match:searching",
            Self::Found(_) => "match:found",
            Self::Ended(_) => "chat:ended",
            Self::Message(_) => "chat:message",
            Self::Sent(_) => "chat:message:sent",
            Self::Delivered(_) => "chat:message:delivered",
            Self::Read(_) => "chat:message:read",
            Self::TypingStart(_) => "typing:start",
            Self::TypingStop(_) => "typing:stop",
            Self::Presence(_) => "partner:presence",
            Self::CallIncoming(_) => "call:incoming",
            Self::CallAccepted(_) => "call:accepted",
            Self::CallEnded(_) => "call:ended",
            Self::WebrtcOffer(_) => "webrtc:offer",
            Self::WebrtcAnswer(_) => "webrtc:answer",
            Self::WebrtcCandidate(_) => "webrtc:ice-candidate",
            Self::Error(_) => "error",
        }
    }
}

/// A successful event's ack payload (`{ ok: true, ... }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    Ok,
    State(GuestState),
    Sent {
        id: MessageId,
        timestamp: u64,
    },
    /// `{ ok: true, roomId }` (call requests and accepts).
    Room {
        room_id: RoomId,
    },
}

impl Serialize for Ack {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("ok", &true)?;
        match self {
            Self::Ok => {}
            Self::State(state) => m.serialize_entry("state", state)?,
            Self::Sent { id, timestamp } => {
                m.serialize_entry("id", id)?;
                m.serialize_entry("timestamp", timestamp)?;
            }
            Self::Room { room_id } => m.serialize_entry("roomId", room_id)?,
        }
        m.end()
    }
}

/// `{ code, message }`, the body of every refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorBody {
    pub code: &'static str,
    pub message: String,
}

impl From<SignalError> for ErrorBody {
    fn from(e: SignalError) -> Self {
        Self {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// A refused event's ack: `{ ok: false, error: { code, message } }`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    pub ok: bool,
    pub error: ErrorBody,
}

impl Refused {
    pub fn new(e: SignalError) -> Self {
        Self {
            ok: false,
            error: e.into(),
        }
    }
}

/// The `error` event for a refused event that carried no ack.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ErrorEvent<'a> {
    pub code: &'static str,
    pub message: String,
    pub event: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn chat_message_rules() {
        let ok = |v: Value| ClientEvent::parse("chat:message", Some(&v));
        assert_eq!(
            ok(json!({"clientId":"c1","type":"text","content":"  hi \n"})),
            Ok(ClientEvent::ChatMessage {
                client_id: "c1".into(),
                content: "hi".into()
            })
        );
        assert!(ok(json!({"clientId":"c1","content":"tab\tand\nnewline"})).is_ok());
        for bad in [
            json!({"clientId":"c1","content":""}),
            json!({"clientId":"c1","content":"   "}),
            json!({"clientId":"c1","content":"a".repeat(2001)}),
            json!({"clientId":"c1","content":"bell\u{7}"}),
            json!({"content":"no client id"}),
            json!({"clientId":"","content":"x"}),
            json!({"clientId":"c1","type":"file","content":"x"}),
            json!({"clientId":"c1","content":5}),
        ] {
            assert_eq!(ok(bad), Err(SignalError::InvalidMessage));
        }
        assert!(ok(json!({"clientId":"c1","content":"é".repeat(2000)})).is_ok());
        assert_eq!(
            ClientEvent::parse("chat:message", Some(&json!("hi"))),
            Err(SignalError::InvalidPayload)
        );
        assert_eq!(
            ClientEvent::parse("chat:message", None),
            Err(SignalError::InvalidPayload)
        );
    }

    #[test]
    fn interests_rules() {
        let p = |v: Value| ClientEvent::parse("match:start", Some(&v));
        assert_eq!(
            p(json!({"interests":[" Music ","music","chess"]})),
            Ok(ClientEvent::MatchStart {
                interests: vec!["music".into(), "chess".into()]
            })
        );
        assert_eq!(
            ClientEvent::parse("match:start", None),
            Ok(ClientEvent::MatchStart { interests: vec![] })
        );
        for bad in [
            json!({"interests":["a","b","c","d","e","f"]}),
            json!({"interests":[""]}),
            json!({"interests":["x".repeat(25)]}),
            json!({"interests":[1]}),
            json!({"interests":"music"}),
        ] {
            assert_eq!(p(bad), Err(SignalError::InvalidInterests));
        }
    }

    /// Found by the `signaling_parse` fuzz target: 'İ' lowercases to two characters, so 24 of
    /// them passed the 24-character check and were kept as 48.
    #[test]
    fn interests_are_limited_after_lowercasing() {
        let p = |v: Value| ClientEvent::parse("match:start", Some(&v));
        assert_eq!(
            p(json!({ "interests": ["\u{130}".repeat(24)] })),
            Err(SignalError::InvalidInterests)
        );
        assert_eq!(
            p(json!({ "interests": ["\u{130}".repeat(12)] })),
            Ok(ClientEvent::MatchStart {
                interests: vec!["i\u{307}".repeat(12)]
            })
        );
    }

    #[test]
    fn unknown_event_and_read() {
        assert_eq!(
            ClientEvent::parse("nope", None),
            Err(SignalError::UnknownEvent)
        );
        assert_eq!(
            ClientEvent::parse("chat:message:read", None),
            Err(SignalError::InvalidPayload)
        );
        assert_eq!(
            ClientEvent::parse("chat:message:read", Some(&json!({"id":"nothex"}))),
            Err(SignalError::UnknownMessage)
        );
    }

    #[test]
    fn server_events_serialize_as_payload() {
        let e = ServerEvent::Searching(Empty {});
        assert_eq!(serde_json::to_string(&e).unwrap(), "{}");
        let e = ServerEvent::Ended(Ended {
            room_id: RoomId::from_raw(1),
            reason: EndReason::Left,
        });
        assert_eq!(
            serde_json::to_value(&e).unwrap(),
            json!({"roomId":"00000000000000000000000000000001","reason":"left"})
        );
        assert_eq!(
            serde_json::to_value(Ack::State(GuestState::InChat)).unwrap(),
            json!({"ok":true,"state":"in_chat"})
        );
        assert_eq!(
            serde_json::to_value(Refused::new(SignalError::NotInChat)).unwrap()["error"]["code"],
            json!("not_in_chat")
        );
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            ".{0,30}".prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("clientId".to_string()),
                        Just("content".to_string()),
                        Just("interests".to_string()),
                        Just("id".to_string()),
                        Just("reason".to_string()),
                        Just("video".to_string()),
                        Just("sdp".to_string()),
                        Just("candidate".to_string()),
                        Just("sdpMid".to_string()),
                        Just("sdpMLineIndex".to_string()),
                        ".{0,8}".prop_map(String::from)
                    ],
                    inner,
                    0..6
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn parse_never_panics_and_accepts_only_valid(name in prop::sample::select(ClientEvent::NAMES.to_vec()), v in arb_json()) {
            if let Ok(ClientEvent::ChatMessage { client_id, content }) = ClientEvent::parse(name, Some(&v)) {
                prop_assert!(!content.is_empty() && content.chars().count() <= MAX_MESSAGE_CHARS);
                prop_assert_eq!(content.trim(), content.as_str());
                prop_assert!(!client_id.is_empty());
            }
            if let Ok(ClientEvent::WebrtcOffer { sdp } | ClientEvent::WebrtcAnswer { sdp }) = ClientEvent::parse(name, Some(&v)) {
                prop_assert!(sdp.len() <= MAX_SDP_BYTES && sdp.starts_with("v=0"));
            }
            if let Ok(ClientEvent::WebrtcCandidate { candidate, sdp_mid, sdp_mline_index }) = ClientEvent::parse(name, Some(&v)) {
                prop_assert!(candidate.is_empty() || candidate.starts_with("candidate:"));
                prop_assert!(sdp_mid.is_none_or(|m| m.chars().count() <= MAX_SDP_MID_CHARS));
                prop_assert!(sdp_mline_index.is_none_or(|i| i <= 255));
            }
        }
    }
}
