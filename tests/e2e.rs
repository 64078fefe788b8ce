//! Runs the Socket.IO / HTTP end-to-end suite in `tests/e2e/` (node's built-in test runner and
//! the official socket.io-client) against the `tandem` binary that cargo just built.
//!
//! Needs Node 20+ on PATH and `npm ci` run once in `tests/e2e/` (see tests/e2e/README.md).

use std::path::Path;
use std::process::Command;

#[test]
fn socketio_e2e() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("tests").join("e2e");
    assert!(
        dir.join("node_modules").is_dir(),
        "tests/e2e/node_modules is missing: run the README's test command, `./scripts/test.sh` \
         (it runs `npm ci` in tests/e2e), or `npm ci --prefix tests/e2e` once"
    );

    let mut files: Vec<String> = std::fs::read_dir(&dir)
        .expect("read tests/e2e")
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".test.mjs"))
        .map(|name| format!("tests/e2e/{name}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.mjs files in tests/e2e");

    let status = Command::new("node")
        .arg("--test")
        .arg("--test-concurrency=2")
        .args(&files)
        .current_dir(root)
        .env("TANDEM_BIN", env!("CARGO_BIN_EXE_tandem"))
        .status()
        .unwrap_or_else(|err| panic!("could not run `node` (Node 20+ must be on PATH): {err}"));
    assert!(
        status.success(),
        "the Socket.IO end-to-end suite failed ({status})"
    );
}
