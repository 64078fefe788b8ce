//! Wire types: client events as parsed from Socket.IO payloads, server events as serialized to
//! them. Names and shapes are fixed by docs/protocol.md.

use serde::Serialize;
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

/// A client → server event, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    MatchStart { interests: Vec<String> },
    MatchCancel,
    MatchNext { interests: Vec<String> },
    ChatLeave,
    ChatReport { reason: Option<String> },
    ChatMessage { client_id: String, content: String },
    ChatRead { id: MessageId },
    TypingStart,
    TypingStop,
}

/// Which rate-limit bucket (and metrics label) an event belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    Match,
    Message,
    Typing,
    Other,
}

impl ClientEvent {
    /// Every event name a client may send.
    pub const NAMES: [&'static str; 9] = [
        "match:start",
        "match:cancel",
        "match:next",
        "chat:leave",
        "chat:report",
        "chat:message",
        "chat:message:read",
        "typing:start",
        "typing:stop",
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
            Self::ChatLeave | Self::ChatReport { .. } | Self::ChatRead { .. } => EventKind::Other,
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
        }
    }
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
        let tag = tag.as_str().ok_or(SignalError::InvalidInterests)?.trim();
        let chars = tag.chars().count();
        if chars == 0 || chars > MAX_INTEREST_CHARS || tag.chars().any(char::is_control) {
            return Err(SignalError::InvalidInterests);
        }
        let tag = tag.to_lowercase();
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageType {
    Text,
    File,
    Voice,
    System,
}

/// Who a delivered message is from, as the receiver sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
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

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChatMessage {
    pub id: MessageId,
    pub room_id: RoomId,
    #[serde(rename = "type")]
    pub kind: MessageType,
    pub content: String,
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
        }
    }
}

/// A successful event's ack payload (`{ ok: true, ... }`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    Ok,
    State(GuestState),
    Sent { id: MessageId, timestamp: u64 },
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
        }
    }
}
