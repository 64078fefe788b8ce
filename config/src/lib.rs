//! Typed, layered configuration for the tandem server.
//!
//! Settings are read, from lowest to highest precedence, from:
//!
//! 1. built-in defaults,
//! 2. a TOML file (`--config <file>` or `TANDEM_CONFIG`), whose keys are the
//!    field names below (`match_burst = 5`),
//! 3. environment variables `TANDEM_<FIELD NAME IN CAPITALS>`,
//! 4. command-line flags `--<field-name-with-dashes>`.
//!
//! The result is validated once; every error names the offending key and
//! where its value came from. The crate does no network I/O and needs no
//! async runtime. [`invocation`] also recognises `tandem check-config`, which
//! validates the same way and prints the [`Effective`] settings, each with
//! its [`Origin`], instead of starting.
//!
//! Settings are grouped by `--help` section (HTTP and limits, Chat, Media,
//! TURN, Files, Cluster, Logs). Those a core takes default to the core's own
//! `Default` (`tandem_signaling::CoreConfig`, `tandem_media::MediaConfig`,
//! `tandem_turn::Config`), so that no default is written twice.
//!
//! ```no_run
//! let config = tandem_config::load().unwrap_or_else(|err| err.exit());
//! println!("listening on {}", config.bind);
//! ```

use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
pub use ipnet::IpNet;

mod effective;
mod error;
mod redis;
mod validate;

pub use effective::{Effective, Setting};
pub use error::ConfigError;
pub use redis::{RedisHost, RedisTarget, RedisUrl, DEFAULT_REDIS_PORT};

/// A string that must never end up in logs: `Debug` and `Display` print
/// `[redacted]`. Call [`Secret::expose`] where the real value is needed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself. Use only where it is really needed.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl From<String> for Secret {
    fn from(value: String) -> Self {
        Secret(value)
    }
}

impl From<&str> for Secret {
    fn from(value: &str) -> Self {
        Secret(value.to_owned())
    }
}

impl<'de> serde::Deserialize<'de> for Secret {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer).map(Secret)
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// An inclusive range of ports, written `MIN-MAX` (`49152-65535`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    /// How many ports the range holds.
    pub fn len(&self) -> u32 {
        u32::from(self.max) - u32::from(self.min) + 1
    }

    /// Never true: a valid range holds at least one port.
    pub fn is_empty(&self) -> bool {
        false
    }

    pub fn contains(&self, port: u16) -> bool {
        (self.min..=self.max).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (a, b) = s
            .trim()
            .split_once('-')
            .ok_or_else(|| format!("`{s}` is not a port range; write MIN-MAX, e.g. 49152-65535"))?;
        let port = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| format!("`{}` is not a port (1-65535)", p.trim()))
        };
        let (min, max) = (port(a)?, port(b)?);
        if min == 0 || min > max {
            return Err(format!(
                "`{s}` is not a port range: MIN must be at least 1 and at most MAX"
            ));
        }
        Ok(PortRange { min, max })
    }
}

impl<'de> serde::Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One entry of the settings table, for error messages, env lookup and
/// `check-config`.
#[derive(Clone, Copy, Debug)]
struct Field {
    /// TOML key and `Config` field name.
    key: &'static str,
    /// Environment variable.
    env: &'static str,
    /// The `--help` section (clap `help_heading`) the setting is listed under.
    section: &'static str,
}

impl Field {
    fn flag(&self) -> String {
        format!("--{}", self.key.replace('_', "-"))
    }
}

/// Where a setting's value came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Origin {
    /// The built-in default.
    Default,
    /// The TOML file (`--config` or `TANDEM_CONFIG`).
    File,
    /// A `TANDEM_*` environment variable.
    Env,
    /// A command-line flag.
    Flag,
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad`, so that `{:<7}` aligns it.
        f.pad(match self {
            Origin::Default => "default",
            Origin::File => "file",
            Origin::Env => "env",
            Origin::Flag => "flag",
        })
    }
}

/// The `--help` line of one setting: its doc, default and env var.
fn help_line(doc: &[&str], default: &str, env: &str) -> String {
    let text = doc
        .iter()
        .map(|line| line.trim())
        .collect::<Vec<_>>()
        .join(" ");
    format!("{text} [default: {default}] [env: {env}]")
}

/// Config type of a setting: `req` settings always have a value, `opt`
/// settings may be absent.
macro_rules! field_type {
    (req $t:ty) => { $t };
    (opt $t:ty) => { Option<$t> };
}

/// Final value of a setting from the winning layer's value and the default.
macro_rules! pick {
    (req $value:expr, $default:expr) => {
        $value.unwrap_or_else(|| $default)
    };
    (opt $value:expr, $default:expr) => {
        $value.or($default)
    };
}

/// What `--help` (and the README) show as a setting's default: the `shown`
/// text when there is one (settings without a value by default), else the
/// default value itself, so that no number is written twice.
macro_rules! shown_text {
    ($shown:literal ; $default:expr) => {
        String::from($shown)
    };
    (; $default:expr) => {
        ($default).to_string()
    };
}

/// The same, for the rustdoc of a `Config` field.
macro_rules! shown_doc {
    ($shown:literal ; $default:expr) => {
        $shown
    };
    (; $default:expr) => {
        concat!("`", stringify!($default), "`")
    };
}

/// Generates, from one list of settings grouped by `--help` section, the
/// public `Config`, its `Default`, the all-`Option` `Layer` parsed from
/// flags, environment and the TOML file, the table of settings, and the
/// layer merge.
///
/// An entry gives its doc (the `--help` text), `name: req|opt Type =
/// default;`, then `shown "…"` (what `--help` says the default is; only for
/// settings whose default is no value, as the others show their value), the
/// environment variable and any further clap `arg(…)` attributes.
macro_rules! settings {
    ($(
        $section:literal {
            $(
                $(#[doc = $doc:literal])+
                $name:ident : $kind:ident $ty:ty = $default:expr;
                $(shown $shown:literal,)? env $env:literal $(, arg($($arg:tt)+))?;
            )+
        }
    )+) => {
        /// The server's whole configuration, validated.
        ///
        /// Build it with [`load`] (or [`load_from`]); `Config::default()`
        /// gives the built-in defaults. `Debug` never shows secrets.
        #[derive(Clone, Debug)]
        pub struct Config {
            $($(
                $(#[doc = $doc])+
                #[doc = ""]
                #[doc = concat!(
                    "Default: ", shown_doc!($($shown)? ; $default), ". TOML key `",
                    stringify!($name), "`, env `", $env, "`; `--help` section \"", $section, "\"."
                )]
                pub $name: field_type!($kind $ty),
            )+)+
            /// The TOML file the settings were read from, if any (for logging).
            pub config_file: Option<PathBuf>,
        }

        impl Default for Config {
            fn default() -> Self {
                Config {
                    $($( $name: pick!($kind None::<$ty>, $default), )+)+
                    config_file: None,
                }
            }
        }

        /// One source of settings; `None` means "not set here". Every flag is
        /// global, so that it is accepted after a subcommand too
        /// (`tandem check-config --bind …`).
        #[derive(clap::Args, Debug, Default)]
        struct Layer {
            $($(
                #[arg(
                    long, global = true, help_heading = $section,
                    help = help_line(&[$($doc),+], &shown_text!($($shown)? ; $default), $env)
                    $(, $($arg)+)?
                )]
                $name: Option<$ty>,
            )+)+
        }

        /// Every setting, in declaration order.
        const FIELDS: &[Field] = &[
            $($( Field { key: stringify!($name), env: $env, section: $section }, )+)+
        ];

        /// What `--help` says each setting defaults to, in [`FIELDS`] order.
        fn shown_defaults() -> Vec<String> {
            vec![ $($( shown_text!($($shown)? ; $default), )+)+ ]
        }

        impl Config {
            /// Each setting's value as `check-config` prints it, in [`FIELDS`]
            /// order; `None` when it has none (unset, or an empty list).
            fn shown_values(&self) -> Vec<Option<String>> {
                vec![ $($( effective::Show::show(&self.$name), )+)+ ]
            }
        }

        impl Layer {
            /// Fields set in `self` win over those of `lower`.
            fn or(self, lower: Layer) -> Layer {
                Layer { $($( $name: self.$name.or(lower.$name), )+)+ }
            }

            /// Reads a parsed TOML table; every key must be a setting.
            fn from_table(mut table: toml::Table, path: &Path) -> Result<Layer, ConfigError> {
                let mut layer = Layer::default();
                $($(
                    if let Some(value) = table.remove(stringify!($name)) {
                        let parsed = value.try_into::<$ty>().map_err(|err| ConfigError::FileValue {
                            path: path.to_owned(),
                            key: stringify!($name),
                            message: err.message().trim().to_owned(),
                        })?;
                        layer.$name = Some(parsed);
                    }
                )+)+
                if !table.is_empty() {
                    let keys: Vec<String> = table.keys().cloned().collect();
                    return Err(ConfigError::unknown_keys(path, keys));
                }
                Ok(layer)
            }
        }

        /// Merges the layers (flags over env over file over defaults) and
        /// records where each setting came from, in [`FIELDS`] order.
        fn resolve(flags: Layer, env: Layer, file: Layer) -> (Config, Vec<Origin>) {
            let mut origins = Vec::with_capacity(FIELDS.len());
            let config = Config {
                $($(
                    $name: {
                        let (value, origin) = first(flags.$name, env.$name, file.$name);
                        origins.push(origin);
                        pick!($kind value, $default)
                    },
                )+)+
                config_file: None,
            };
            (config, origins)
        }
    };
}

/// The highest-precedence value among the three layers.
fn first<T>(flag: Option<T>, env: Option<T>, file: Option<T>) -> (Option<T>, Origin) {
    match (flag, env, file) {
        (Some(v), _, _) => (Some(v), Origin::Flag),
        (None, Some(v), _) => (Some(v), Origin::Env),
        (None, None, Some(v)) => (Some(v), Origin::File),
        (None, None, None) => (None, Origin::Default),
    }
}

/// The signaling core's own defaults: the settings it takes (limits, timeouts)
/// default to them, so that each default is written once, in the core.
fn signaling() -> tandem_signaling::CoreConfig {
    tandem_signaling::CoreConfig::default()
}

/// The media core's own defaults (its call connect timeout, port and capacity).
fn media() -> tandem_media::MediaConfig {
    tandem_media::MediaConfig::default()
}

/// The TURN core's own defaults (realm, relay ports, quotas, relay policy).
fn turn() -> tandem_turn::Config {
    tandem_turn::Config::default()
}

/// Whole seconds of a core's duration.
fn secs(duration: Duration) -> u64 {
    duration.as_secs()
}

/// Whole milliseconds of a core's duration.
fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// A core's count as a setting's `u32`.
fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A core's port range as a setting.
fn port_range(range: std::ops::RangeInclusive<u16>) -> PortRange {
    PortRange {
        min: *range.start(),
        max: *range.end(),
    }
}

settings! {
    "HTTP and limits" {
        /// Address and port to listen on
        bind: req SocketAddr = SocketAddr::from(([0, 0, 0, 0], 8080));
            env "TANDEM_BIND", arg(value_name = "ADDR");

        /// Threads serving HTTP and Socket.IO (media and TURN have their own). One
        /// costs the least CPU per message (no wake-ups across threads; the chat hub
        /// is one task anyway); more help only when socket I/O, not the hub, is the limit
        signaling_threads: req usize = 1;
            env "TANDEM_SIGNALING_THREADS", arg(value_name = "N");

        /// Key for signing guest tokens, at least 32 bytes; prefer the env var or
        /// config file, as flags show up in `ps`. If unset, a random key is made at
        /// each start, so tokens do not survive a restart
        jwt_secret: opt Secret = None;
            shown "random at each start", env "TANDEM_JWT_SECRET", arg(value_name = "SECRET");

        /// Browser origin allowed to connect, as `scheme://host[:port]` or `*`;
        /// repeat the flag for several (comma-separated in the env var)
        allowed_origin: req Vec<String> = Vec::new();
            shown "none", env "TANDEM_ALLOWED_ORIGIN",
            arg(value_name = "ORIGIN", value_delimiter = ',');

        /// Development mode, for local testing only; `--dev` alone means true
        dev: req bool = false;
            env "TANDEM_DEV",
            arg(
                value_name = "BOOL", num_args = 0..=1, require_equals = true,
                default_missing_value = "true",
                value_parser = clap::builder::BoolishValueParser::new()
            );

        /// Lifetime of a guest token, in seconds (60 to 86400)
        token_ttl_secs: req u64 = secs(signaling().token_ttl);
            env "TANDEM_TOKEN_TTL_SECS", arg(value_name = "SECS");

        /// Simultaneous connections (tabs) one guest may hold
        max_sockets_per_guest: req u32 = count(signaling().max_sockets_per_guest);
            env "TANDEM_MAX_SOCKETS_PER_GUEST", arg(value_name = "N");

        /// Guest sessions held in memory at most
        max_sessions: req usize = signaling().max_sessions;
            env "TANDEM_MAX_SESSIONS", arg(value_name = "N");

        /// Open guest sessions created from one client address (an IPv4 address or
        /// an IPv6 /64); past it new guests are refused with `too_many_sessions`
        max_sessions_per_ip: req u32 = count(signaling().max_sessions_per_ip);
            env "TANDEM_MAX_SESSIONS_PER_IP", arg(value_name = "N");

        /// Seconds a new guest has to connect its first socket; a guest that has not
        /// is removed and its token refused (1 to 3600)
        guest_connect_timeout_secs: req u64 = secs(signaling().connect_timeout);
            env "TANDEM_GUEST_CONNECT_TIMEOUT_SECS", arg(value_name = "SECS");

        /// HTTP requests one IP address may make per minute
        http_requests_per_min: req u32 = 100;
            env "TANDEM_HTTP_REQUESTS_PER_MIN", arg(value_name = "N");

        /// New guests one IP address may create per minute
        guest_creations_per_min: req u32 = 10;
            env "TANDEM_GUEST_CREATIONS_PER_MIN", arg(value_name = "N");

        /// Simultaneous connections from one IP address
        max_connections_per_ip: req u32 = 50;
            env "TANDEM_MAX_CONNECTIONS_PER_IP", arg(value_name = "N");

        /// Open HTTP connections (Socket.IO ones included) from one client
        /// address (an IPv4 address or an IPv6 /64); trusted proxies are not capped
        max_http_connections_per_ip: req u32 = 128;
            env "TANDEM_MAX_HTTP_CONNECTIONS_PER_IP", arg(value_name = "N");

        /// TCP connections to TURN (TCP and TLS together) and to ICE-TCP, each, from
        /// one client address (an IPv4 address or an IPv6 /64)
        max_stream_connections_per_ip: req u32 = 32;
            env "TANDEM_MAX_STREAM_CONNECTIONS_PER_IP", arg(value_name = "N");

        /// Seconds a client has to send a request's headers; also how long an idle
        /// keep-alive connection is kept (1 to 300)
        http_header_timeout_secs: req u64 = 10;
            env "TANDEM_HTTP_HEADER_TIMEOUT_SECS", arg(value_name = "SECS");

        /// Seconds a request body (an upload) may stall before the request is
        /// dropped (1 to 3600)
        http_body_timeout_secs: req u64 = 30;
            env "TANDEM_HTTP_BODY_TIMEOUT_SECS", arg(value_name = "SECS");

        /// Reverse proxy network whose `Forwarded` / `X-Forwarded-For` headers name
        /// the client (for per-address limits), as a CIDR; repeatable
        /// (comma-separated in the env var). From any other address the headers are
        /// ignored
        trusted_proxy: req Vec<IpNet> = Vec::new();
            shown "none", env "TANDEM_TRUSTED_PROXY",
            arg(value_name = "CIDR", value_delimiter = ',');

        /// Serve `/metrics` on this address instead of `--bind` (then the main
        /// address answers 404 there)
        metrics_bind: opt SocketAddr = None;
            shown "the --bind address", env "TANDEM_METRICS_BIND", arg(value_name = "ADDR");

        /// Largest message accepted, in bytes (1024 to 1048576)
        max_message_bytes: req u64 = 16_384;
            env "TANDEM_MAX_MESSAGE_BYTES", arg(value_name = "BYTES");

        /// Socket.IO connection attempts (engine.io handshakes) one client address
        /// (an IPv4 address or an IPv6 /64) may make per minute
        socket_handshakes_per_min: req u32 = 60;
            env "TANDEM_SOCKET_HANDSHAKES_PER_MIN", arg(value_name = "N");

        /// Seconds between two Socket.IO heartbeats (engine.io pingInterval, 1 to 300)
        ping_interval_secs: req u64 = 25;
            env "TANDEM_PING_INTERVAL_SECS", arg(value_name = "SECS");

        /// Seconds a client has to answer a heartbeat before its connection is
        /// closed as dead (engine.io pingTimeout, 1 to 300): a client whose network
        /// vanished is noticed within the interval plus this
        ping_timeout_secs: req u64 = 20;
            env "TANDEM_PING_TIMEOUT_SECS", arg(value_name = "SECS");

        /// Memory the server aims to stay within, in MiB
        memory_budget_mb: req u64 = 1024;
            env "TANDEM_MEMORY_BUDGET_MB", arg(value_name = "MIB");

        /// Seconds given to open connections to finish when shutting down
        shutdown_grace_secs: req u64 = 10;
            env "TANDEM_SHUTDOWN_GRACE_SECS", arg(value_name = "SECS");
    }

    "Chat" {
        /// Seconds a disconnected guest keeps their partner before the partner is
        /// told they left (0 ends the chat at once)
        grace_period_secs: req u64 = secs(signaling().grace_period);
            env "TANDEM_GRACE_PERIOD_SECS", arg(value_name = "SECS");

        /// Seconds before the same two guests may be paired again
        repair_cooldown_secs: req u64 = secs(signaling().repair_cooldown);
            env "TANDEM_REPAIR_COOLDOWN_SECS", arg(value_name = "SECS");

        /// Seconds after which a "typing…" indicator clears without an update
        typing_timeout_secs: req u64 = secs(signaling().typing_timeout);
            env "TANDEM_TYPING_TIMEOUT_SECS", arg(value_name = "SECS");

        /// Messages queued, in order, for a partner who is briefly away; past this the sender is refused
        away_queue_max: req usize = signaling().away_queue_max;
            env "TANDEM_AWAY_QUEUE_MAX", arg(value_name = "N");

        /// Chat messages one guest may send per second
        chat_messages_per_sec: req u32 = signaling().chat_messages_per_sec;
            env "TANDEM_CHAT_MESSAGES_PER_SEC", arg(value_name = "N");

        /// Match requests one guest may make per second, sustained
        match_per_sec: req u32 = signaling().match_per_sec;
            env "TANDEM_MATCH_PER_SEC", arg(value_name = "N");

        /// Match requests one guest may make in a quick burst
        match_burst: req u32 = signaling().match_burst;
            env "TANDEM_MATCH_BURST", arg(value_name = "N");

        /// Typing notifications one guest may send per second
        typing_per_sec: req u32 = signaling().typing_per_sec;
            env "TANDEM_TYPING_PER_SEC", arg(value_name = "N");

        /// Other events one guest may send per second
        events_per_sec: req u32 = signaling().events_per_sec;
            env "TANDEM_EVENTS_PER_SEC", arg(value_name = "N");

        /// Rate-limit refusals within the flood window that get a connection cut
        flood_refusals: req u32 = signaling().flood_refusals;
            env "TANDEM_FLOOD_REFUSALS", arg(value_name = "N");

        /// Length of the flood window, in seconds
        flood_window_secs: req u64 = secs(signaling().flood_window);
            env "TANDEM_FLOOD_WINDOW_SECS", arg(value_name = "SECS");

        /// How often live statistics are refreshed, in milliseconds
        stats_interval_ms: req u64 = millis(signaling().stats_interval);
            env "TANDEM_STATS_INTERVAL_MS", arg(value_name = "MS");

        /// A guest seen within this many seconds counts as active
        active_window_secs: req u64 = secs(signaling().active_window);
            env "TANDEM_ACTIVE_WINDOW_SECS", arg(value_name = "SECS");
    }

    "Media" {
        /// Address put in the media ICE candidates browsers connect to; default:
        /// the address of the interface that routes to the Internet (no packet is
        /// sent), else 127.0.0.1
        node_ip: opt IpAddr = None;
            shown "detected", env "TANDEM_NODE_IP", arg(value_name = "IP");

        /// UDP port that carries every call's media (0 picks a free port)
        rtc_udp_port: req u16 = media().udp_addr.port();
            env "TANDEM_RTC_UDP_PORT", arg(value_name = "PORT");

        /// Media threads, each with its own socket on the UDP port (SO_REUSEPORT);
        /// calls are spread across them
        rtc_udp_workers: opt usize = None;
            shown "one per CPU core", env "TANDEM_RTC_UDP_WORKERS", arg(value_name = "N");

        /// TCP port for media over ICE-TCP, for networks that block UDP (0 disables)
        rtc_tcp_port: req u16 = 7881;
            env "TANDEM_RTC_TCP_PORT", arg(value_name = "PORT");

        /// ICE candidates one guest may trickle per second (and in one burst)
        ice_candidates_per_sec: req u32 = signaling().ice_candidates_per_sec;
            env "TANDEM_ICE_CANDIDATES_PER_SEC", arg(value_name = "N");

        /// Seconds a call rings before it ends unanswered
        call_ring_timeout_secs: req u64 = secs(signaling().ring_timeout);
            env "TANDEM_CALL_RING_TIMEOUT_SECS", arg(value_name = "SECS");

        /// Seconds a call's media may take to connect (or reconnect) before the call fails
        call_connect_timeout_secs: req u64 = secs(media().connect_timeout);
            env "TANDEM_CALL_CONNECT_TIMEOUT_SECS", arg(value_name = "SECS");

        /// Calls in progress at most; further calls are refused with `server_busy`
        max_calls: req usize = media().max_peers / 2;
            env "TANDEM_MAX_CALLS", arg(value_name = "N");
    }

    "TURN" {
        /// Run the bundled TURN server (for browsers behind strict NATs or
        /// UDP-blocking firewalls); `--turn-enabled=false` turns it off
        turn_enabled: req bool = true;
            env "TANDEM_TURN_ENABLED",
            arg(
                value_name = "BOOL", num_args = 0..=1, require_equals = true,
                default_missing_value = "true",
                value_parser = clap::builder::BoolishValueParser::new()
            );

        /// TURN port, UDP and TCP (0 picks a free port)
        turn_port: req u16 = 3478;
            env "TANDEM_TURN_PORT", arg(value_name = "PORT");

        /// TURN over TLS port (`turns:`); operators often use 443 (0 disables)
        turn_tls_port: req u16 = 5349;
            env "TANDEM_TURN_TLS_PORT", arg(value_name = "PORT");

        /// PEM certificate chain for TURN over TLS; without it a self-signed
        /// certificate is made at start
        turn_cert: opt PathBuf = None;
            shown "self-signed", env "TANDEM_TURN_CERT", arg(value_name = "FILE");

        /// PEM private key of `--turn-cert`
        turn_key: opt PathBuf = None;
            shown "none", env "TANDEM_TURN_KEY", arg(value_name = "FILE");

        /// UDP ports the TURN relay addresses are taken from, as `MIN-MAX`
        turn_relay_ports: req PortRange = port_range(turn().port_range);
            env "TANDEM_TURN_RELAY_PORTS", arg(value_name = "MIN-MAX");

        /// TURN realm (part of the long-term credential)
        turn_realm: req String = turn().realm;
            env "TANDEM_TURN_REALM", arg(value_name = "REALM");

        /// Shared secret of the TURN REST credentials (coturn's static-auth-secret),
        /// at least 16 bytes; prefer the env var. If unset, a random one is made at
        /// each start
        turn_secret: opt Secret = None;
            shown "random at each start", env "TANDEM_TURN_SECRET", arg(value_name = "SECRET");

        /// Seconds a minted TURN credential stays valid at most (it also stops working a
        /// minute after the call it was handed out for ends)
        turn_credential_ttl_secs: req u64 = 3600;
            env "TANDEM_TURN_CREDENTIAL_TTL_SECS", arg(value_name = "SECS");

        /// Make TURN a general relay: any peer the deny list allows, not only
        /// tandem's own media address (the only peer a guest needs). The host's own
        /// addresses stay refused
        turn_open_relay: req bool = turn().open_relay;
            env "TANDEM_TURN_OPEN_RELAY",
            arg(
                value_name = "BOOL", num_args = 0..=1, require_equals = true,
                default_missing_value = "true",
                value_parser = clap::builder::BoolishValueParser::new()
            );

        /// Address TURN puts in its relayed addresses (at most one IPv4 and one IPv6;
        /// repeatable, comma-separated in the env var); both together make a dual-stack
        /// relay. Default: `--node-ip`
        turn_relay_ip: req Vec<IpAddr> = Vec::new();
            shown "--node-ip", env "TANDEM_TURN_RELAY_IP",
            arg(value_name = "IP", value_delimiter = ',');

        /// Peer network TURN may relay to even if denied by default, as a CIDR;
        /// repeat for several (comma-separated in the env var)
        turn_allow_peer: req Vec<IpNet> = Vec::new();
            shown "none", env "TANDEM_TURN_ALLOW_PEER",
            arg(value_name = "CIDR", value_delimiter = ',');

        /// Peer network TURN must never relay to, on top of the built-in deny list
        /// (loopback, private, link-local, …); repeatable
        turn_deny_peer: req Vec<IpNet> = Vec::new();
            shown "none", env "TANDEM_TURN_DENY_PEER",
            arg(value_name = "CIDR", value_delimiter = ',');

        /// Let TURN relay to loopback addresses: for tests only, never in production
        turn_allow_loopback_peers: req bool = turn().allow_loopback_peers;
            env "TANDEM_TURN_ALLOW_LOOPBACK_PEERS",
            arg(
                value_name = "BOOL", num_args = 0..=1, require_equals = true,
                default_missing_value = "true",
                value_parser = clap::builder::BoolishValueParser::new()
            );

        /// TURN allocations one guest may hold at once
        turn_max_allocations_per_user: req u32 = count(turn().max_allocations_per_user);
            env "TANDEM_TURN_MAX_ALLOCATIONS_PER_USER", arg(value_name = "N");

        /// TURN allocations at once, in total
        turn_max_allocations: req u32 = count(turn().max_allocations);
            env "TANDEM_TURN_MAX_ALLOCATIONS", arg(value_name = "N");

        /// Permissions (peer addresses) one TURN allocation may hold
        turn_max_permissions: req u32 = count(turn().max_permissions_per_allocation);
            env "TANDEM_TURN_MAX_PERMISSIONS", arg(value_name = "N");

        /// Bytes per second one TURN allocation may relay (both ways together);
        /// the default is 5 Mbit/s
        turn_max_bytes_per_sec: req u64 = turn().bytes_per_sec_per_allocation.unwrap_or(u64::MAX);
            env "TANDEM_TURN_MAX_BYTES_PER_SEC", arg(value_name = "BYTES");

        /// TURN threads, each with its own socket on the UDP port (SO_REUSEPORT)
        turn_udp_workers: opt usize = None;
            shown "one per CPU core", env "TANDEM_TURN_UDP_WORKERS", arg(value_name = "N");
    }

    "Files" {
        /// Largest shared file, in bytes (1024 to 1073741824)
        max_file_size: req u64 = 10 * 1024 * 1024;
            env "TANDEM_MAX_FILE_SIZE", arg(value_name = "BYTES");

        /// Seconds a shared file lives at most (it also goes when its chat ends; 1 to 86400)
        file_ttl: req u64 = 3600;
            env "TANDEM_FILE_TTL", arg(value_name = "SECS");

        /// File uploads one guest may attempt per minute (refused ones count too)
        file_uploads_per_min: req u32 = 5;
            env "TANDEM_FILE_UPLOADS_PER_MIN", arg(value_name = "N");

        /// Bytes of accepted files one guest may upload per hour
        file_bytes_per_hour: req u64 = 30 * 1024 * 1024;
            env "TANDEM_FILE_BYTES_PER_HOUR", arg(value_name = "BYTES");

        /// Room for all shared files together (and uploads in flight), in MiB
        file_storage_mb: req u64 = 512;
            env "TANDEM_FILE_STORAGE_MB", arg(value_name = "MIB");

        /// Keep shared files in this directory instead of memory (it must exist;
        /// tandem's leftovers from an earlier run are removed at start)
        file_dir: opt PathBuf = None;
            shown "in memory", env "TANDEM_FILE_DIR", arg(value_name = "DIR");

        /// Longest voice note, in seconds (1 to 3600)
        max_voice_secs: req u64 = 300;
            env "TANDEM_MAX_VOICE_SECS", arg(value_name = "SECS");
    }

    "Cluster" {
        /// Redis shared by the nodes of a cluster: `redis://host:port[/db]`,
        /// `rediss://` for TLS, `redis+cluster://host:port,host:port…` (or the flag
        /// repeated) for a Redis Cluster; a password goes in the URL
        /// (`redis://:password@host`). Needs --jwt-secret and --turn-secret, the same
        /// on every node. Unset: one node, state in memory
        redis_url: req Vec<RedisUrl> = Vec::new();
            shown "none (in memory)", env "TANDEM_REDIS_URL", arg(value_name = "URL");

        /// This node's name in logs and metrics (letters, digits, `.`, `_`, `-`; at
        /// most 64)
        node_name: opt String = None;
            shown "the host name and a short id", env "TANDEM_NODE_NAME", arg(value_name = "NAME");
    }

    "Logs" {
        /// Log line format
        log_format: req LogFormat = LogFormat::Text;
            env "TANDEM_LOG_FORMAT", arg(value_name = "FORMAT");

        /// Log filter, e.g. `info` or `tandem=debug,info`
        log_level: req String = String::from("info");
            env "TANDEM_LOG_LEVEL", arg(value_name = "FILTER");
    }
}

/// Environment variable naming the TOML file, like `--config`.
const CONFIG_ENV: &str = "TANDEM_CONFIG";

/// Prefix of every environment variable this crate reads.
const ENV_PREFIX: &str = "TANDEM_";

/// The command line: `--config` plus one flag per setting, and the
/// `check-config` subcommand.
#[derive(Parser, Debug)]
#[command(
    name = "tandem",
    bin_name = "tandem",
    version,
    about = "tandem — pairs anonymous strangers for chat and calls. One binary, nothing else to install.",
    disable_help_subcommand = true,
    after_help = "Settings are read from built-in defaults, then the --config TOML file (keys are the \
                  flag names with underscores, e.g. match_burst = 5), then TANDEM_* environment \
                  variables, then flags; later ones win. Unknown keys and variables are refused. \
                  `tandem check-config [flags]` checks them and prints the result without starting."
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,

    /// TOML file to read settings from
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        help = help_line(&["TOML file to read settings from"], "none", CONFIG_ENV)
    )]
    config: Option<PathBuf>,

    #[command(flatten)]
    layer: Layer,
}

/// What `tandem` can do besides running the server.
#[derive(clap::Subcommand, Debug, Clone, Copy, PartialEq, Eq)]
enum Command {
    /// Check the settings without starting anything; print each with where it came from
    ///
    /// Reads the same flags, TOML file and TANDEM_* variables as a start, but binds no socket
    /// and connects to no Redis. Prints every setting, secrets as [redacted], with where its
    /// value came from (default, file, env, flag). A bad setting exits with code 2 and the
    /// message a start would give.
    CheckConfig,
}

impl Config {
    /// How long a guest token stays valid.
    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.token_ttl_secs)
    }

    /// How long a disconnected guest keeps their partner.
    pub fn grace_period(&self) -> Duration {
        Duration::from_secs(self.grace_period_secs)
    }

    /// How long before the same two guests may be paired again.
    pub fn repair_cooldown(&self) -> Duration {
        Duration::from_secs(self.repair_cooldown_secs)
    }

    /// How long a typing indicator lasts without an update.
    pub fn typing_timeout(&self) -> Duration {
        Duration::from_secs(self.typing_timeout_secs)
    }

    /// The window over which rate-limit refusals are counted.
    pub fn flood_window(&self) -> Duration {
        Duration::from_secs(self.flood_window_secs)
    }

    /// How often live statistics are refreshed.
    pub fn stats_interval(&self) -> Duration {
        Duration::from_millis(self.stats_interval_ms)
    }

    /// How recently a guest must have been seen to count as active.
    pub fn active_window(&self) -> Duration {
        Duration::from_secs(self.active_window_secs)
    }

    /// How long open connections get to finish on shutdown.
    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_secs)
    }

    /// How long a new guest has to connect its first socket.
    pub fn guest_connect_timeout(&self) -> Duration {
        Duration::from_secs(self.guest_connect_timeout_secs)
    }

    /// The time between two Socket.IO heartbeats.
    pub fn ping_interval(&self) -> Duration {
        Duration::from_secs(self.ping_interval_secs)
    }

    /// How long a client has to answer a heartbeat.
    pub fn ping_timeout(&self) -> Duration {
        Duration::from_secs(self.ping_timeout_secs)
    }

    /// The memory budget in bytes.
    pub fn call_ring_timeout(&self) -> Duration {
        Duration::from_secs(self.call_ring_timeout_secs)
    }

    pub fn call_connect_timeout(&self) -> Duration {
        Duration::from_secs(self.call_connect_timeout_secs)
    }

    /// How long a minted TURN credential stays valid.
    pub fn turn_credential_ttl(&self) -> Duration {
        Duration::from_secs(self.turn_credential_ttl_secs)
    }

    /// How long a shared file lives at most.
    pub fn file_ttl(&self) -> Duration {
        Duration::from_secs(self.file_ttl)
    }

    /// The shared files' storage budget in bytes.
    pub fn file_storage_bytes(&self) -> u64 {
        self.file_storage_mb.saturating_mul(1024 * 1024)
    }

    pub fn memory_budget_bytes(&self) -> u64 {
        self.memory_budget_mb.saturating_mul(1024 * 1024)
    }

    /// Where the cluster's Redis is (`None`: one node, state in memory). Every
    /// `--redis-url` value together; [`load`] has checked them.
    pub fn redis(&self) -> Result<Option<RedisTarget>, ConfigError> {
        redis::target(&self.redis_url).map_err(|message| ConfigError::Invalid {
            key: "redis_url",
            message,
            origin: None,
        })
    }

    /// Whether any browser origin may connect (`allowed_origin` holds `*`).
    pub fn allows_any_origin(&self) -> bool {
        self.allowed_origin.iter().any(|origin| origin == "*")
    }

    /// The signaling core's settings. Those tandem has no setting for (a
    /// cluster node's id, the bus timeout) keep the core's defaults.
    pub fn signaling_core(&self) -> tandem_signaling::CoreConfig {
        tandem_signaling::CoreConfig {
            token_ttl: self.token_ttl(),
            grace_period: self.grace_period(),
            repair_cooldown: self.repair_cooldown(),
            typing_timeout: self.typing_timeout(),
            away_queue_max: self.away_queue_max,
            max_sockets_per_guest: self.max_sockets_per_guest as usize,
            max_sessions: self.max_sessions,
            max_sessions_per_ip: self.max_sessions_per_ip as usize,
            connect_timeout: self.guest_connect_timeout(),
            chat_messages_per_sec: self.chat_messages_per_sec,
            match_per_sec: self.match_per_sec,
            match_burst: self.match_burst,
            typing_per_sec: self.typing_per_sec,
            events_per_sec: self.events_per_sec,
            ice_candidates_per_sec: self.ice_candidates_per_sec,
            flood_refusals: self.flood_refusals,
            flood_window: self.flood_window(),
            stats_interval: self.stats_interval(),
            active_window: self.active_window(),
            ring_timeout: self.call_ring_timeout(),
            ..tandem_signaling::CoreConfig::default()
        }
    }

    /// Checks every rule on the values. [`load`] already does this; call it
    /// on a `Config` built by hand.
    pub fn validate(&self) -> Result<(), ConfigError> {
        validate::check(self, &|_| None)
    }
}

/// What the command line asks for.
#[derive(Debug)]
pub enum Invocation {
    /// `tandem [flags]`: run the server with this configuration.
    Run(Config),
    /// `tandem check-config [flags]`: the configuration is valid; print it
    /// (its `Display`) and exit without starting anything.
    CheckConfig(Effective),
}

/// Reads the process's `TANDEM_*` environment variables.
fn process_env() -> Result<Vec<(String, String)>, ConfigError> {
    let mut env = Vec::new();
    for (key, value) in std::env::vars_os() {
        // Only our variables matter; anything else may be any bytes.
        let Some(key) = key.to_str().filter(|k| k.starts_with(ENV_PREFIX)) else {
            continue;
        };
        let value = value.into_string().map_err(|_| ConfigError::EnvValue {
            var: key.to_owned(),
            message: "the value is not valid UTF-8".to_owned(),
        })?;
        env.push((key.to_owned(), value));
    }
    Ok(env)
}

/// Loads the configuration from the process's arguments and environment.
///
/// On error, `err.exit()` prints help, version or the problem and exits.
pub fn load() -> Result<Config, ConfigError> {
    load_from(std::env::args_os(), &process_env()?)
}

/// Loads the configuration from the given arguments (including the program
/// name) and environment variables, without touching the process's own.
/// A `check-config` subcommand is accepted and ignored.
pub fn load_from<I, T>(args: I, env: &[(String, String)]) -> Result<Config, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Ok(load_effective(args, env)?.1.config)
}

/// Reads the process's arguments and environment: run the server, or check
/// the configuration (`tandem check-config`). Either way the configuration
/// is loaded and validated the same way, with the same errors.
pub fn invocation() -> Result<Invocation, ConfigError> {
    invocation_from(std::env::args_os(), &process_env()?)
}

/// [`invocation`] from the given arguments (including the program name) and
/// environment variables.
pub fn invocation_from<I, T>(args: I, env: &[(String, String)]) -> Result<Invocation, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Ok(match load_effective(args, env)? {
        (Some(Command::CheckConfig), effective) => Invocation::CheckConfig(effective),
        (None, effective) => Invocation::Run(effective.config),
    })
}

/// Parses, merges and validates; also says where each value came from.
fn load_effective<I, T>(
    args: I,
    env: &[(String, String)],
) -> Result<(Option<Command>, Effective), ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    // Flags first, so that --help and --version work whatever else is wrong.
    let cli = Cli::try_parse_from(args)?;

    let env_layer = env_layer(env)?;

    let from_env = || {
        env.iter()
            .rev()
            .find(|(key, value)| key == CONFIG_ENV && !value.is_empty())
            .map(|(_, value)| PathBuf::from(value))
    };
    let (config_file, config_file_origin) = match (cli.config.clone(), from_env()) {
        (Some(path), _) => (Some(path), Origin::Flag),
        (None, Some(path)) => (Some(path), Origin::Env),
        (None, None) => (None, Origin::Default),
    };
    let file_layer = match &config_file {
        Some(path) => read_file(path)?,
        None => Layer::default(),
    };

    let (mut config, origins) = resolve(cli.layer, env_layer, file_layer);
    config.config_file = config_file;
    normalize(&mut config);

    let effective = Effective {
        config,
        origins,
        config_file_origin,
    };
    let describe = |key: &str| -> Option<String> {
        let field = FIELDS.iter().find(|f| f.key == key)?;
        match effective.origin(key)? {
            Origin::Default => None,
            Origin::Flag => Some(format!("set by flag {}", field.flag())),
            Origin::Env => Some(format!("set by environment variable {}", field.env)),
            Origin::File => Some(format!(
                "set in config file {}",
                effective
                    .config
                    .config_file
                    .as_deref()
                    .unwrap_or(Path::new("?"))
                    .display()
            )),
        }
    };
    validate::check(&effective.config, &describe)?;
    Ok((cli.command, effective))
}

/// Builds the environment layer, refusing unknown `TANDEM_*` variables and
/// parsing each known one with the same parser as its flag.
fn env_layer(env: &[(String, String)]) -> Result<Layer, ConfigError> {
    let unknown: Vec<String> = env
        .iter()
        .map(|(key, _)| key)
        .filter(|key| key.starts_with(ENV_PREFIX))
        .filter(|key| *key != CONFIG_ENV && !FIELDS.iter().any(|f| f.env == key.as_str()))
        .cloned()
        .collect();
    if !unknown.is_empty() {
        return Err(ConfigError::unknown_env(unknown));
    }

    let mut layer = Layer::default();
    for field in FIELDS {
        // The last occurrence wins, as a shell would have it.
        let Some((_, value)) = env.iter().rev().find(|(key, _)| key == field.env) else {
            continue;
        };
        // An empty variable counts as unset, as in `TANDEM_X= tandem`.
        if value.is_empty() {
            continue;
        }
        let arg = format!("{}={}", field.flag(), value);
        let parsed = Cli::try_parse_from([OsString::from("tandem"), OsString::from(arg)]).map_err(
            |err| ConfigError::EnvValue {
                var: field.env.to_owned(),
                message: error::clap_reason(
                    &err,
                    value,
                    matches!(field.key, "jwt_secret" | "turn_secret" | "redis_url"),
                ),
            },
        )?;
        layer = layer.or(parsed.layer);
    }
    Ok(layer)
}

/// Reads and parses the TOML file.
fn read_file(path: &Path) -> Result<Layer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.to_owned(),
        source,
    })?;
    let mut table: toml::Table = toml::from_str(&text).map_err(|err| ConfigError::ParseFile {
        path: path.to_owned(),
        message: err.to_string().trim_end().to_owned(),
    })?;
    // `redis_url = "redis://…"` names one server (or one cluster URL); a list names a
    // cluster's seed nodes, like the flag repeated.
    if let Some(value) = table.get_mut("redis_url") {
        if value.is_str() {
            *value = toml::Value::Array(vec![value.clone()]);
        }
    }
    Layer::from_table(table, path)
}

/// Tidies values that are easy to get slightly wrong: stray spaces, empty
/// list entries, and capitals in origins (browsers send them in lowercase).
fn normalize(config: &mut Config) {
    config.allowed_origin = config
        .allowed_origin
        .iter()
        .map(|origin| origin.trim().to_ascii_lowercase())
        .filter(|origin| !origin.is_empty())
        .collect();
    if let Some(name) = &mut config.node_name {
        *name = name.trim().to_owned();
    }
    config.log_level = config.log_level.trim().to_owned();
}

#[cfg(test)]
mod tests;
