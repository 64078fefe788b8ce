//! The rules a loaded configuration must follow.

use std::net::Ipv6Addr;

use crate::{Config, ConfigError};

/// Shortest accepted JWT signing key, in bytes.
const MIN_SECRET_BYTES: usize = 32;
/// Durations beyond a year are surely mistakes, and would overflow clocks.
const MAX_SECS: u64 = 365 * 24 * 60 * 60;

/// Checks `config`; `origin(key)` says where a key's value came from.
pub(crate) fn check(
    config: &Config,
    origin: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ConfigError> {
    let fail = |key: &'static str, message: String| ConfigError::Invalid {
        key,
        message,
        origin: origin(key),
    };

    // Rates, limits and counts: zero would block everything or divide by zero.
    let positive: [(&'static str, u64); 21] = [
        (
            "ice_candidates_per_sec",
            config.ice_candidates_per_sec.into(),
        ),
        ("call_ring_timeout_secs", config.call_ring_timeout_secs),
        (
            "call_connect_timeout_secs",
            config.call_connect_timeout_secs,
        ),
        ("max_calls", config.max_calls as u64),
        ("typing_timeout_secs", config.typing_timeout_secs),
        ("away_queue_max", config.away_queue_max as u64),
        ("max_sockets_per_guest", config.max_sockets_per_guest.into()),
        ("max_sessions", config.max_sessions as u64),
        ("chat_messages_per_sec", config.chat_messages_per_sec.into()),
        ("match_per_sec", config.match_per_sec.into()),
        ("match_burst", config.match_burst.into()),
        ("typing_per_sec", config.typing_per_sec.into()),
        ("events_per_sec", config.events_per_sec.into()),
        ("flood_refusals", config.flood_refusals.into()),
        ("flood_window_secs", config.flood_window_secs),
        ("http_requests_per_min", config.http_requests_per_min.into()),
        (
            "guest_creations_per_min",
            config.guest_creations_per_min.into(),
        ),
        (
            "max_connections_per_ip",
            config.max_connections_per_ip.into(),
        ),
        ("memory_budget_mb", config.memory_budget_mb),
        ("stats_interval_ms", config.stats_interval_ms),
        ("active_window_secs", config.active_window_secs),
    ];
    for (key, value) in positive {
        if value == 0 {
            return Err(fail(key, format!("{key} must be at least 1, got 0")));
        }
    }

    let durations: [(&'static str, u64); 9] = [
        ("call_ring_timeout_secs", config.call_ring_timeout_secs),
        (
            "call_connect_timeout_secs",
            config.call_connect_timeout_secs,
        ),
        ("grace_period_secs", config.grace_period_secs),
        ("repair_cooldown_secs", config.repair_cooldown_secs),
        ("typing_timeout_secs", config.typing_timeout_secs),
        ("flood_window_secs", config.flood_window_secs),
        ("active_window_secs", config.active_window_secs),
        ("shutdown_grace_secs", config.shutdown_grace_secs),
        ("stats_interval_ms", config.stats_interval_ms / 1000),
    ];
    for (key, secs) in durations {
        if secs > MAX_SECS {
            return Err(fail(
                key,
                format!("{key} is too long: it must be at most one year"),
            ));
        }
    }

    in_range(config.token_ttl_secs, "token_ttl_secs", 60, 86_400)
        .map_err(|m| fail("token_ttl_secs", m))?;
    in_range(
        config.http_header_timeout_secs,
        "http_header_timeout_secs",
        1,
        300,
    )
    .map_err(|m| fail("http_header_timeout_secs", m))?;
    in_range(
        config.http_body_timeout_secs,
        "http_body_timeout_secs",
        1,
        3600,
    )
    .map_err(|m| fail("http_body_timeout_secs", m))?;
    if config.max_stream_connections_per_ip == 0 {
        return Err(fail(
            "max_stream_connections_per_ip",
            "max_stream_connections_per_ip must be at least 1, got 0".to_owned(),
        ));
    }
    if config.max_http_connections_per_ip == 0 {
        return Err(fail(
            "max_http_connections_per_ip",
            "max_http_connections_per_ip must be at least 1, got 0".to_owned(),
        ));
    }
    if config.metrics_bind == Some(config.bind) {
        return Err(fail(
            "metrics_bind",
            "metrics_bind is the --bind address; leave it unset to serve /metrics there".to_owned(),
        ));
    }
    in_range(
        config.max_message_bytes,
        "max_message_bytes",
        1024,
        1_048_576,
    )
    .map_err(|m| fail("max_message_bytes", m))?;

    // Per-address session and handshake limits, a new guest's deadline, the heartbeat.
    for (key, value) in [
        ("max_sessions_per_ip", config.max_sessions_per_ip),
        (
            "socket_handshakes_per_min",
            config.socket_handshakes_per_min,
        ),
    ] {
        if value == 0 {
            return Err(fail(key, format!("{key} must be at least 1, got 0")));
        }
    }
    for (key, value, max) in [
        (
            "guest_connect_timeout_secs",
            config.guest_connect_timeout_secs,
            3600,
        ),
        ("ping_interval_secs", config.ping_interval_secs, 300),
        ("ping_timeout_secs", config.ping_timeout_secs, 300),
    ] {
        in_range(value, key, 1, max).map_err(|m| fail(key, m))?;
    }

    in_range(config.signaling_threads as u64, "signaling_threads", 1, 64)
        .map_err(|m| fail("signaling_threads", m))?;
    if let Some(workers) = config.rtc_udp_workers {
        in_range(workers as u64, "rtc_udp_workers", 1, 64)
            .map_err(|m| fail("rtc_udp_workers", m))?;
    }
    if let Some(ip) = config.node_ip {
        if ip.is_unspecified() || ip.is_multicast() {
            return Err(fail(
                "node_ip",
                format!("node_ip {ip} is not an address browsers can send to; give this host's reachable address"),
            ));
        }
    }

    if let Some(secret) = &config.jwt_secret {
        let len = secret.expose().len();
        if len < MIN_SECRET_BYTES {
            return Err(fail(
                "jwt_secret",
                format!(
                    "jwt_secret must be at least {MIN_SECRET_BYTES} bytes long, got {len}; \
                     generate one with `openssl rand -hex 32`"
                ),
            ));
        }
    }

    check_origins(&config.allowed_origin).map_err(|m| fail("allowed_origin", m))?;

    check_cluster(config, &fail)?;

    check_turn(config, &fail)?;

    let level = &config.log_level;
    if level.trim().is_empty() {
        return Err(fail(
            "log_level",
            "log_level must not be empty; try `info`".to_owned(),
        ));
    }
    if level.chars().any(char::is_whitespace) {
        return Err(fail(
            "log_level",
            format!(
                "log_level '{level}' must not contain spaces; separate directives with commas, \
                 as in `tandem=debug,info`"
            ),
        ));
    }

    Ok(())
}

/// Longest `--node-name`.
const MAX_NODE_NAME: usize = 64;

/// `--redis-url` (its form, and the secrets every node must share) and `--node-name`.
fn check_cluster(
    config: &Config,
    fail: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if let Some(name) = &config.node_name {
        let valid = !name.is_empty()
            && name.len() <= MAX_NODE_NAME
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
        if !valid {
            return Err(fail(
                "node_name",
                format!("node_name must be 1 to {MAX_NODE_NAME} letters, digits, `.`, `_` or `-`"),
            ));
        }
    }
    let target = crate::redis::target(&config.redis_url).map_err(|m| fail("redis_url", m))?;
    if target.is_none() {
        return Ok(());
    }
    // A random key made at start differs on every node: a token or TURN credential minted on
    // one would be refused by the others.
    let mut missing = Vec::new();
    if config.jwt_secret.is_none() {
        missing.push("--jwt-secret (TANDEM_JWT_SECRET)");
    }
    if config.turn_enabled && config.turn_secret.is_none() {
        missing.push("--turn-secret (TANDEM_TURN_SECRET)");
    }
    if !missing.is_empty() {
        return Err(fail(
            "redis_url",
            format!(
                "with redis_url set, every node must sign tokens and TURN credentials with the \
                 same keys, so give {} the same value on every node",
                missing.join(" and ")
            ),
        ));
    }
    Ok(())
}

/// Shortest accepted TURN REST secret, in bytes.
const MIN_TURN_SECRET_BYTES: usize = 16;

fn check_turn(
    config: &Config,
    fail: &dyn Fn(&'static str, String) -> ConfigError,
) -> Result<(), ConfigError> {
    if let Some(secret) = &config.turn_secret {
        let len = secret.expose().len();
        if len < MIN_TURN_SECRET_BYTES {
            return Err(fail(
                "turn_secret",
                format!(
                    "turn_secret must be at least {MIN_TURN_SECRET_BYTES} bytes long, got {len}; \
                     generate one with `openssl rand -hex 32`"
                ),
            ));
        }
    }
    match (&config.turn_cert, &config.turn_key) {
        (Some(_), None) => {
            return Err(fail(
                "turn_key",
                "turn_cert is set but turn_key is not: give the certificate's private key too"
                    .to_owned(),
            ))
        }
        (None, Some(_)) => {
            return Err(fail(
                "turn_cert",
                "turn_key is set but turn_cert is not: give the certificate chain too".to_owned(),
            ))
        }
        _ => {}
    }
    let realm = config.turn_realm.trim();
    if realm.is_empty() || realm.len() > 127 || realm.chars().any(|c| c.is_control()) {
        return Err(fail(
            "turn_realm",
            "turn_realm must be 1-127 characters without control characters".to_owned(),
        ));
    }
    for (key, value, min, max) in [
        ("max_file_size", config.max_file_size, 1024, 1 << 30),
        ("file_ttl", config.file_ttl, 1, 86_400),
        (
            "file_uploads_per_min",
            config.file_uploads_per_min.into(),
            1,
            100_000,
        ),
        ("file_storage_mb", config.file_storage_mb, 1, 1 << 30),
        ("max_voice_secs", config.max_voice_secs, 1, 3600),
    ] {
        in_range(value, key, min, max).map_err(|m| fail(key, m))?;
    }
    if config.file_bytes_per_hour < config.max_file_size {
        return Err(fail(
            "file_bytes_per_hour",
            format!(
                "file_bytes_per_hour ({}) must be at least max_file_size ({})",
                config.file_bytes_per_hour, config.max_file_size
            ),
        ));
    }
    if let Some(dir) = &config.file_dir {
        if !dir.is_dir() {
            return Err(fail(
                "file_dir",
                format!("file_dir {} is not an existing directory", dir.display()),
            ));
        }
    }
    in_range(
        config.turn_credential_ttl_secs,
        "turn_credential_ttl_secs",
        60,
        7 * 86_400,
    )
    .map_err(|m| fail("turn_credential_ttl_secs", m))?;
    for (key, value) in [
        (
            "turn_max_allocations_per_user",
            config.turn_max_allocations_per_user,
        ),
        ("turn_max_allocations", config.turn_max_allocations),
        ("turn_max_permissions", config.turn_max_permissions),
    ] {
        if value == 0 {
            return Err(fail(key, format!("{key} must be at least 1, got 0")));
        }
    }
    if config.turn_max_bytes_per_sec == 0 {
        return Err(fail(
            "turn_max_bytes_per_sec",
            "turn_max_bytes_per_sec must be at least 1".to_owned(),
        ));
    }
    let (v4, v6) = config.turn_relay_ip.iter().fold((0, 0), |(a, b), ip| {
        if ip.is_ipv4() {
            (a + 1, b)
        } else {
            (a, b + 1)
        }
    });
    if v4 > 1 || v6 > 1 {
        return Err(fail(
            "turn_relay_ip",
            "turn_relay_ip takes at most one IPv4 and one IPv6 address".to_owned(),
        ));
    }
    if let Some(ip) = config
        .turn_relay_ip
        .iter()
        .find(|ip| ip.is_unspecified() || ip.is_multicast())
    {
        return Err(fail(
            "turn_relay_ip",
            format!("turn_relay_ip {ip} is not an address clients can send to"),
        ));
    }
    if let Some(workers) = config.turn_udp_workers {
        in_range(workers as u64, "turn_udp_workers", 1, 64)
            .map_err(|m| fail("turn_udp_workers", m))?;
    }
    let ports = config.turn_relay_ports;
    if config.turn_enabled {
        for (key, port) in [
            ("turn_port", config.turn_port),
            ("turn_tls_port", config.turn_tls_port),
        ] {
            if port != 0 && ports.contains(port) {
                return Err(fail(
                    key,
                    format!("{key} {port} lies inside turn_relay_ports {ports}; pick a port outside the relay range"),
                ));
            }
        }
        let clash = |a: u16, b: u16| a != 0 && a == b;
        let clashes = [
            (
                "turn_port",
                config.turn_port,
                "rtc_udp_port",
                config.rtc_udp_port,
            ),
            (
                "turn_port",
                config.turn_port,
                "rtc_tcp_port",
                config.rtc_tcp_port,
            ),
            ("turn_port", config.turn_port, "bind", config.bind.port()),
            (
                "turn_tls_port",
                config.turn_tls_port,
                "rtc_tcp_port",
                config.rtc_tcp_port,
            ),
            (
                "turn_tls_port",
                config.turn_tls_port,
                "bind",
                config.bind.port(),
            ),
        ];
        for (key, port, other, other_port) in clashes {
            if clash(port, other_port) {
                return Err(fail(
                    key,
                    format!("{key} and {other} are both {port}; give each its own port"),
                ));
            }
        }
        if config.turn_tls_port != 0 && config.turn_tls_port == config.turn_port {
            return Err(fail(
                "turn_tls_port",
                format!(
                    "turn_tls_port and turn_port are both {}; TLS needs its own port",
                    config.turn_port
                ),
            ));
        }
    }
    Ok(())
}

fn in_range(value: u64, key: &str, min: u64, max: u64) -> Result<(), String> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(format!(
            "{key} must be between {min} and {max}, got {value}"
        ))
    }
}

fn check_origins(origins: &[String]) -> Result<(), String> {
    let wildcard = origins.iter().any(|origin| origin == "*");
    if wildcard && origins.len() > 1 {
        return Err("allowed_origin: `*` already allows every origin, so list it alone".to_owned());
    }
    for origin in origins {
        check_origin(origin)
            .map_err(|why| format!("allowed_origin entry '{origin}' is invalid: {why}"))?;
    }
    Ok(())
}

/// Accepts `*` or `scheme://host[:port]` with scheme http or https, the
/// form browsers send in the `Origin` header.
fn check_origin(origin: &str) -> Result<(), String> {
    if origin == "*" {
        return Ok(());
    }
    let form = "write it as scheme://host[:port], e.g. https://chat.example.com";
    let Some((scheme, rest)) = origin.split_once("://") else {
        return Err(format!("it has no scheme; {form}"));
    };
    let default_port = match scheme.to_ascii_lowercase().as_str() {
        "http" => 80,
        "https" => 443,
        _ => return Err(format!("the scheme must be http or https, not '{scheme}'")),
    };
    if rest.ends_with('/') && !rest[..rest.len() - 1].contains(['/', '?', '#']) {
        return Err("remove the trailing `/`: browsers send origins without one".to_owned());
    }
    if rest.contains(['/', '?', '#']) {
        return Err(format!("an origin has no path, query or fragment; {form}"));
    }
    if rest.contains('@') {
        return Err(format!("an origin has no user name or password; {form}"));
    }

    let (host, port) = if let Some(bracketed) = rest.strip_prefix('[') {
        let Some((address, after)) = bracketed.split_once(']') else {
            return Err("the IPv6 address is missing its closing `]`".to_owned());
        };
        if address.parse::<Ipv6Addr>().is_err() {
            return Err(format!("'{address}' is not an IPv6 address"));
        }
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => return Err(format!("unexpected '{after}' after the address")),
            },
        };
        (None, port)
    } else {
        match rest.rsplit_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(rest), None),
        }
    };

    if let Some(host) = host {
        let valid = !host.is_empty()
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
            && !host.starts_with(['.', '-'])
            && !host.ends_with(['.', '-']);
        if !valid {
            return Err(format!("'{host}' is not a valid host name; {form}"));
        }
    }

    if let Some(port) = port {
        let number = port
            .parse::<u16>()
            .ok()
            .filter(|n| *n != 0 && port.chars().all(|c| c.is_ascii_digit()));
        match number {
            None => return Err(format!("'{port}' is not a valid port (1 to 65535)")),
            Some(n) if n == default_port => {
                return Err(format!(
                    "drop the default port :{n}: browsers leave it out of the Origin header"
                ))
            }
            Some(_) => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins() {
        for good in [
            "*",
            "https://chat.example.com",
            "http://localhost:5173",
            "http://127.0.0.1:8080",
            "https://[::1]:8443",
            "https://[::1]",
            "https://xn--bcher-kva.example",
        ] {
            assert_eq!(check_origin(good), Ok(()), "{good}");
        }
        for bad in [
            "chat.example.com",
            "ftp://example.com",
            "https://example.com/",
            "https://example.com/app",
            "https://example.com?x=1",
            "https://user@example.com",
            "https://",
            "https://exa mple.com",
            "https://example.com:0",
            "https://example.com:99999",
            "https://example.com:+80",
            "https://example.com:443",
            "http://example.com:80",
            "https://[::1",
            "https://[nope]",
            "https://-example.com",
        ] {
            assert!(check_origin(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn wildcard_stands_alone() {
        assert!(check_origins(&["*".into()]).is_ok());
        assert!(check_origins(&["*".into(), "https://a.example".into()]).is_err());
    }
}
