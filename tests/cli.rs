//! The binary's command line: help reads well, bad configuration exits non-zero with a clear
//! message and never starts serving.

use std::process::Command;

fn tandem(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .env_remove("TANDEM_JWT_SECRET")
        .output()
        .expect("the tandem binary runs")
}

#[test]
fn help_lists_the_operator_flags() {
    let out = tandem(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "--bind",
        "--jwt-secret",
        "--allowed-origin",
        "--dev",
        "--log-format",
        "--log-level",
        "--config",
    ] {
        assert!(help.contains(flag), "--help mentions {flag}");
    }
    assert!(help.contains("TANDEM_BIND"), "--help names the env vars");
}

#[test]
fn bad_values_are_refused_with_the_key_named() {
    let out = tandem(&["--match-burst", "0", "--bind", "127.0.0.1:0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("match_burst"));

    let out = tandem(&["--bind", "not-an-address"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("bind"));
}

#[test]
fn unknown_toml_keys_are_refused() {
    let dir = std::env::temp_dir().join(format!("tandem-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("tandem.toml");
    std::fs::write(&file, "bind = \"127.0.0.1:0\"\nmax_socket_per_guest = 3\n")
        .expect("write config");
    let out = tandem(&["--config", file.to_str().expect("utf-8 path")]);
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("max_socket_per_guest"));
}
