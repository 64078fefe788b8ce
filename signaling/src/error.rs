//! The signaling core's one error type. Every variant is a refusal a client may see: its
//! `code()` is the wire code and its Display is the human message (never an internal detail).

/// A refused request or event. Nothing changed in the core when one is returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignalError {
    #[error("The token is missing, invalid or expired, or its session is gone.")]
    Unauthorized,
    #[error("Too many requests; slow down and try again.")]
    RateLimited,
    #[error("The server is busy; try again later.")]
    ServerBusy,
    #[error("Usernames are 1-24 letters, digits, spaces, '_' or '-'.")]
    InvalidUsername,
    #[error("The event's payload has the wrong shape.")]
    InvalidPayload,
    #[error("Interests are at most 5 tags of 1-24 characters each.")]
    InvalidInterests,
    #[error("You are already searching for a partner.")]
    AlreadySearching,
    #[error("You are in a chat; leave it first.")]
    AlreadyInChat,
    #[error("You are not searching.")]
    NotSearching,
    #[error("You are not in a chat.")]
    NotInChat,
    #[error("Messages need a clientId and 1-2000 characters of text without control characters.")]
    InvalidMessage,
    #[error("Your partner is away and has too many unread messages; wait for them to return.")]
    PartnerAwayQueueFull,
    #[error("No such message from your partner in this chat.")]
    UnknownMessage,
    #[error("A report reason is at most 200 characters.")]
    InvalidReport,
    #[error("Unknown event.")]
    UnknownEvent,
    #[error("There is no call in this chat for that.")]
    NoCall,
    #[error("This chat already has a call.")]
    CallInProgress,
    #[error(
        "The session description is missing, too long or malformed, or no answer was expected."
    )]
    InvalidSdp,
    #[error("The ICE candidate is too long or malformed.")]
    InvalidCandidate,
    #[error("The upload must be a multipart form with one non-empty file.")]
    InvalidUpload,
    #[error("The file is too large.")]
    FileTooLarge,
    #[error("This type of file cannot be shared, or it is not what its name or type says.")]
    UnsupportedType,
    #[error("Voice notes are at most 5 minutes long.")]
    VoiceTooLong,
    #[error("The server has no room for more files right now; try again later.")]
    StorageFull,
    #[error("The file link is not valid.")]
    InvalidSignature,
    #[error("The file has expired.")]
    Expired,
    #[error("This file belongs to another chat.")]
    Forbidden,
    #[error("The file does not exist or was deleted when its chat ended.")]
    NotFound,
    #[error("Too many guest sessions are open from your network; try again later.")]
    TooManySessions,
    #[error("Another server this needs cannot be reached right now; try again.")]
    ServiceUnavailable,
}

impl SignalError {
    /// The snake_case wire code.
    pub const fn code(self) -> &'static str {
        match self {
            Self::Unauthorized => "unauthorized",
            Self::RateLimited => "rate_limited",
            Self::ServerBusy => "server_busy",
            Self::InvalidUsername => "invalid_username",
            Self::InvalidPayload => "invalid_payload",
            Self::InvalidInterests => "invalid_interests",
            Self::AlreadySearching => "already_searching",
            Self::AlreadyInChat => "already_in_chat",
            Self::NotSearching => "not_searching",
            Self::NotInChat => "not_in_chat",
            Self::InvalidMessage => "invalid_message",
            Self::PartnerAwayQueueFull => "partner_away_queue_full",
            Self::UnknownMessage => "unknown_message",
            Self::InvalidReport => "invalid_report",
            Self::UnknownEvent => "unknown_event",
            Self::NoCall => "no_call",
            Self::CallInProgress => "call_in_progress",
            Self::InvalidSdp => "invalid_sdp",
            Self::InvalidCandidate => "invalid_candidate",
            Self::InvalidUpload => "invalid_upload",
            Self::FileTooLarge => "file_too_large",
            Self::UnsupportedType => "unsupported_type",
            Self::VoiceTooLong => "voice_too_long",
            Self::StorageFull => "storage_full",
            Self::InvalidSignature => "invalid_signature",
            Self::Expired => "expired",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::TooManySessions => "too_many_sessions",
            Self::ServiceUnavailable => "service_unavailable",
        }
    }

    /// The variant of a wire code (`None` for a code this build does not know).
    pub fn from_code(code: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|e| e.code() == code)
    }

    /// Every variant, for metrics label pre-registration and docs checks.
    pub const ALL: [SignalError; 30] = [
        Self::Unauthorized,
        Self::RateLimited,
        Self::ServerBusy,
        Self::InvalidUsername,
        Self::InvalidPayload,
        Self::InvalidInterests,
        Self::AlreadySearching,
        Self::AlreadyInChat,
        Self::NotSearching,
        Self::NotInChat,
        Self::InvalidMessage,
        Self::PartnerAwayQueueFull,
        Self::UnknownMessage,
        Self::InvalidReport,
        Self::UnknownEvent,
        Self::NoCall,
        Self::CallInProgress,
        Self::InvalidSdp,
        Self::InvalidCandidate,
        Self::InvalidUpload,
        Self::FileTooLarge,
        Self::UnsupportedType,
        Self::VoiceTooLong,
        Self::StorageFull,
        Self::InvalidSignature,
        Self::Expired,
        Self::Forbidden,
        Self::NotFound,
        Self::TooManySessions,
        Self::ServiceUnavailable,
    ];
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn all_is_complete_and_codes_are_unique() {
        // Adding a variant breaks this match until it is also counted here (and in ALL).
        let ordinal = |e: SignalError| match e {
            SignalError::Unauthorized => 0,
            SignalError::RateLimited => 1,
            SignalError::ServerBusy => 2,
            SignalError::InvalidUsername => 3,
            SignalError::InvalidPayload => 4,
            SignalError::InvalidInterests => 5,
            SignalError::AlreadySearching => 6,
            SignalError::AlreadyInChat => 7,
            SignalError::NotSearching => 8,
            SignalError::NotInChat => 9,
            SignalError::InvalidMessage => 10,
            SignalError::PartnerAwayQueueFull => 11,
            SignalError::UnknownMessage => 12,
            SignalError::InvalidReport => 13,
            SignalError::UnknownEvent => 14,
            SignalError::NoCall => 15,
            SignalError::CallInProgress => 16,
            SignalError::InvalidSdp => 17,
            SignalError::InvalidCandidate => 18,
            SignalError::InvalidUpload => 19,
            SignalError::FileTooLarge => 20,
            SignalError::UnsupportedType => 21,
            SignalError::VoiceTooLong => 22,
            SignalError::StorageFull => 23,
            SignalError::InvalidSignature => 24,
            SignalError::Expired => 25,
            SignalError::Forbidden => 26,
            SignalError::NotFound => 27,
            SignalError::TooManySessions => 28,
            SignalError::ServiceUnavailable => 29,
        };
        for (i, e) in SignalError::ALL.iter().enumerate() {
            assert_eq!(ordinal(*e), i, "{e:?}");
        }
        let codes: HashSet<&str> = SignalError::ALL.iter().map(|e| e.code()).collect();
        assert_eq!(codes.len(), SignalError::ALL.len());
        assert!(codes
            .iter()
            .all(|c| c.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')));
    }
}
