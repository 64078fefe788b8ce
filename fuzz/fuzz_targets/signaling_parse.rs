//! `ClientEvent::parse` on an arbitrary event name and JSON payload.
//!
//! Input: `<name>\0<payload JSON>`; without a NUL byte the whole input is the name and there
//! is no payload. A payload that is not JSON is passed as a JSON string instead. Whatever it
//! accepts must hold the documented limits of its fields (docs/protocol.md, wire.rs).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serde_json::Value;
use tandem_signaling::wire::{
    MAX_CANDIDATE_CHARS, MAX_CLIENT_ID_CHARS, MAX_INTERESTS, MAX_INTEREST_CHARS, MAX_MESSAGE_CHARS,
    MAX_REPORT_CHARS, MAX_SDP_BYTES, MAX_SDP_MID_CHARS,
};
use tandem_signaling::ClientEvent;

fuzz_target!(|data: &[u8]| {
    let (name, payload) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], Some(&data[i + 1..])),
        None => (data, None),
    };
    let name = String::from_utf8_lossy(name);
    let payload = payload.map(|p| {
        serde_json::from_slice::<Value>(p)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(p).into_owned()))
    });
    let Ok(event) = ClientEvent::parse(&name, payload.as_ref()) else {
        return;
    };
    assert_eq!(event.name(), name, "parsed under another name");
    assert!(ClientEvent::NAMES.contains(&event.name()));
    let chars = |s: &str| s.chars().count();
    match &event {
        ClientEvent::MatchStart { interests } | ClientEvent::MatchNext { interests } => {
            assert!(interests.len() <= MAX_INTERESTS);
            for (i, tag) in interests.iter().enumerate() {
                assert!(!tag.is_empty() && tag.trim() == tag, "{tag:?}");
                assert!(
                    chars(tag) <= MAX_INTEREST_CHARS,
                    "interest too long: {tag:?}"
                );
                assert!(!tag.chars().any(char::is_control), "{tag:?}");
                assert_eq!(*tag, tag.to_lowercase(), "interest not lowercased");
                assert!(!interests[..i].contains(tag), "duplicate interest");
            }
        }
        ClientEvent::ChatReport { reason } => {
            if let Some(r) = reason {
                assert!(chars(r) <= MAX_REPORT_CHARS);
            }
        }
        ClientEvent::ChatMessage { client_id, content } => {
            assert!((1..=MAX_CLIENT_ID_CHARS).contains(&chars(client_id)));
            assert!((1..=MAX_MESSAGE_CHARS).contains(&chars(content)));
            assert_eq!(content.trim(), content);
            assert!(!content
                .chars()
                .any(|c| c.is_control() && c != '\n' && c != '\t'));
        }
        ClientEvent::WebrtcOffer { sdp } | ClientEvent::WebrtcAnswer { sdp } => {
            assert!(sdp.len() <= MAX_SDP_BYTES && sdp.starts_with("v=0"));
        }
        ClientEvent::WebrtcCandidate {
            candidate,
            sdp_mid,
            sdp_mline_index,
        } => {
            assert!(candidate.is_empty() || candidate.starts_with("candidate:"));
            assert!(chars(candidate) <= MAX_CANDIDATE_CHARS);
            assert!(!candidate.chars().any(char::is_control));
            if let Some(m) = sdp_mid {
                assert!(chars(m) <= MAX_SDP_MID_CHARS && !m.chars().any(char::is_control));
            }
            assert!(sdp_mline_index.is_none_or(|i| i <= 255));
        }
        ClientEvent::ChatRead { id } => {
            // The id's wire form parses back to itself.
            assert_eq!(
                tandem_signaling::MessageId::parse(&id.to_string()),
                Some(*id)
            );
        }
        ClientEvent::MatchCancel
        | ClientEvent::ChatLeave
        | ClientEvent::TypingStart
        | ClientEvent::TypingStop
        | ClientEvent::CallRequest { .. }
        | ClientEvent::CallAccept
        | ClientEvent::CallReject
        | ClientEvent::CallEnd => {}
    }
});
