//! The TURN core's settings.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::RangeInclusive;
use std::time::Duration;

use stun_rs::attributes::stun::{Realm, Software};

use crate::cidr::Cidr;
use crate::error::TurnError;

/// The TURN core's settings. [`Config::default`] has every limit at its documented default;
/// `auth_secret` must be set. tandem-config's `--turn-realm`, `--turn-relay-ports`,
/// `--turn-max-allocations-per-user`, `--turn-max-permissions`, `--turn-open-relay` and
/// `--turn-allow-loopback-peers` default to these values.
#[derive(Debug, Clone)]
pub struct Config {
    /// REALM sent to clients and mixed into the long-term key.
    pub realm: String,
    /// Shared secret of the TURN REST scheme (see [`crate::rest_credentials`]). Not empty.
    pub auth_secret: Vec<u8>,
    /// Address advertised in XOR-RELAYED-ADDRESS for IPv4 allocations (the public address of
    /// the relay sockets); `None` refuses IPv4 allocations with 440.
    pub relay_ipv4: Option<Ipv4Addr>,
    /// Same for IPv6 allocations (REQUESTED-ADDRESS-FAMILY IPv6).
    pub relay_ipv6: Option<Ipv6Addr>,
    /// Relay ports handed out.
    pub port_range: RangeInclusive<u16>,
    /// Allocation lifetime when the client asks for less (or nothing).
    pub default_lifetime: Duration,
    /// Longest allocation lifetime granted.
    pub max_lifetime: Duration,
    pub permission_lifetime: Duration,
    pub channel_lifetime: Duration,
    /// How long a NONCE stays valid; past it requests get 438 and a fresh one.
    pub nonce_lifetime: Duration,
    /// How long the shell has to report a relay bind before the Allocate fails with 508.
    pub bind_timeout: Duration,
    /// Relay ports tried for one Allocate before giving up with 508.
    pub bind_attempts: u32,
    /// Allocations (including ones waiting for their bind) at once; past it 508.
    pub max_allocations: usize,
    /// Allocations per user (the session id of the REST username); past it 486.
    pub max_allocations_per_user: usize,
    /// Peer IP permissions per allocation; past it 508.
    pub max_permissions_per_allocation: usize,
    /// Channels per allocation; past it 508.
    pub max_channels_per_allocation: usize,
    /// Relayed payload bytes per second per allocation (both directions together), with a
    /// burst of one second's worth (at least one maximal datagram); `None`: unlimited.
    pub bytes_per_sec_per_allocation: Option<u64>,
    /// Peers always allowed, checked first (wins over everything).
    pub allow_peers: Vec<Cidr>,
    /// Peers refused on top of the built-in ranges.
    pub deny_peers: Vec<Cidr>,
    /// Let loopback peers through (tests only).
    pub allow_loopback_peers: bool,
    /// Exact addresses always allowed (tandem's own media addresses).
    pub always_allow: Vec<SocketAddr>,
    /// A general relay: any peer the allow/deny rules let through. Off (the default), only
    /// `always_allow`, `allow_peers` (and loopback with `allow_loopback_peers`) are reachable.
    pub open_relay: bool,
    /// Every address of the host itself (all its interfaces): refused as peers in every mode,
    /// except the exact `always_allow` addresses (and loopback with `allow_loopback_peers`).
    pub host_addresses: Vec<IpAddr>,
    /// Unauthenticated answers (Binding responses, 401/438 challenges, 400/420 before
    /// authentication) to one UDP source (an IPv4 address or an IPv6 /64) per second, so the
    /// server cannot be used to reflect traffic at a spoofed victim.
    pub unauth_per_sec: u32,
    /// Burst of such answers to one source.
    pub unauth_burst: u32,
    /// Sources tracked for that limit at most; past it unauthenticated answers to new
    /// sources are dropped (fail closed).
    pub max_unauth_sources: usize,
    /// How long a revoked grant (see [`crate::Server::handle_grant_revoked`]) is remembered
    /// after it stops working: at least the lifetime of the credentials that carry it.
    pub revoked_grant_memory: Duration,
    /// Revoked grants remembered at most (the oldest is forgotten first).
    pub max_revoked_grants: usize,
    /// SOFTWARE attribute of responses.
    pub software: String,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            realm: "tandem".to_owned(),
            auth_secret: Vec::new(),
            relay_ipv4: Some(Ipv4Addr::LOCALHOST),
            relay_ipv6: None,
            port_range: 49152..=65535,
            default_lifetime: Duration::from_secs(600),
            max_lifetime: Duration::from_secs(3600),
            permission_lifetime: Duration::from_secs(300),
            channel_lifetime: Duration::from_secs(600),
            nonce_lifetime: Duration::from_secs(600),
            bind_timeout: Duration::from_secs(5),
            bind_attempts: 4,
            max_allocations: 5_000,
            max_allocations_per_user: 10,
            max_permissions_per_allocation: 64,
            max_channels_per_allocation: 64,
            // 5 Mbit/s: a video call's worth, not a free bulk relay.
            bytes_per_sec_per_allocation: Some(625_000),
            allow_peers: Vec::new(),
            deny_peers: Vec::new(),
            allow_loopback_peers: false,
            always_allow: Vec::new(),
            open_relay: false,
            host_addresses: Vec::new(),
            unauth_per_sec: 20,
            unauth_burst: 40,
            max_unauth_sources: 65_536,
            revoked_grant_memory: Duration::from_secs(7200),
            max_revoked_grants: 100_000,
            software: "tandem".to_owned(),
        }
    }
}

impl Config {
    /// Checks the settings; [`crate::Server::new`] calls it.
    pub fn validate(&self) -> Result<(), TurnError> {
        let bad = |s: &str| Err(TurnError::InvalidConfig(s.to_owned()));
        if self.auth_secret.is_empty() {
            return bad("auth_secret is empty");
        }
        if self.realm.is_empty() || Realm::new(&self.realm).is_err() {
            return bad("realm must be a non-empty STUN REALM (at most 127 characters)");
        }
        if Software::new(&self.software).is_err() {
            return bad("software must be at most 127 characters");
        }
        if self.relay_ipv4.is_none() && self.relay_ipv6.is_none() {
            return bad("one of relay_ipv4 / relay_ipv6 is needed");
        }
        if self.port_range.is_empty() || *self.port_range.start() == 0 {
            return bad("port_range must be a non-empty range of non-zero ports");
        }
        let secs = |d: Duration| d.as_secs();
        if secs(self.default_lifetime) == 0
            || self.default_lifetime > self.max_lifetime
            || secs(self.max_lifetime) > u64::from(u32::MAX)
        {
            return bad("need 0 < default_lifetime <= max_lifetime < 2^32 s");
        }
        if secs(self.permission_lifetime) == 0
            || secs(self.channel_lifetime) == 0
            || secs(self.nonce_lifetime) == 0
            || self.bind_timeout.is_zero()
        {
            return bad("lifetimes and timeouts must be at least a second");
        }
        if self.bind_attempts == 0 {
            return bad("bind_attempts must be at least 1");
        }
        if self.max_allocations == 0
            || self.max_allocations_per_user == 0
            || self.max_permissions_per_allocation == 0
            || self.max_channels_per_allocation == 0
        {
            return bad("allocation, permission and channel limits must be at least 1");
        }
        if self.unauth_per_sec == 0
            || self.unauth_burst == 0
            || self.max_unauth_sources == 0
            || self.max_revoked_grants == 0
        {
            return bad("unauthenticated-answer and revocation limits must be at least 1");
        }
        if self.bytes_per_sec_per_allocation == Some(0) {
            return bad("bytes_per_sec_per_allocation must be positive (or unset)");
        }
        Ok(())
    }
}
