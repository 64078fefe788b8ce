//! Runs the end-to-end suites against the `tandem` binary that cargo just built, with node's
//! built-in test runner:
//!
//! - `socketio_e2e`: `tests/e2e/*.test.mjs`, HTTP / Socket.IO / WebRTC (the official
//!   socket.io-client and @roamhq/wrtc);
//! - `browser_e2e`: `tests/e2e/browser/*.test.mjs`, the web client served by tandem in Debian's
//!   Chromium (`/usr/bin/chromium`) driven by playwright-core; screenshots go to `target/e2e/`.
//!
//! Needs Node 20+ on PATH and `npm ci` run once in `tests/e2e/` (see tests/e2e/README.md).
//!
//! Each suite runs inside a fresh network namespace (`unshare -n`) with only `lo` up: the servers,
//! their media ports, the test clients and the browser all live on loopback, and no test (WebRTC
//! gathers candidates on every interface) can reach or be reached from any other network. That
//! needs root (or CAP_SYS_ADMIN), util-linux's `unshare` and iproute2's `ip`; without them the
//! test fails with a message saying so instead of running outside the namespace. The two suites
//! never run at the same time (cargo runs the tests of one binary on parallel threads).
//!
//! The browser suite's namespace also has a veth pair (both ends inside it, no route anywhere):
//! Chromium counts only non-loopback links as a network, and with `lo` alone it would believe it
//! is offline (`navigator.onLine` false, so no `offline`/`online` events when a test takes the
//! network away and gives it back).

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

/// Held while a suite runs, so that the suites run one after the other.
static ONE_SUITE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Where the browser suite's screenshots go (relative to the repository root).
const ARTIFACTS: &str = "target/e2e";

/// Debian's Chromium, which the browser suite drives (never a downloaded browser).
const CHROMIUM: &str = "/usr/bin/chromium";

/// Brings loopback up in the new namespace.
const LO_UP: &str = "ip link set lo up";

/// Loopback up, plus a veth pair inside the namespace so that Chromium sees a network.
const LO_UP_AND_VETH: &str = "ip link set lo up \
    && ip link add tandem0 type veth peer name tandem1 \
    && ip addr add 10.254.0.1/30 dev tandem0 \
    && ip link set tandem0 up && ip link set tandem1 up";

/// Fails the test with a clear message unless `unshare -n` and `setup` work here.
fn check_network_namespace(setup: &str) {
    let probe = Command::new("unshare")
        .args(["-n", "sh", "-c", setup])
        .output();
    match probe {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "the end-to-end suite must run in its own network namespace, but \
             `unshare -n sh -c '{setup}'` failed ({}): {}\n\
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

/// The `*.test.mjs` files of `dir` (relative to the repository root), sorted, as relative paths.
fn test_files(root: &Path, dir: &str) -> Vec<String> {
    let mut files: Vec<String> = std::fs::read_dir(root.join(dir))
        .unwrap_or_else(|err| panic!("read {dir}: {err}"))
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".test.mjs"))
        .map(|name| format!("{dir}/{name}"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no *.test.mjs files in {dir}");
    files
}

/// Fails unless `npm ci` has been run in tests/e2e (and `package` is installed).
fn check_node_modules(root: &Path, package: &str) {
    let modules = root.join("tests").join("e2e").join("node_modules");
    assert!(
        modules.join(package).is_dir(),
        "tests/e2e/node_modules/{package} is missing: run the README's test command, \
         `./scripts/test.sh` (it runs `npm ci` in tests/e2e), or `npm ci --prefix tests/e2e` once"
    );
}

/// Runs `node --test --test-concurrency=<concurrency> <files>` in a fresh network namespace set up
/// by the `setup` script, with `TANDEM_BIN` set to the binary cargo built and `env` added, and
/// fails the test if the suite fails. Only one suite runs at a time.
fn run_suite(name: &str, setup: &str, concurrency: u32, files: &[String], env: &[(&str, String)]) {
    let _one_at_a_time = ONE_SUITE_AT_A_TIME
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    check_network_namespace(setup);

    // `sh -c` script run inside the namespace: set up the network, then become the test runner
    // (its arguments follow `sh`'s `$0`).
    // Besides TAP on stdout, the spec reporter writes to a file whose failure summary (node
    // prints one at its end) goes into the panic message: the failing assertion and its
    // diagnostics, not only the test's name, reach the CI log.
    let summary = root
        .join(ARTIFACTS)
        .join(format!("{}.spec.txt", name.replace(' ', "-")));
    // A TAP copy too: for a test file that died (a crash in a native module, an exit), only TAP
    // keeps its exit code, its signal and the stderr it wrote before, which go into the panic
    // message as well.
    let tap = root
        .join(ARTIFACTS)
        .join(format!("{}.tap.txt", name.replace(' ', "-")));
    let _ = std::fs::create_dir_all(root.join(ARTIFACTS));
    let _ = std::fs::remove_file(&summary);
    let _ = std::fs::remove_file(&tap);
    let script = format!(
        "{setup} && exec node --test --test-concurrency={concurrency} \
         --test-reporter=tap --test-reporter-destination=stdout \
         --test-reporter=spec --test-reporter-destination='{}' \
         --test-reporter=tap --test-reporter-destination='{}' \"$@\"",
        summary.display(),
        tap.display()
    );
    // Its own process group: whatever it starts (servers, browsers, test files) is killed with
    // the group below, even if a test process crashed before it could stop its server.
    let mut child = Command::new("unshare")
        .args(["-n", "sh", "-c", &script, "sh"])
        .args(files)
        .current_dir(root)
        .env("TANDEM_BIN", env!("CARGO_BIN_EXE_tandem"))
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .process_group(0)
        .spawn()
        .unwrap_or_else(|err| {
            panic!("could not run `unshare -n … node --test` for the {name}: {err}")
        });
    let group = child.id();
    let status = child.wait();
    // Nothing of the group may outlive the suite.
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stderr(std::process::Stdio::null())
        .status();
    let status = status.unwrap_or_else(|err| panic!("waiting for the {name}: {err}"));
    if !status.success() {
        panic!(
            "the {name} failed ({status}); if node is missing inside the namespace, Node 20+ \
             must be on PATH\n{}{}",
            failure_summary(&summary),
            failed_files(&tap)
        );
    }
}

/// The end of the spec reporter's output from its `failing tests:` summary on (at most 12 KiB),
/// or a note that there is none.
fn failure_summary(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return format!("(no spec report at {})", path.display());
    };
    let from = text.rfind("failing tests:").unwrap_or(0);
    let mut tail = &text[from..];
    if tail.len() > 12 * 1024 {
        let mut cut = tail.len() - 12 * 1024;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = &tail[cut..];
    }
    tail.to_owned()
}

/// From the TAP copy: every test file that failed as a whole (top-level `not ok` with the
/// exit code and signal of its process), each with up to 40 top-level comment lines written
/// before it (the stderr of the test files, which may interleave with other files' at a
/// concurrency above 1); at most 12 KiB in all, or nothing if no file failed as a whole.
fn failed_files(path: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let lines: Vec<&str> = text.lines().collect();
    let mut out = String::new();
    for (at, line) in lines.iter().enumerate() {
        if !line.starts_with("not ok ") || !line.contains(".test.mjs") {
            continue;
        }
        let before: Vec<&str> = lines[..at]
            .iter()
            .rev()
            .take_while(|l| !l.starts_with("ok ") && !l.starts_with("not ok "))
            .filter(|l| l.starts_with("# ") && !l.starts_with("# Subtest:"))
            .take(40)
            .copied()
            .collect();
        out.push_str("\ntest file failed as a whole (TAP):\n");
        for l in before.iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
        for l in lines[at..]
            .iter()
            .take_while(|l| !l.starts_with("  ..."))
            .take(30)
        {
            out.push_str(l);
            out.push('\n');
        }
    }
    if out.len() > 12 * 1024 {
        let mut cut = out.len() - 12 * 1024;
        while !out.is_char_boundary(cut) {
            cut += 1;
        }
        out = out[cut..].to_owned();
    }
    out
}

#[test]
fn socketio_e2e() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    check_node_modules(root, "socket.io-client");
    let files = test_files(root, "tests/e2e");
    run_suite("end-to-end suite", LO_UP, 2, &files, &[]);
}

#[test]
fn browser_e2e() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    assert!(
        Path::new(CHROMIUM).exists(),
        "{CHROMIUM} is missing: the browser end-to-end tests drive Debian's Chromium (never a \
         downloaded browser). Install it with `apt-get install chromium` (./scripts/test.sh does \
         so when run as root)"
    );
    check_node_modules(root, "playwright-core");
    let files = test_files(root, "tests/e2e/browser");
    let artifacts = root.join(ARTIFACTS);
    // Only this run's screenshots. (Not the directory: the other suite, running meanwhile in
    // another test thread, writes its report there.)
    if let Ok(entries) = std::fs::read_dir(&artifacts) {
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|e| e == "png") {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
    run_suite(
        "browser end-to-end suite",
        LO_UP_AND_VETH,
        1,
        &files,
        &[(
            "TANDEM_E2E_ARTIFACTS",
            artifacts.to_string_lossy().into_owned(),
        )],
    );
}

/// The TAP reading above, on what node 20 writes for a file killed by SIGSEGV beside a passing
/// file.
#[test]
fn failed_files_shows_a_crashed_file_with_its_stderr() {
    let tap = "TAP version 13\n# other file's line\n# Subtest: y\nok 1 - y\n  ---\n  \
               duration_ms: 2.8\n  ...\n# native module says goodbye\n# Subtest: /x/a.test.mjs\n\
               not ok 2 - /x/a.test.mjs\n  ---\n  duration_ms: 233.0\n  \
               location: '/x/a.test.mjs:1:1'\n  failureType: 'testCodeFailure'\n  exitCode: ~\n  \
               signal: 'SIGSEGV'\n  error: 'test failed'\n  ...\n1..2\n# fail 1\n";
    let dir = std::env::temp_dir().join(format!("tandem-e2e-tap-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("suite.tap.txt");
    std::fs::write(&path, tap).expect("write the TAP sample");
    let out = failed_files(&path);
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.contains("# native module says goodbye\nnot ok 2 - /x/a.test.mjs"),
        "{out}"
    );
    assert!(out.contains("signal: 'SIGSEGV'"), "{out}");
    assert!(!out.contains("other file's line"), "{out}");
    assert!(!out.contains("ok 1 - y"), "{out}");
    assert_eq!(failed_files(&dir.join("missing")), "");
}
