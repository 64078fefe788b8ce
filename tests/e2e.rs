//! Runs the Socket.IO / HTTP / WebRTC end-to-end suite in `tests/e2e/` (node's built-in test
//! runner, the official socket.io-client and @roamhq/wrtc) against the `tandem` binary that cargo
//! just built.
//!
//! Needs Node 20+ on PATH and `npm ci` run once in `tests/e2e/` (see tests/e2e/README.md).
//!
//! The suite runs inside a fresh network namespace (`unshare -n`) with only `lo` up: the servers,
//! their media ports and the test clients all live on loopback, and no test (WebRTC gathers
//! candidates on every interface) can reach or be reached from any other network. That needs
//! root (or CAP_SYS_ADMIN), util-linux's `unshare` and iproute2's `ip`; without them the test
//! fails with a message saying so instead of running outside the namespace.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// `sh -c` script run inside the namespace: bring loopback up, then become the test runner
/// (its arguments follow `sh`'s `$0`).
const IN_NAMESPACE: &str = "ip link set lo up && exec node --test --test-concurrency=2 \"$@\"";

/// Fails the test with a clear message unless `unshare -n` and `ip link set lo up` work here.
fn check_network_namespace() {
    let probe = Command::new("unshare")
        .args(["-n", "sh", "-c", "ip link set lo up"])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the end-to-end suite must run in its own network namespace, but \
             `unshare -n sh -c 'ip link set lo up'` failed ({}): {}\n\
             It needs root (or CAP_SYS_ADMIN) and the `ip` tool (Debian: apt-get install iproute2).",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(err) => panic!(
            "the end-to-end suite must run in its own network namespace, but `unshare` could not \
             be run ({err}); install util-linux (and iproute2) and run as root"
        ),
    }
}

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

    check_network_namespace();

    // Its own process group: whatever it starts (servers, test files) is killed with the group
    // below, even if a test process crashed before it could stop its server.
    let mut child = Command::new("unshare")
        .args(["-n", "sh", "-c", IN_NAMESPACE, "sh"])
        .args(&files)
        .current_dir(root)
        .env("TANDEM_BIN", env!("CARGO_BIN_EXE_tandem"))
        .process_group(0)
        .spawn()
        .unwrap_or_else(|err| panic!("could not run `unshare -n … node --test`: {err}"));
    let group = child.id();
    let status = child.wait();
    // Nothing of the group may outlive the suite.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(std::process::Stdio::null())
        .status();
    let status = status.unwrap_or_else(|err| panic!("waiting for the suite: {err}"));
    assert!(
        status.success(),
        "the end-to-end suite failed ({status}); if node is missing inside the namespace, Node \
         20+ must be on PATH"
    );
}
