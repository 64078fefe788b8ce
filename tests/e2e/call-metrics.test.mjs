// A call shows up in the Prometheus metrics: calls by state while it runs, setup time, forwarded
// packets and bytes by kind and direction, quality histograms from RTCP, the bandwidth estimate,
// and the end reason once it is over. Runs with two media workers, so the hand-over counter is
// exported too.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { serverFor, pair, emitAck, assertOk, waitFor, api } from './harness.mjs';
import { until } from './media.mjs';
import { request, accept, offeringPeers, dump, mediaFlowing } from './call-helpers.mjs';

/** `name{labels}` → value, from the Prometheus text format. */
async function scrape(url) {
  const res = await api(url, '/metrics');
  assert.equal(res.status, 200);
  const values = new Map();
  for (const line of res.text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    const i = line.lastIndexOf(' ');
    values.set(line.slice(0, i), Number(line.slice(i + 1)));
  }
  return values;
}

const get = (m, key) => m.get(key) ?? 0;

test('a call is visible in /metrics: states, setup time, forwarded packets by kind and direction, RTCP quality, end reason', async (t) => {
  const server = await serverFor(t, ['--rtc-udp-workers', '2'], { media: true });
  const { a, b, roomId } = await pair(server.url);
  const before = await scrape(server.url);
  assert.equal(get(before, 'tandem_calls{state="connected"}'), 0);
  assert.ok(before.has('tandem_media_handovers_total'), 'the hand-over counter is exported');

  await request(a, b, roomId, true);
  let m = await scrape(server.url);
  assert.equal(get(m, 'tandem_calls{state="ringing"}'), 1, 'a ringing call');
  assert.equal(get(m, 'tandem_call_requests_total'), 1);
  await accept(a, b, roomId);

  const [pa, pb] = await offeringPeers(t, a, b);
  await until(() => mediaFlowing(pa, pb), 20_000, () => `media did not flow:\n${dump(server, [pa, pb], { a, b })}`);

  // Counters are published once a second by each media worker; RTCP reports come every ~1–5 s.
  await until(
    async () => {
      m = await scrape(server.url);
      return (
        get(m, 'tandem_media_packets_total{direction="out",kind="video"}') > 50 &&
        get(m, 'tandem_media_packets_total{direction="out",kind="audio"}') > 50 &&
        get(m, 'tandem_media_rtt_seconds_count') > 0 &&
        get(m, 'tandem_media_jitter_seconds_count') > 0 &&
        get(m, 'tandem_media_bandwidth_estimate_bps_count') > 0
      );
    },
    15_000,
    () => `metrics never showed the media: ${[...m].filter(([k]) => k.startsWith('tandem_media') || k.startsWith('tandem_call')).map(([k, v]) => `${k} ${v}`).join('\n')}`,
  );
  assert.equal(get(m, 'tandem_calls{state="connected"}'), 1, 'one connected call');
  assert.equal(get(m, 'tandem_calls_accepted_total'), 1);
  assert.equal(get(m, 'tandem_call_setup_seconds_count'), 1, 'one setup time observed');
  assert.ok(get(m, 'tandem_call_setup_seconds_sum') > 0);
  assert.equal(get(m, 'tandem_media_peers'), 2, 'two media peers');
  for (const kind of ['audio', 'video']) {
    const pin = get(m, `tandem_media_packets_total{direction="in",kind="${kind}"}`);
    const pout = get(m, `tandem_media_packets_total{direction="out",kind="${kind}"}`);
    assert.ok(pin > 0 && pout > 0, `${kind}: in ${pin}, out ${pout}`);
    assert.ok(get(m, `tandem_media_bytes_total{direction="out",kind="${kind}"}`) > 0);
  }
  assert.equal(get(m, 'tandem_media_peer_panics_total'), 0);

  assertOk(await emitAck(a, 'call:end'));
  await waitFor(b, 'call:ended');
  await until(
    async () => {
      m = await scrape(server.url);
      return get(m, 'tandem_media_peers') === 0;
    },
    5000,
    () => `media peers never went back to 0: ${get(m, 'tandem_media_peers')}`,
  );
  assert.equal(get(m, 'tandem_calls_ended_total{reason="hangup"}'), 1);
  assert.equal(get(m, 'tandem_calls{state="connected"}'), 0);
});
