#!/usr/bin/env bash
# The sender-adaptation test (tests/e2e/browser/adapt.test.mjs, also part of the browser suite) alone: two Chromiums in network namespaces of their
# own call through tandem; B's downlink is shaped to 200 kbit/s with tc tbf, then freed. Prints A's
# sending bitrate before, under and after the shaping, and what B decodes. Needs root (it makes
# network namespaces), Debian's chromium, and a built tandem (cargo build --bin tandem).
set -euo pipefail
cd "$(dirname "$0")/../.."
exec unshare -n sh -c 'ip link set lo up \
  && ip link add tandem0 type veth peer name tandem1 \
  && ip addr add 10.254.0.1/30 dev tandem0 && ip link set tandem0 up && ip link set tandem1 up \
  && TANDEM_BIN=${TANDEM_BIN:-target/debug/tandem} node --test --test-reporter=spec tests/e2e/browser/adapt.test.mjs'
