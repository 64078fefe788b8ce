//! Identifier newtypes. Ids travel as lowercase hex strings on the wire.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

macro_rules! hex_id {
    ($(#[$doc:meta])* $name:ident, $raw:ty, $width:literal) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name($raw);

        impl $name {
            /// Wraps raw bits (ids are minted from the core's seeded RNG).
            pub const fn from_raw(raw: $raw) -> Self {
                Self(raw)
            }

            /// The raw bits.
            pub const fn into_raw(self) -> $raw {
                self.0
            }

            /// Parses the wire form: exactly the hex width, lowercase or uppercase.
            pub fn parse(s: &str) -> Option<Self> {
                if s.len() != $width || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return None;
                }
                <$raw>::from_str_radix(s, 16).ok().map(Self)
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!("{:0", stringify!($width), "x}"), self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "({})"), self)
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).ok_or_else(|| serde::de::Error::custom("malformed id"))
            }
        }
    };
}

hex_id!(
    /// A guest session; the `sub` of its tokens.
    SessionId,
    u128,
    32
);
hex_id!(
    /// A chat between two guests.
    RoomId,
    u128,
    32
);
hex_id!(
    /// One shared file.
    FileId,
    u128,
    32
);
hex_id!(
    /// A node of a cluster (random 128 bits, made at its start).
    NodeId,
    u128,
    32
);
hex_id!(
    /// One chat message.
    MessageId,
    u64,
    16
);

/// The client address a guest was created from, as the shell keys its per-address limits (an
/// IPv4 address, or the /64 of an IPv6 one). Opaque to the core, which only counts the open
/// sessions of each key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct ClientKey(pub u128);

/// One Socket.IO connection, numbered by the shell.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
pub struct ConnId(pub u64);

/// One call between the two guests of a room, numbered by the core from 1 (a clustered core
/// from a random start, so that the calls of different nodes never share an id: the id is
/// the grant of the call's TURN credentials, which any node may revoke). Never on the client
/// wire: it names a call between the core and the media server, and between the nodes of a
/// cluster (a JSON number).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallId(pub u64);

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn session_id_round_trips(raw in any::<u128>()) {
            let id = SessionId::from_raw(raw);
            prop_assert_eq!(SessionId::parse(&id.to_string()), Some(id));
        }

        #[test]
        fn message_id_parse_never_panics(s in ".{0,40}") {
            let _ = MessageId::parse(&s);
        }
    }

    #[test]
    fn wrong_width_or_digits_refused() {
        assert_eq!(MessageId::parse("abc"), None);
        assert_eq!(MessageId::parse("zzzzzzzzzzzzzzzz"), None);
        assert_eq!(MessageId::parse("+fffffffffffffff"), None);
        assert!(MessageId::parse("00000000000000ff").is_some());
    }
}
