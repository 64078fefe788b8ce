use thiserror::Error;

/// Why the TURN core refused something (configuration, parsing of operator input, stream
/// framing). Network input never produces an error value: bad datagrams are dropped and counted.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum TurnError {
    #[error("invalid TURN configuration: {0}")]
    InvalidConfig(String),
    #[error("invalid CIDR {0:?}: expected an IP address, optionally followed by /prefix")]
    InvalidCidr(String),
    #[error("the stream does not start with a STUN message or a ChannelData frame")]
    BadFrame,
}
