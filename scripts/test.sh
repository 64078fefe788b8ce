#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Client packages for the integration tests (the official socket.io-client).
if [ ! -d tests/e2e/node_modules ] || [ tests/e2e/package-lock.json -nt tests/e2e/node_modules ]; then
  # (run inside the folder: npm 11 refuses `ci --prefix`, finding no lockfile)
  (cd tests/e2e && npm ci --no-audit --no-fund)
fi

# The end-to-end suite runs in its own network namespace (`unshare -n`, then `ip link set lo up`;
# see tests/e2e.rs): util-linux is always there, iproute2 may not be on a minimal machine.
if ! command -v ip >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq iproute2
fi

# The delivery tests (tests/e2e/delivery.test.mjs) take a client's network away by dropping its
# packets with nftables, inside the suite's own network namespace.
if ! command -v nft >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nftables
fi

# The browser tests (tests/e2e/browser) drive Debian's Chromium through playwright-core, which
# never downloads a browser; the fonts give the screenshots readable text.
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-liberation
fi

# The TURN interop tests (tests/e2e/turn.test.mjs) use coturn's own client tools; the browser
# TURN test makes its TLS certificate with openssl.
if { ! command -v turnutils_uclient >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1; } \
  && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq coturn openssl
fi

# The cluster tests (tests/e2e/cluster.test.mjs) start their own Debian redis-server on a free
# port inside the suite's network namespace (never a system service).
if ! command -v redis-server >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
fi
if ! redis-server --version; then
  echo "redis-server is missing or does not run: the cluster tests need it (apt-get install redis-server)" >&2
  exit 1
fi

# The dashboard and alert tests (tests/e2e/prometheus.test.mjs) run Debian's Prometheus on a free
# port inside the suite's network namespace, and promtool on the rules (never the system service:
# stopped if the package started it).
if { ! command -v promtool >/dev/null 2>&1 || ! command -v prometheus >/dev/null 2>&1; } \
  && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
  systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

# The web client (web/): the page embedded in the binary is web/dist, committed so that running
# needs no Node. It must be exactly what web/src builds; if not, rebuild and commit it
# (`npm run build --prefix web`).
if [ ! -d web/node_modules ] || [ web/package-lock.json -nt web/node_modules ]; then
  (cd web && npm ci --no-audit --no-fund)
fi
rm -rf target/web-dist-check
npm run --silent build --prefix web -- --out "$PWD/target/web-dist-check"
if ! diff -r web/dist target/web-dist-check; then
  echo "web/dist is out of date with web/src: run 'npm run build --prefix web' and commit web/dist" >&2
  exit 1
fi

cargo build --workspace --all-targets
mkdir -p target
set +e
cargo test --workspace 2>&1 | tee target/test-output.log
status=${PIPESTATUS[0]}
# The web client's unit tests (type check, then its state logic under node --test).
npm test --prefix web 2>&1 | tee -a target/test-output.log
web_status=${PIPESTATUS[0]}
[ "$status" = 0 ] && status=$web_status
# The fuzz targets (fuzz/, cargo fuzz), 30 s each: each counts as one test, passed unless it
# crashed (scripts/fuzz.sh prints one `fuzz result:` line per target).
scripts/fuzz.sh --seconds 30 2>&1 | tee target/fuzz-output.log
fuzz_status=${PIPESTATUS[0]}
sed -n -e 's/^fuzz result: [^ ]* pass.*/# pass 1/p' -e 's/^fuzz result: [^ ]* fail.*/# fail 1/p' \
  target/fuzz-output.log >>target/test-output.log
[ "$status" = 0 ] && status=$fuzz_status
set -e
# One closing line for the whole run: cargo's own results plus the Node suites' (tests/e2e, web)
# and the fuzz targets.
awk '/^test result:/ { p += $4; f += $6 }
     /^# pass / { p += $3 } /^# fail / { f += $3 }
     END { printf "tests: %d passed, %d failed\n", p, f }' target/test-output.log
exit "$status"
