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
  // The call quality log line is info, on its own target.
  const server = await serverFor(t, ['--rtc-udp-workers', '2', '--log-level', 'warn,tandem::call=info'], { media: true });
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
        // RTT from the guests' receiver reports of the video sent to them (the call's "out" figures).
        get(m, 'tandem_media_rtt_seconds_count{kind="video"}') > 0 &&
        get(m, 'tandem_media_jitter_seconds_count{kind="video"}') > 0 &&
        get(m, 'tandem_media_bandwidth_estimate_bps_count') > 0 &&
        // Each receiver's downlink estimate goes back to the video's sender as REMB.
        get(m, 'tandem_media_remb_total') > 0
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

  // The call's quality, once per call leg (two legs), across calls: loss, jitter, RTT and
  // bitrate by kind and direction, video frame rate and freezes by direction; the call's
  // duration; each leg's route (both guests are on loopback: host or prflx over UDP).
  assert.equal(get(m, 'tandem_call_duration_seconds_count'), 1, 'one call duration');
  for (const kind of ['audio', 'video']) {
    for (const direction of ['in', 'out']) {
      const labels = `{direction="${direction}",kind="${kind}"}`;
      assert.equal(get(m, `tandem_call_quality_bitrate_bps_count${labels}`), 2, `bitrate ${labels}: one per leg`);
      assert.ok(get(m, `tandem_call_quality_bitrate_bps_sum${labels}`) > 2 * 1000, `bitrate ${labels}: some bits per second`);
    }
    assert.equal(get(m, `tandem_call_quality_jitter_seconds_count{direction="in",kind="${kind}"}`), 2, `jitter in ${kind}`);
  }
  for (const direction of ['in', 'out']) {
    assert.equal(get(m, `tandem_call_quality_fps_count{direction="${direction}"}`), 2, `fps ${direction}`);
    const fps = get(m, `tandem_call_quality_fps_sum{direction="${direction}"}`) / 2;
    assert.ok(fps > 1 && fps < 100, `video frames per second ${direction}: ${fps}`);
    assert.equal(get(m, `tandem_call_quality_freezes_count{direction="${direction}"}`), 2, `freezes ${direction}`);
  }
  assert.ok(
    get(m, 'tandem_call_quality_loss_ratio_count{direction="out",kind="video"}') + get(m, 'tandem_call_quality_rtt_seconds_count{direction="out",kind="video"}') >= 1,
    'receiver reports of the guests gave loss or RTT for the video sent to them',
  );
  const routes = [...m].filter(([k]) => k.startsWith('tandem_media_connections_total{'));
  assert.ok(routes.reduce((n, [, v]) => n + v, 0) >= 2, `each leg's route counted: ${JSON.stringify(routes)}`);
  assert.equal(
    routes.filter(([k, v]) => v > 0 && !/candidate="(host|prflx)",transport="udp"/.test(k)).length, 0,
    `loopback peers connect host or prflx over UDP: ${JSON.stringify(routes)}`,
  );
  // One log line per call with its figures.
  const line = server.output().replace(/\x1b\[[0-9;]*m/g, '').split('\n').find((l) => l.includes('call quality'));
  assert.ok(line, `no "call quality" log line:\n${server.output().slice(-2000)}`);
  for (const field of ['room=', 'duration_s=', 'setup_ms=', 'caller_route=', 'callee_route=', 'video_in', 'audio_out', 'bitrate', 'fps', 'freezes']) {
    assert.ok(line.includes(field), `the call quality line has ${field}: ${line}`);
  }
  // Time to match: both guests of the pair.
  assert.equal(get(m, 'tandem_match_wait_seconds_count'), 2, 'both guests\' time to match');
});

test('the process exports its build, CPU, memory, descriptors and the budgets set', async (t) => {
  const server = await serverFor(t, ['--memory-budget-mb', '300']);
  const m = await scrape(server.url);
  const info = [...m].find(([k]) => k.startsWith('tandem_build_info{'));
  assert.ok(info, 'tandem_build_info');
  assert.match(info[0], /commit="([0-9a-f]{7,}|unknown)"/);
  assert.match(info[0], /version="\d+\.\d+\.\d+"/);
  assert.equal(info[1], 1);
  assert.ok(m.has('process_cpu_seconds_total'), 'process_cpu_seconds_total');
  for (const name of ['process_resident_memory_bytes', 'process_open_fds', 'process_max_fds', 'process_start_time_seconds']) {
    assert.ok(get(m, name) > 0, `${name}: ${get(m, name)}`);
  }
  assert.equal(get(m, 'tandem_memory_budget_bytes'), 300 * 1024 * 1024);
  assert.ok(get(m, 'tandem_file_storage_budget_bytes') > 0);
});
