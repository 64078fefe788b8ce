#!/usr/bin/env bash
# The test command: installs what the tests need on a fresh machine, then runs every test.
set -euo pipefail
cd "$(dirname "$0")/.."

# Client packages for the integration tests (the official socket.io-client).
if [ ! -d tests/e2e/node_modules ] || [ tests/e2e/package-lock.json -nt tests/e2e/node_modules ]; then
  npm ci --prefix tests/e2e --no-audit --no-fund
fi

cargo build --workspace --all-targets
cargo test --workspace
