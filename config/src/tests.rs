use std::io::Write;
use std::time::Duration;

use clap::error::ErrorKind;

use super::*;

const GOOD_SECRET: &str = "0123456789abcdef0123456789abcdef-extra";

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn args(rest: &[&str]) -> Vec<String> {
    std::iter::once("tandem")
        .chain(rest.iter().copied())
        .map(String::from)
        .collect()
}

fn load_with(rest: &[&str], vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    load_from(args(rest), &env(vars))
}

fn ok(rest: &[&str], vars: &[(&str, &str)]) -> Config {
    load_with(rest, vars).unwrap_or_else(|err| panic!("unexpected error: {err}"))
}

fn err(rest: &[&str], vars: &[(&str, &str)]) -> String {
    match load_with(rest, vars) {
        Ok(config) => panic!("accepted: {config:?}"),
        Err(err) => err.to_string(),
    }
}

fn toml_file(text: &str) -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".toml").tempfile().unwrap();
    file.write_all(text.as_bytes()).unwrap();
    file.flush().unwrap();
    file
}

fn path_of(file: &tempfile::NamedTempFile) -> String {
    file.path().to_str().unwrap().to_owned()
}

#[test]
fn defaults() {
    let c = ok(&[], &[]);
    assert_eq!(c.bind, "0.0.0.0:8080".parse().unwrap());
    assert!(c.jwt_secret.is_none());
    assert!(c.allowed_origin.is_empty());
    assert!(!c.dev);
    assert_eq!(c.log_format, LogFormat::Text);
    assert_eq!(c.log_level, "info");
    assert_eq!(c.token_ttl_secs, 7200);
    assert_eq!(c.grace_period_secs, 30);
    assert_eq!(c.repair_cooldown_secs, 300);
    assert_eq!(c.typing_timeout_secs, 5);
    assert_eq!(c.away_queue_max, 100);
    assert_eq!(c.max_sockets_per_guest, 10);
    assert_eq!(c.max_sessions, 100_000);
    assert_eq!(c.chat_messages_per_sec, 10);
    assert_eq!(c.match_per_sec, 1);
    assert_eq!(c.match_burst, 3);
    assert_eq!(c.typing_per_sec, 2);
    assert_eq!(c.events_per_sec, 10);
    assert_eq!(c.flood_refusals, 50);
    assert_eq!(c.flood_window_secs, 10);
    assert_eq!(c.http_requests_per_min, 100);
    assert_eq!(c.guest_creations_per_min, 10);
    assert_eq!(c.max_connections_per_ip, 50);
    assert_eq!(c.max_message_bytes, 16_384);
    assert_eq!(c.memory_budget_mb, 1024);
    assert_eq!(c.stats_interval_ms, 1000);
    assert_eq!(c.active_window_secs, 300);
    assert_eq!(c.shutdown_grace_secs, 10);
    assert!(c.config_file.is_none());
}

#[test]
fn default_impl_matches_loaded_defaults_and_is_valid() {
    let loaded = ok(&[], &[]);
    let default = Config::default();
    assert_eq!(format!("{loaded:?}"), format!("{default:?}"));
    default.validate().unwrap();
}

#[test]
fn duration_helpers() {
    let c = Config::default();
    assert_eq!(c.token_ttl(), Duration::from_secs(7200));
    assert_eq!(c.grace_period(), Duration::from_secs(30));
    assert_eq!(c.repair_cooldown(), Duration::from_secs(300));
    assert_eq!(c.typing_timeout(), Duration::from_secs(5));
    assert_eq!(c.flood_window(), Duration::from_secs(10));
    assert_eq!(c.stats_interval(), Duration::from_millis(1000));
    assert_eq!(c.active_window(), Duration::from_secs(300));
    assert_eq!(c.shutdown_grace(), Duration::from_secs(10));
    assert_eq!(c.memory_budget_bytes(), 1024 * 1024 * 1024);
    assert!(!c.allows_any_origin());
}

#[test]
fn toml_overrides_default() {
    let file = toml_file(
        r#"
        bind = "127.0.0.1:9000"
        match_burst = 7
        log_format = "json"
        dev = true
        allowed_origin = ["https://a.example", "http://localhost:5173"]
        jwt_secret = "0123456789abcdef0123456789abcdef"
        "#,
    );
    let c = ok(&["--config", &path_of(&file)], &[]);
    assert_eq!(c.bind, "127.0.0.1:9000".parse().unwrap());
    assert_eq!(c.match_burst, 7);
    assert_eq!(c.log_format, LogFormat::Json);
    assert!(c.dev);
    assert_eq!(
        c.allowed_origin,
        ["https://a.example", "http://localhost:5173"]
    );
    assert_eq!(
        c.jwt_secret.as_ref().map(Secret::expose),
        Some("0123456789abcdef0123456789abcdef")
    );
    assert_eq!(c.config_file.as_deref(), Some(file.path()));
    // Untouched keys keep their defaults.
    assert_eq!(c.match_per_sec, 1);
}

#[test]
fn config_file_from_env() {
    let file = toml_file("match_burst = 8\n");
    let c = ok(&[], &[("TANDEM_CONFIG", &path_of(&file))]);
    assert_eq!(c.match_burst, 8);
    assert_eq!(c.config_file.as_deref(), Some(file.path()));
}

#[test]
fn config_flag_wins_over_config_env() {
    let from_flag = toml_file("match_burst = 8\n");
    let from_env = toml_file("match_burst = 9\n");
    let c = ok(
        &["--config", &path_of(&from_flag)],
        &[("TANDEM_CONFIG", &path_of(&from_env))],
    );
    assert_eq!(c.match_burst, 8);
}

#[test]
fn env_overrides_toml() {
    let file = toml_file("match_burst = 7\nlog_level = \"debug\"\n");
    let c = ok(
        &["--config", &path_of(&file)],
        &[("TANDEM_MATCH_BURST", "11")],
    );
    assert_eq!(c.match_burst, 11);
    assert_eq!(c.log_level, "debug");
}

#[test]
fn flag_overrides_env() {
    let file = toml_file("match_burst = 7\n");
    let c = ok(
        &["--config", &path_of(&file), "--match-burst", "13"],
        &[("TANDEM_MATCH_BURST", "11"), ("TANDEM_MATCH_PER_SEC", "4")],
    );
    assert_eq!(c.match_burst, 13);
    assert_eq!(c.match_per_sec, 4);
}

#[test]
fn every_setting_has_flag_and_env() {
    let c = ok(
        &[
            "--bind=127.0.0.1:1",
            "--log-format=json",
            "--token-ttl-secs=61",
            "--max-sessions=5",
        ],
        &[
            ("TANDEM_JWT_SECRET", GOOD_SECRET),
            ("TANDEM_SHUTDOWN_GRACE_SECS", "0"),
            ("TANDEM_STATS_INTERVAL_MS", "250"),
            ("TANDEM_LOG_LEVEL", "tandem=debug,info"),
        ],
    );
    assert_eq!(c.bind.port(), 1);
    assert_eq!(c.log_format, LogFormat::Json);
    assert_eq!(c.token_ttl_secs, 61);
    assert_eq!(c.max_sessions, 5);
    assert_eq!(c.jwt_secret.as_ref().unwrap().expose(), GOOD_SECRET);
    assert_eq!(c.shutdown_grace_secs, 0);
    assert_eq!(c.stats_interval(), Duration::from_millis(250));
    assert_eq!(c.log_level, "tandem=debug,info");

    // The generated table and the env names agree.
    for field in FIELDS {
        assert_eq!(
            field.env,
            format!("TANDEM_{}", field.key.to_ascii_uppercase()),
            "{}",
            field.key
        );
    }
}

#[test]
fn unknown_toml_key_refused() {
    let file = toml_file("bind = \"127.0.0.1:1\"\nmatch_brust = 3\n");
    let message = err(&["--config", &path_of(&file)], &[]);
    assert!(message.contains("match_brust"), "{message}");
    assert!(message.contains("did you mean `match_burst`"), "{message}");
}

#[test]
fn config_key_is_not_a_file_setting() {
    let file = toml_file("config = \"other.toml\"\n");
    let message = err(&["--config", &path_of(&file)], &[]);
    assert!(message.contains("unknown key `config`"), "{message}");
}

#[test]
fn nested_table_refused() {
    let file = toml_file("[server]\nbind = \"127.0.0.1:1\"\n");
    let message = err(&["--config", &path_of(&file)], &[]);
    assert!(message.contains("`server`"), "{message}");
}

#[test]
fn toml_syntax_error_reported_with_path() {
    let file = toml_file("bind = \n");
    let message = err(&["--config", &path_of(&file)], &[]);
    assert!(message.contains("not valid TOML"), "{message}");
    assert!(message.contains(&path_of(&file)), "{message}");
}

#[test]
fn missing_config_file_reported() {
    let message = err(&["--config", "/nonexistent/tandem.toml"], &[]);
    assert!(
        message.contains("cannot read config file /nonexistent/tandem.toml"),
        "{message}"
    );
}

#[test]
fn unknown_tandem_env_refused() {
    let message = err(&[], &[("TANDEM_MATCH_BURTS", "3"), ("TANDEM_NOPE", "1")]);
    assert!(message.contains("TANDEM_MATCH_BURTS"), "{message}");
    assert!(
        message.contains("did you mean TANDEM_MATCH_BURST"),
        "{message}"
    );
    assert!(message.contains("TANDEM_NOPE"), "{message}");
}

#[test]
fn other_env_ignored() {
    let c = ok(
        &[],
        &[
            ("PATH", "/bin"),
            ("RUST_LOG", "trace"),
            ("tandem_bind", "x"),
        ],
    );
    assert_eq!(c.log_level, "info");
}

#[test]
fn empty_env_counts_as_unset() {
    let c = ok(&[], &[("TANDEM_BIND", ""), ("TANDEM_CONFIG", "")]);
    assert_eq!(c.bind.port(), 8080);
}

#[test]
fn bad_flag_value_names_flag() {
    let Err(ConfigError::Cli(e)) = load_with(&["--bind", "nope"], &[]) else {
        panic!("expected a clap error");
    };
    assert_eq!(e.kind(), ErrorKind::ValueValidation);
    assert!(e.to_string().contains("--bind"), "{e}");
}

#[test]
fn zero_rate_refused_naming_key_and_source() {
    let message = err(&["--match-burst", "0"], &[]);
    assert!(
        message.contains("match_burst must be at least 1"),
        "{message}"
    );
    assert!(message.contains("--match-burst"), "{message}");

    let message = err(&[], &[("TANDEM_CHAT_MESSAGES_PER_SEC", "0")]);
    assert!(
        message.contains("chat_messages_per_sec must be at least 1"),
        "{message}"
    );
    assert!(
        message.contains("TANDEM_CHAT_MESSAGES_PER_SEC"),
        "{message}"
    );
}

#[test]
fn validation_error_carries_key() {
    let e = load_with(&["--stats-interval-ms", "0"], &[]).unwrap_err();
    assert_eq!(e.key(), Some("stats_interval_ms"));
    assert!(matches!(
        e,
        ConfigError::Invalid {
            key: "stats_interval_ms",
            ..
        }
    ));
}

#[test]
fn bad_toml_value_names_key() {
    let file = toml_file("log_format = \"xml\"\n");
    let message = err(&["--config", &path_of(&file)], &[]);
    assert!(message.contains("log_format"), "{message}");
    assert!(message.contains("xml"), "{message}");

    let file = toml_file("match_burst = -1\n");
    let message = err(&["--config", &path_of(&file)], &[]);
    assert!(message.contains("match_burst"), "{message}");

    let file = toml_file("bind = 8080\n");
    let message = err(&["--config", &path_of(&file)], &[]);
    assert!(message.contains("`bind`"), "{message}");
}

#[test]
fn bad_env_value_names_var() {
    let message = err(&[], &[("TANDEM_BIND", "nope")]);
    assert!(message.contains("TANDEM_BIND"), "{message}");
    assert!(message.contains("nope"), "{message}");

    let message = err(&[], &[("TANDEM_LOG_FORMAT", "xml")]);
    assert!(message.contains("TANDEM_LOG_FORMAT"), "{message}");
    assert!(message.contains("text, json"), "{message}");

    let message = err(&[], &[("TANDEM_MATCH_BURST", "-3")]);
    assert!(message.contains("TANDEM_MATCH_BURST"), "{message}");
}

#[test]
fn allowed_origin_repeatable_flag_and_comma_env() {
    let c = ok(
        &[
            "--allowed-origin",
            "https://a.example",
            "--allowed-origin",
            "https://b.example:8443",
        ],
        &[],
    );
    assert_eq!(
        c.allowed_origin,
        ["https://a.example", "https://b.example:8443"]
    );

    let c = ok(
        &[],
        &[(
            "TANDEM_ALLOWED_ORIGIN",
            "https://a.example, http://localhost:3000",
        )],
    );
    assert_eq!(
        c.allowed_origin,
        ["https://a.example", "http://localhost:3000"]
    );

    // Flags replace the env list rather than adding to it.
    let c = ok(
        &["--allowed-origin", "https://c.example"],
        &[(
            "TANDEM_ALLOWED_ORIGIN",
            "https://a.example,https://b.example",
        )],
    );
    assert_eq!(c.allowed_origin, ["https://c.example"]);

    let c = ok(&["--allowed-origin", "*"], &[]);
    assert!(c.allows_any_origin());
}

#[test]
fn bad_origins_refused() {
    let message = err(&["--allowed-origin", "https://a.example/app"], &[]);
    assert!(message.contains("allowed_origin"), "{message}");
    assert!(message.contains("https://a.example/app"), "{message}");
    let message = err(&[], &[("TANDEM_ALLOWED_ORIGIN", "a.example")]);
    assert!(message.contains("TANDEM_ALLOWED_ORIGIN"), "{message}");
}

#[test]
fn origins_lowercased() {
    let c = ok(&["--allowed-origin", "HTTPS://Chat.Example.COM"], &[]);
    assert_eq!(c.allowed_origin, ["https://chat.example.com"]);
}

#[test]
fn dev_flag_forms() {
    assert!(ok(&["--dev"], &[]).dev);
    assert!(ok(&["--dev=true"], &[]).dev);
    assert!(!ok(&["--dev=false"], &[]).dev);
    assert!(!ok(&["--dev=false"], &[("TANDEM_DEV", "true")]).dev);
    assert!(ok(&[], &[("TANDEM_DEV", "1")]).dev);
    assert!(ok(&[], &[("TANDEM_DEV", "true")]).dev);
    assert!(!ok(&[], &[("TANDEM_DEV", "no")]).dev);
    // `--dev` does not swallow the next flag.
    let c = ok(&["--dev", "--match-burst", "4"], &[]);
    assert!(c.dev);
    assert_eq!(c.match_burst, 4);
    let message = err(&[], &[("TANDEM_DEV", "maybe")]);
    assert!(message.contains("TANDEM_DEV"), "{message}");
}

#[test]
fn secret_never_printed() {
    let c = ok(&[], &[("TANDEM_JWT_SECRET", GOOD_SECRET)]);
    let debug = format!("{c:?}");
    assert!(!debug.contains(GOOD_SECRET), "{debug}");
    assert!(debug.contains("[redacted]"), "{debug}");
    let secret = c.jwt_secret.unwrap();
    assert_eq!(format!("{secret}"), "[redacted]");
    assert_eq!(format!("{secret:?}"), "[redacted]");
    assert_eq!(secret.expose(), GOOD_SECRET);
}

#[test]
fn short_secret_refused_without_echo() {
    let message = err(&[], &[("TANDEM_JWT_SECRET", "hunter2")]);
    assert!(
        message.contains("jwt_secret must be at least 32 bytes"),
        "{message}"
    );
    assert!(!message.contains("hunter2"), "{message}");
}

#[test]
fn ranges_enforced() {
    for (flag, value, key) in [
        ("--max-message-bytes", "1023", "max_message_bytes"),
        ("--max-message-bytes", "1048577", "max_message_bytes"),
        ("--token-ttl-secs", "59", "token_ttl_secs"),
        ("--token-ttl-secs", "86401", "token_ttl_secs"),
        ("--grace-period-secs", "999999999", "grace_period_secs"),
    ] {
        let message = err(&[flag, value], &[]);
        assert!(message.contains(key), "{flag} {value}: {message}");
    }
    ok(
        &["--max-message-bytes", "1024", "--token-ttl-secs", "86400"],
        &[],
    );
    ok(
        &["--max-message-bytes", "1048576", "--token-ttl-secs", "60"],
        &[],
    );
}

#[test]
fn log_level_checked() {
    let message = err(&["--log-level", "tandem = debug"], &[]);
    assert!(message.contains("log_level"), "{message}");
    let message = err(&[], &[("TANDEM_LOG_LEVEL", "  ")]);
    assert!(message.contains("log_level"), "{message}");
    let message = err(&["--log-level="], &[]);
    assert!(message.contains("log_level"), "{message}");
    let message = err(&["--log-format", "xml"], &[]);
    assert!(message.contains("--log-format"), "{message}");
}

#[test]
fn help_and_version_are_clap_errors() {
    let Err(ConfigError::Cli(e)) = load_with(&["--help"], &[]) else {
        panic!("expected help");
    };
    assert_eq!(e.kind(), ErrorKind::DisplayHelp);
    let help = e.to_string();
    assert!(help.contains("pairs anonymous strangers"), "{help}");
    assert!(help.contains("--match-burst"), "{help}");
    assert!(help.contains("[default: 3]"), "{help}");
    assert!(help.contains("[env: TANDEM_MATCH_BURST]"), "{help}");
    assert!(help.contains("TANDEM_CONFIG"), "{help}");

    // Help works even when the environment is wrong.
    let Err(ConfigError::Cli(e)) = load_with(&["--help"], &[("TANDEM_BOGUS", "1")]) else {
        panic!("expected help");
    };
    assert_eq!(e.kind(), ErrorKind::DisplayHelp);

    let Err(ConfigError::Cli(e)) = load_with(&["--version"], &[]) else {
        panic!("expected version");
    };
    assert_eq!(e.kind(), ErrorKind::DisplayVersion);
}

#[test]
fn unknown_flag_is_clap_error() {
    let Err(ConfigError::Cli(e)) = load_with(&["--match-brust", "3"], &[]) else {
        panic!("expected a clap error");
    };
    assert_eq!(e.kind(), ErrorKind::UnknownArgument);
}

#[test]
fn clap_command_is_consistent() {
    use clap::CommandFactory;
    Cli::command().debug_assert();
}

#[test]
fn media_defaults_and_flags() {
    let c = ok(&[], &[]);
    assert_eq!(c.node_ip, None);
    assert_eq!(c.rtc_udp_port, 7882);
    assert_eq!(c.rtc_udp_workers, None);
    assert_eq!(c.rtc_tcp_port, 7881);
    assert_eq!(c.call_ring_timeout(), Duration::from_secs(30));
    assert_eq!(c.call_connect_timeout(), Duration::from_secs(30));
    assert_eq!(c.max_calls, 1000);

    let c = ok(
        &[
            "--node-ip",
            "127.0.0.1",
            "--rtc-udp-port",
            "0",
            "--rtc-udp-workers",
            "3",
            "--rtc-tcp-port",
            "0",
            "--call-ring-timeout-secs",
            "2",
        ],
        &[],
    );
    assert_eq!(c.node_ip, Some("127.0.0.1".parse().unwrap()));
    assert_eq!(c.rtc_udp_port, 0);
    assert_eq!(c.rtc_udp_workers, Some(3));
    assert_eq!(c.rtc_tcp_port, 0);
    assert_eq!(c.call_ring_timeout(), Duration::from_secs(2));

    let c = ok(
        &[],
        &[("TANDEM_NODE_IP", "::1"), ("TANDEM_RTC_UDP_PORT", "9000")],
    );
    assert_eq!(c.node_ip, Some("::1".parse().unwrap()));
    assert_eq!(c.rtc_udp_port, 9000);
}

#[test]
fn bad_media_values_refused() {
    assert!(err(&["--node-ip", "0.0.0.0"], &[]).contains("node_ip"));
    assert!(err(&["--node-ip", "not-an-ip"], &[]).contains("--node-ip"));
    assert!(err(&["--rtc-udp-workers", "0"], &[]).contains("rtc_udp_workers"));
    assert!(err(&["--rtc-udp-workers", "65"], &[]).contains("rtc_udp_workers"));
    assert!(err(&["--rtc-udp-port", "70000"], &[]).contains("--rtc-udp-port"));
    assert!(err(&["--call-ring-timeout-secs", "0"], &[]).contains("call_ring_timeout_secs"));
    assert!(err(&["--max-calls", "0"], &[]).contains("max_calls"));
}

#[test]
fn turn_defaults_and_flags() {
    let c = ok(&[], &[]);
    assert!(c.turn_enabled);
    assert_eq!(c.turn_port, 3478);
    assert_eq!(c.turn_tls_port, 5349);
    assert_eq!(
        c.turn_relay_ports,
        PortRange {
            min: 49152,
            max: 65535
        }
    );
    assert_eq!(c.turn_relay_ports.len(), 16384);
    assert_eq!(c.turn_realm, "tandem");
    assert!(c.turn_secret.is_none());
    assert_eq!(c.turn_credential_ttl(), Duration::from_secs(3600));
    assert!(c.turn_allow_peer.is_empty() && c.turn_deny_peer.is_empty());
    assert!(!c.turn_allow_loopback_peers);
    assert_eq!(c.turn_max_allocations_per_user, 10);
    assert_eq!(c.turn_max_bytes_per_sec, 625_000, "5 Mbit/s");
    assert!(!c.turn_open_relay);
    assert!(c.turn_relay_ip.is_empty());

    let c = ok(
        &[
            "--turn-enabled=false",
            "--turn-port",
            "0",
            "--turn-tls-port",
            "443",
            "--turn-relay-ports",
            "40000-40100",
            "--turn-allow-peer",
            "10.1.0.0/16",
            "--turn-allow-peer",
            "fd00::/8",
            "--turn-deny-peer",
            "203.0.113.0/24",
            "--turn-allow-loopback-peers",
            "--turn-max-bytes-per-sec",
            "1000000",
            "--turn-open-relay",
            "--turn-relay-ip",
            "192.0.2.1",
            "--turn-relay-ip",
            "2001:db8::1",
        ],
        &[("TANDEM_TURN_SECRET", GOOD_SECRET)],
    );
    assert!(!c.turn_enabled);
    assert_eq!(c.turn_port, 0);
    assert_eq!(c.turn_tls_port, 443);
    assert_eq!(c.turn_relay_ports.to_string(), "40000-40100");
    assert_eq!(c.turn_allow_peer.len(), 2);
    assert_eq!(c.turn_deny_peer[0].to_string(), "203.0.113.0/24");
    assert!(c.turn_allow_loopback_peers);
    assert_eq!(c.turn_max_bytes_per_sec, 1_000_000);
    assert!(c.turn_open_relay);
    assert_eq!(c.turn_relay_ip.len(), 2);
    assert_eq!(
        c.turn_secret.as_ref().map(Secret::expose),
        Some(GOOD_SECRET)
    );
    assert!(
        !format!("{c:?}").contains(GOOD_SECRET),
        "the TURN secret is redacted"
    );

    let file =
        toml_file("turn_relay_ports = \"50000-50010\"\nturn_allow_peer = [\"192.168.0.0/16\"]\n");
    let c = ok(&["--config", &path_of(&file)], &[]);
    assert_eq!(
        c.turn_relay_ports,
        PortRange {
            min: 50000,
            max: 50010
        }
    );
    assert_eq!(c.turn_allow_peer[0].to_string(), "192.168.0.0/16");
}

#[test]
fn bad_turn_values_refused() {
    assert!(err(&["--turn-relay-ports", "60000-50000"], &[]).contains("--turn-relay-ports"));
    assert!(err(&["--turn-relay-ports", "0-10"], &[]).contains("--turn-relay-ports"));
    assert!(err(&["--turn-relay-ports", "5000"], &[]).contains("--turn-relay-ports"));
    assert!(err(&["--turn-allow-peer", "10.0.0.0/33"], &[]).contains("--turn-allow-peer"));
    assert!(err(&["--turn-deny-peer", "nonsense"], &[]).contains("--turn-deny-peer"));
    assert!(err(&["--turn-secret", "short"], &[]).contains("turn_secret"));
    let bad = err(&[], &[("TANDEM_TURN_SECRET", "short")]);
    assert!(
        bad.contains("turn_secret") && !bad.contains("short\""),
        "{bad}"
    );
    assert!(err(&["--turn-cert", "/x.pem"], &[]).contains("turn_key"));
    assert!(err(&["--turn-key", "/x.pem"], &[]).contains("turn_cert"));
    assert!(err(&["--turn-port", "50000"], &[]).contains("turn_relay_ports"));
    assert!(err(&["--turn-tls-port", "3478"], &[]).contains("turn_tls_port"));
    assert!(err(&["--turn-port", "7882"], &[]).contains("rtc_udp_port"));
    assert!(err(&["--turn-port", "8080"], &[]).contains("bind"));
    assert!(err(&["--turn-max-allocations-per-user", "0"], &[])
        .contains("turn_max_allocations_per_user"));
    assert!(err(&["--turn-max-bytes-per-sec", "0"], &[]).contains("turn_max_bytes_per_sec"));
    assert!(err(
        &[
            "--turn-relay-ip",
            "192.0.2.1",
            "--turn-relay-ip",
            "192.0.2.2"
        ],
        &[]
    )
    .contains("turn_relay_ip"));
    assert!(err(&["--turn-relay-ip", "0.0.0.0"], &[]).contains("turn_relay_ip"));
    assert!(err(&["--turn-credential-ttl-secs", "10"], &[]).contains("turn_credential_ttl_secs"));
    assert!(err(&["--turn-realm", " "], &[]).contains("turn_realm"));
    assert!(err(&["--turn-udp-workers", "0"], &[]).contains("turn_udp_workers"));
    // Disabled TURN does not care where its ports would be.
    ok(&["--turn-enabled=false", "--turn-port", "50000"], &[]);
}

#[test]
fn file_settings() {
    let c = ok(&[], &[]);
    assert_eq!(c.max_file_size, 10 * 1024 * 1024);
    assert_eq!(c.file_ttl().as_secs(), 3600);
    assert_eq!(c.file_uploads_per_min, 5);
    assert_eq!(c.file_bytes_per_hour, 30 * 1024 * 1024);
    assert_eq!(c.file_storage_bytes(), 512 * 1024 * 1024);
    assert_eq!(c.file_dir, None);
    assert_eq!(c.max_voice_secs, 300);
    let dir = std::env::temp_dir();
    let dir_s = dir.to_str().expect("temp dir is UTF-8");
    let c = ok(
        &[
            "--max-file-size",
            "2048",
            "--file-ttl",
            "2",
            "--file-dir",
            dir_s,
        ],
        &[
            ("TANDEM_FILE_STORAGE_MB", "1"),
            ("TANDEM_FILE_UPLOADS_PER_MIN", "9"),
        ],
    );
    assert_eq!(
        (
            c.max_file_size,
            c.file_ttl,
            c.file_storage_mb,
            c.file_uploads_per_min
        ),
        (2048, 2, 1, 9)
    );
    assert_eq!(c.file_dir.as_deref(), Some(dir.as_path()));
    assert!(err(&["--max-file-size", "10"], &[]).contains("max_file_size"));
    assert!(err(&["--file-ttl", "0"], &[]).contains("file_ttl"));
    assert!(err(&["--file-ttl", "86401"], &[]).contains("file_ttl"));
    assert!(err(&["--file-uploads-per-min", "0"], &[]).contains("file_uploads_per_min"));
    assert!(err(&["--file-storage-mb", "0"], &[]).contains("file_storage_mb"));
    assert!(err(&["--max-voice-secs", "0"], &[]).contains("max_voice_secs"));
    assert!(err(&["--file-bytes-per-hour", "1000"], &[]).contains("file_bytes_per_hour"));
    assert!(err(&["--file-dir", "/nonexistent/tandem-files"], &[]).contains("file_dir"));
}

#[test]
fn session_handshake_and_heartbeat_settings() {
    let c = ok(&[], &[]);
    assert_eq!(c.max_sessions_per_ip, 20);
    assert_eq!(c.guest_connect_timeout(), Duration::from_secs(60));
    assert_eq!(c.socket_handshakes_per_min, 60);
    assert_eq!(c.ping_interval(), Duration::from_secs(25));
    assert_eq!(c.ping_timeout(), Duration::from_secs(20));
    let c = ok(
        &[
            "--max-sessions-per-ip",
            "3",
            "--guest-connect-timeout-secs",
            "1",
            "--ping-interval-secs",
            "2",
        ],
        &[
            ("TANDEM_SOCKET_HANDSHAKES_PER_MIN", "7"),
            ("TANDEM_PING_TIMEOUT_SECS", "300"),
        ],
    );
    assert_eq!(
        (
            c.max_sessions_per_ip,
            c.guest_connect_timeout_secs,
            c.socket_handshakes_per_min,
            c.ping_interval_secs,
            c.ping_timeout_secs
        ),
        (3, 1, 7, 2, 300)
    );
    for (flag, value, key) in [
        ("--max-sessions-per-ip", "0", "max_sessions_per_ip"),
        (
            "--socket-handshakes-per-min",
            "0",
            "socket_handshakes_per_min",
        ),
        (
            "--guest-connect-timeout-secs",
            "0",
            "guest_connect_timeout_secs",
        ),
        (
            "--guest-connect-timeout-secs",
            "3601",
            "guest_connect_timeout_secs",
        ),
        ("--ping-interval-secs", "0", "ping_interval_secs"),
        ("--ping-timeout-secs", "301", "ping_timeout_secs"),
    ] {
        let message = err(&[flag, value], &[]);
        assert!(message.contains(key), "{flag} {value}: {message}");
    }
}

#[test]
fn connection_hardening_settings() {
    let c = ok(&[], &[]);
    assert_eq!(c.max_http_connections_per_ip, 128);
    assert_eq!(c.max_stream_connections_per_ip, 32);
    assert_eq!(
        (c.http_header_timeout_secs, c.http_body_timeout_secs),
        (10, 30)
    );
    assert!(c.trusted_proxy.is_empty());
    assert_eq!(c.metrics_bind, None);
    let c = ok(
        &[
            "--trusted-proxy",
            "10.0.0.0/8",
            "--trusted-proxy",
            "fd00::/8",
            "--metrics-bind",
            "127.0.0.1:9100",
            "--max-http-connections-per-ip",
            "7",
        ],
        &[],
    );
    assert_eq!(c.trusted_proxy.len(), 2);
    assert_eq!(c.metrics_bind, Some("127.0.0.1:9100".parse().unwrap()));
    assert_eq!(c.max_http_connections_per_ip, 7);
    for (args, key) in [
        (
            &["--max-http-connections-per-ip", "0"][..],
            "max_http_connections_per_ip",
        ),
        (
            &["--max-stream-connections-per-ip", "0"][..],
            "max_stream_connections_per_ip",
        ),
        (
            &["--http-header-timeout-secs", "0"][..],
            "http_header_timeout_secs",
        ),
        (
            &["--http-body-timeout-secs", "3601"][..],
            "http_body_timeout_secs",
        ),
        (
            &[
                "--bind",
                "127.0.0.1:9100",
                "--metrics-bind",
                "127.0.0.1:9100",
            ][..],
            "metrics_bind",
        ),
        (&["--trusted-proxy", "not-a-cidr"][..], "--trusted-proxy"),
    ] {
        let message = err(args, &[]);
        assert!(message.contains(key), "{args:?}: {message}");
    }
}

const TURN_SECRET: &str = "0123456789abcdef-turn";

#[test]
fn redis_is_off_by_default() {
    let c = ok(&[], &[]);
    assert!(c.redis_url.is_empty());
    assert!(c.redis().unwrap().is_none());
    assert!(c.node_name.is_none());
}

#[test]
fn redis_url_from_flag_env_and_file() {
    let secrets = ["--jwt-secret", GOOD_SECRET, "--turn-secret", TURN_SECRET];
    let c = ok(
        &[&["--redis-url", "redis://127.0.0.1:6390/1"], &secrets[..]].concat(),
        &[],
    );
    let t = c.redis().unwrap().unwrap();
    assert!(!t.cluster && !t.tls);
    assert_eq!(t.hosts[0].to_string(), "127.0.0.1:6390");
    assert_eq!(t.db, 1);

    let c = ok(
        &secrets,
        &[("TANDEM_REDIS_URL", "redis+cluster://a:7000,b:7001")],
    );
    let t = c.redis().unwrap().unwrap();
    assert!(t.cluster);
    assert_eq!(t.hosts.len(), 2);

    // The flag repeated: a cluster's seed nodes.
    let c = ok(
        &[
            &[
                "--redis-url",
                "rediss://a:7000",
                "--redis-url",
                "rediss://b:7000",
            ],
            &secrets[..],
        ]
        .concat(),
        &[],
    );
    let t = c.redis().unwrap().unwrap();
    assert!(t.cluster && t.tls);

    // TOML: a string, or a list of seed nodes.
    let file = toml_file(&format!(
        "redis_url = \"redis://:pw@r:6379\"\njwt_secret = \"{GOOD_SECRET}\"\nturn_secret = \"{TURN_SECRET}\"\n"
    ));
    let c = ok(&["--config", &path_of(&file)], &[]);
    assert!(!c.redis().unwrap().unwrap().cluster);
    let file = toml_file(&format!(
        "redis_url = [\"redis://a:1\", \"redis://b:2\"]\njwt_secret = \"{GOOD_SECRET}\"\nturn_secret = \"{TURN_SECRET}\"\n"
    ));
    let c = ok(&["--config", &path_of(&file)], &[]);
    assert!(c.redis().unwrap().unwrap().cluster);
}

#[test]
fn redis_needs_shared_secrets() {
    let message = err(&["--redis-url", "redis://127.0.0.1:6379"], &[]);
    assert!(
        message.contains("--jwt-secret") && message.contains("--turn-secret"),
        "{message}"
    );
    assert!(message.contains("--redis-url"), "names the flag: {message}");
    let message = err(
        &[
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--jwt-secret",
            GOOD_SECRET,
        ],
        &[],
    );
    assert!(
        message.contains("--turn-secret") && !message.contains("--jwt-secret"),
        "{message}"
    );
    // Without TURN, only the token key must be shared.
    ok(
        &[
            "--redis-url",
            "redis://127.0.0.1:6379",
            "--jwt-secret",
            GOOD_SECRET,
            "--turn-enabled=false",
        ],
        &[],
    );
}

#[test]
fn redis_passwords_stay_out_of_messages_and_debug() {
    let secrets = ["--jwt-secret", GOOD_SECRET, "--turn-secret", TURN_SECRET];
    let c = ok(
        &[
            &["--redis-url", "redis://admin:hunter2hunter2@r:6379/0"],
            &secrets[..],
        ]
        .concat(),
        &[],
    );
    let shown = format!("{c:?}");
    assert!(!shown.contains("hunter2"), "{shown}");
    assert!(shown.contains("admin:[redacted]@r:6379"), "{shown}");
    let target = c.redis().unwrap().unwrap();
    assert!(!target.to_string().contains("hunter2"));
    assert!(!format!("{target:?}").contains("hunter2"));
    for bad in ["redis://u:hunter2@bad host", "redis://u:hunter2@h:99999"] {
        let message = err(&[&["--redis-url", bad], &secrets[..]].concat(), &[]);
        assert!(message.contains("redis_url"), "{message}");
        assert!(!message.contains("hunter2"), "{message}");
        let message = err(&secrets, &[("TANDEM_REDIS_URL", bad)]);
        assert!(!message.contains("hunter2"), "{message}");
    }
    let message = err(&[&["--redis-url", "http://h"], &secrets[..]].concat(), &[]);
    assert!(message.contains("scheme"), "{message}");
}

#[test]
fn node_name() {
    assert_eq!(
        ok(&["--node-name", "edge-1.eu"], &[]).node_name.as_deref(),
        Some("edge-1.eu")
    );
    assert_eq!(
        ok(&[], &[("TANDEM_NODE_NAME", "n2")]).node_name.as_deref(),
        Some("n2")
    );
    for bad in ["", "has space", "naïve", &"x".repeat(65)] {
        let message = err(&["--node-name", bad], &[]);
        assert!(message.contains("node_name"), "{bad:?}: {message}");
    }
}

fn invoke(rest: &[&str], vars: &[(&str, &str)]) -> Result<Invocation, ConfigError> {
    invocation_from(args(rest), &env(vars))
}

fn check_config(rest: &[&str], vars: &[(&str, &str)]) -> Effective {
    match invoke(&[&["check-config"], rest].concat(), vars) {
        Ok(Invocation::CheckConfig(effective)) => effective,
        Ok(Invocation::Run(_)) => panic!("check-config ran the server"),
        Err(err) => panic!("unexpected error: {err}"),
    }
}

/// The `key  origin  value` line of `check-config`'s output for `key`.
fn line_of<'a>(printed: &'a str, key: &str) -> Vec<&'a str> {
    let line = printed
        .lines()
        .find(|line| line.split_whitespace().next() == Some(key))
        .unwrap_or_else(|| panic!("no line for {key} in:\n{printed}"));
    let (key, rest) = line.split_once(' ').unwrap_or((line, ""));
    let (origin, value) = rest.trim_start().split_once(' ').unwrap_or((rest, ""));
    vec![key, origin, value.trim_start()]
}

#[test]
fn plain_invocation_runs_the_server() {
    let Ok(Invocation::Run(config)) = invoke(&["--match-burst", "4"], &[]) else {
        panic!("expected Run");
    };
    assert_eq!(config.match_burst, 4);
}

#[test]
fn check_config_shows_values_and_where_they_came_from() {
    let file = toml_file("match_burst = 5\nmax_calls = 7\n");
    let effective = check_config(
        &["--config", &path_of(&file), "--bind", "127.0.0.1:9000"],
        &[
            ("TANDEM_JWT_SECRET", GOOD_SECRET),
            ("TANDEM_MAX_CALLS", "8"),
        ],
    );
    assert_eq!(effective.origin("match_burst"), Some(Origin::File));
    assert_eq!(effective.origin("max_calls"), Some(Origin::Env));
    assert_eq!(effective.origin("bind"), Some(Origin::Flag));
    assert_eq!(effective.origin("jwt_secret"), Some(Origin::Env));
    assert_eq!(effective.origin("max_sessions"), Some(Origin::Default));
    assert_eq!(effective.origin("no_such_key"), None);
    assert_eq!(effective.config().max_calls, 8);

    let printed = effective.to_string();
    assert!(!printed.contains(GOOD_SECRET), "{printed}");
    assert_eq!(
        line_of(&printed, "bind"),
        ["bind", "flag", "127.0.0.1:9000"]
    );
    assert_eq!(
        line_of(&printed, "match_burst"),
        ["match_burst", "file", "5"]
    );
    assert_eq!(line_of(&printed, "max_calls"), ["max_calls", "env", "8"]);
    assert_eq!(
        line_of(&printed, "jwt_secret"),
        ["jwt_secret", "env", "[redacted]"]
    );
    assert_eq!(
        line_of(&printed, "max_sessions"),
        ["max_sessions", "default", "100000"]
    );
    // No value: what `--help` says happens then.
    assert_eq!(
        line_of(&printed, "turn_secret"),
        ["turn_secret", "default", "(random at each start)"]
    );
    assert_eq!(
        line_of(&printed, "allowed_origin"),
        ["allowed_origin", "default", "(none)"]
    );
    assert!(
        printed.starts_with(&format!("# config file: {} (flag)\n", path_of(&file))),
        "{printed}"
    );

    // One line per setting, under its section's heading, in `--help` order.
    let settings: Vec<&str> = printed.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(settings.len(), FIELDS.len());
    let headings: Vec<&str> = printed
        .lines()
        .filter_map(|l| l.strip_prefix("# "))
        .skip(1)
        .collect();
    assert_eq!(headings, SECTIONS);
}

#[test]
fn check_config_takes_flags_before_or_after_it_and_the_file_from_env() {
    let after = check_config(&["--match-burst", "6"], &[]);
    assert_eq!(after.config().match_burst, 6);
    let Ok(Invocation::CheckConfig(before)) = invoke(&["--match-burst", "6", "check-config"], &[])
    else {
        panic!("expected CheckConfig");
    };
    assert_eq!(before.origin("match_burst"), Some(Origin::Flag));

    let file = toml_file("match_burst = 5\n");
    let effective = check_config(&[], &[("TANDEM_CONFIG", &path_of(&file))]);
    assert!(
        effective
            .to_string()
            .starts_with(&format!("# config file: {} (env)\n", path_of(&file))),
        "{effective}"
    );
    assert!(check_config(&[], &[])
        .to_string()
        .starts_with("# config file: none\n"));
}

#[test]
fn check_config_refuses_what_a_start_refuses_with_the_same_message() {
    let file = toml_file("match_burst = 0\n");
    let path = path_of(&file);
    let start = err(&["--config", &path], &[]);
    let Err(check) = invoke(&["check-config", "--config", &path], &[]) else {
        panic!("accepted a bad config");
    };
    assert_eq!(check.to_string(), start);
    assert!(start.contains("match_burst"), "{start}");
    assert!(start.contains(&path), "names the file: {start}");

    let Err(ConfigError::UnknownEnv { .. }) = invoke(&["check-config"], &[("TANDEM_BOGUS", "1")])
    else {
        panic!("expected the unknown variable refused");
    };
    let Err(ConfigError::Cli(e)) = invoke(&["check-confg"], &[]) else {
        panic!("expected a clap error");
    };
    assert_eq!(e.kind(), ErrorKind::InvalidSubcommand);
}

#[test]
fn check_config_redacts_redis_passwords() {
    let effective = check_config(
        &[
            "--redis-url",
            "redis://admin:hunter2hunter2@r:6379/0",
            "--jwt-secret",
            GOOD_SECRET,
        ],
        &[("TANDEM_TURN_SECRET", TURN_SECRET)],
    );
    let printed = effective.to_string();
    assert!(!printed.contains("hunter2"), "{printed}");
    assert!(!printed.contains(TURN_SECRET), "{printed}");
    assert_eq!(
        line_of(&printed, "redis_url"),
        ["redis_url", "flag", "redis://admin:[redacted]@r:6379/0"]
    );
    assert_eq!(
        line_of(&printed, "turn_secret"),
        ["turn_secret", "env", "[redacted]"]
    );
}

/// The `--help` sections, in order.
const SECTIONS: [&str; 7] = [
    "HTTP and limits",
    "Chat",
    "Media",
    "TURN",
    "Files",
    "Cluster",
    "Logs",
];

/// Every flag of the clap definition (the source of `--help`): its section
/// (`None`: clap's own "Options"), name and the default its help shows.
fn flags_in_help() -> Vec<(Option<String>, String, String)> {
    use clap::CommandFactory;
    Cli::command()
        .get_arguments()
        .filter_map(|arg| {
            let long = arg.get_long()?;
            if matches!(long, "help" | "version") {
                return None;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let default = help
                .split_once("[default: ")
                .and_then(|(_, rest)| rest.split_once("] [env: "))
                .map(|(default, _)| default.to_owned())
                .unwrap_or_else(|| panic!("--{long} shows no default: {help}"));
            let section = arg.get_help_heading().map(str::to_owned);
            Some((section, format!("--{long}"), default))
        })
        .collect()
}

#[test]
fn help_is_grouped_by_section() {
    let flags = flags_in_help();
    assert_eq!(flags.len(), FIELDS.len() + 1, "every setting and --config");
    for (section, flag, _) in &flags {
        match section {
            None => assert_eq!(flag, "--config"),
            Some(section) => assert!(SECTIONS.contains(&section.as_str()), "{flag}: {section}"),
        }
    }
    let Err(ConfigError::Cli(e)) = load_with(&["--help"], &[]) else {
        panic!("expected help");
    };
    let help = e.to_string();
    let at: Vec<usize> = SECTIONS
        .iter()
        .map(|section| {
            help.find(&format!("\n{section}:\n"))
                .unwrap_or_else(|| panic!("no section {section} in:\n{help}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "sections out of order");
    // Flags sit under their own section.
    let turn = help.find("\nTURN:\n").unwrap();
    let files = help.find("\nFiles:\n").unwrap();
    let realm = help.find("--turn-realm").unwrap();
    assert!(turn < realm && realm < files, "{help}");
    assert!(help.contains("check-config"), "{help}");
}

/// The settings tables of the README's Configuration section: per row its
/// section (the `###` heading above it; `None` before the first), flag and
/// default, backticks removed.
fn flags_in_readme() -> Vec<(Option<String>, String, String)> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).expect("README.md");
    let start = readme
        .find("\n## Configuration\n")
        .expect("README has a Configuration section");
    let text = &readme[start + 1..];
    let end = text[3..].find("\n## ").map_or(text.len(), |i| i + 3);
    let mut section = None;
    let mut rows = Vec::new();
    for line in text[..end].lines() {
        if let Some(heading) = line.strip_prefix("### ") {
            section = Some(heading.trim().to_owned());
            continue;
        }
        if !line.starts_with("| `--") {
            continue;
        }
        let cells: Vec<String> = line
            .replace("\\|", "\u{0}")
            .split('|')
            .map(|cell| cell.replace('\u{0}', "|").trim().to_owned())
            .collect();
        assert!(cells.len() >= 4, "not a table row: {line}");
        let flags: Vec<&str> = cells[1]
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|word| word.starts_with("--"))
            .collect();
        assert_eq!(flags.len(), 1, "one flag per row: {line}");
        rows.push((
            section.clone(),
            flags[0].to_owned(),
            cells[2].replace('`', ""),
        ));
    }
    rows
}

#[test]
fn readme_settings_table_matches_help() {
    let help = flags_in_help();
    let readme = flags_in_readme();
    let mut problems = Vec::new();
    for (section, flag, default) in &help {
        match readme.iter().find(|(_, f, _)| f == flag) {
            None => problems.push(format!("{flag} is missing from the README")),
            Some((readme_section, _, readme_default)) => {
                if readme_default != default {
                    problems.push(format!(
                        "{flag}: README default `{readme_default}`, --help `{default}`"
                    ));
                }
                if readme_section != section {
                    problems.push(format!(
                        "{flag}: README section {readme_section:?}, --help {section:?}"
                    ));
                }
            }
        }
    }
    for (i, (_, flag, _)) in readme.iter().enumerate() {
        if !help.iter().any(|(_, f, _)| f == flag) {
            problems.push(format!("the README lists {flag}, which does not exist"));
        }
        if readme[..i].iter().any(|(_, f, _)| f == flag) {
            problems.push(format!("the README lists {flag} twice"));
        }
    }
    assert!(
        problems.is_empty(),
        "README.md's settings tables disagree with --help:\n{}",
        problems.join("\n")
    );
}

#[test]
fn defaults_agree_with_the_cores() {
    let c = Config::default();
    // The whole signaling core config a default `Config` maps to is the core's own default.
    assert_eq!(
        format!("{:?}", c.signaling_core()),
        format!("{:?}", tandem_signaling::CoreConfig::default())
    );
    // A changed setting reaches the core.
    let changed = ok(&["--match-burst", "9", "--stats-interval-ms", "250"], &[]).signaling_core();
    assert_eq!(changed.match_burst, 9);
    assert_eq!(changed.stats_interval, Duration::from_millis(250));

    let media = tandem_media::MediaConfig::default();
    assert_eq!(c.call_connect_timeout(), media.connect_timeout);
    assert_eq!(c.rtc_udp_port, media.udp_addr.port());
    // A call is two peers; one media worker holds them all.
    assert_eq!(c.max_calls * 2, media.max_peers);

    let turn = tandem_turn::Config::default();
    assert_eq!(c.turn_realm, turn.realm);
    assert_eq!(
        c.turn_relay_ports.min..=c.turn_relay_ports.max,
        turn.port_range
    );
    assert_eq!(
        c.turn_max_allocations_per_user as usize,
        turn.max_allocations_per_user
    );
    assert_eq!(
        c.turn_max_permissions as usize,
        turn.max_permissions_per_allocation
    );
    assert_eq!(c.turn_allow_loopback_peers, turn.allow_loopback_peers);
    assert_eq!(c.turn_open_relay, turn.open_relay);
    assert_eq!(c.turn_max_allocations as usize, turn.max_allocations);
    assert_eq!(
        Some(c.turn_max_bytes_per_sec),
        turn.bytes_per_sec_per_allocation
    );
    // 5 Mbit/s, as the flag's help says.
    assert_eq!(c.turn_max_bytes_per_sec * 8, 5_000_000);
}

#[test]
fn help_shows_the_real_defaults() {
    // Settings with a value by default show that value, taken from the default itself.
    let c = Config::default();
    let help = flags_in_help();
    let shown = |flag: &str| {
        help.iter()
            .find(|(_, f, _)| f == flag)
            .map(|(_, _, d)| d.clone())
            .unwrap_or_else(|| panic!("no {flag}"))
    };
    assert_eq!(shown("--token-ttl-secs"), c.token_ttl_secs.to_string());
    assert_eq!(shown("--stats-interval-ms"), "1000");
    assert_eq!(shown("--turn-relay-ports"), "49152-65535");
    assert_eq!(shown("--bind"), "0.0.0.0:8080");
    assert_eq!(shown("--max-file-size"), "10485760");
    assert_eq!(shown("--jwt-secret"), "random at each start");
    assert_eq!(shown("--config"), "none");
}
