// The shipped Grafana dashboard (deploy/grafana/tandem.json) and alert rules
// (deploy/prometheus/tandem.rules.yml) against a real Prometheus (Debian's `prometheus`,
// `/usr/bin/prometheus`) scraping tandem every second in the suite's network namespace.
//
// Two tandem nodes are scraped: "main" (media and TURN on) carries a short scripted load —
// guests, a chat with receipts, refusals and rate limits, a file upload and download, a call
// between two @roamhq/wrtc peers (libwebrtc) with media both ways and another between two
// webrtc-rs peers (the `webrtc` crate, through tandem-media-load), a TURN allocation relaying through
// coturn's turnutils_uclient, bad TURN credentials, unauthenticated STUN; "busy" runs on a
// redis-server (`--redis-url`) with a 1 MiB memory budget, so it refuses with server_busy, and
// tight limits (guest creations, TURN streams per address). Once Prometheus has scraped after the
// load, EVERY panel target of the dashboard (variables substituted) and every alert expression
// Prometheus loaded go through /api/v1/query: each must parse, and each panel target must return
// at least one series, except the few listed below with the reason. The rules themselves are
// checked with `promtool check rules` and unit-tested with `promtool test rules`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import dgram from 'node:dgram';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  runProgram,
  serverFor, redisFor, freePort, freeUdpPort, pair, emitAck, assertOk, assertRefused, waitFor, api,
  connect, rawConn, sendText, sleep, hex,
} from './harness.mjs';
import { until } from './media.mjs';
import { request, accept, offeringPeers, dump, mediaFlowing } from './call-helpers.mjs';
import { png } from './fixtures.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const DASHBOARD = join(ROOT, 'deploy/grafana/tandem.json');
const RULES = join(ROOT, 'deploy/prometheus/tandem.rules.yml');
const RULES_TEST = join(ROOT, 'deploy/prometheus/tandem.rules.test.yml');
const PROMETHEUS = '/usr/bin/prometheus';
const PROMTOOL = '/usr/bin/promtool';
const UCLIENT = '/usr/bin/turnutils_uclient';
const PEER = '/usr/bin/turnutils_peer';
const TURN_SECRET = 'prometheus-e2e-turn-secret-0123456789';

// Metrics whose panels may be empty for now (none: every metric the dashboard reads is exported).
const PENDING_NEW_METRICS = [];

// Panel targets ("<panel title> [<refId>]") that cannot have data from this load, and why.
// (None: every series the dashboard reads is created at start, at zero.)
const NO_DATA_EXPECTED = {};

// Grafana's variables as the test substitutes them: a 1 minute rate window (1 s scrapes), a
// 5 minute range, every node (the "All" value of `node`); `instance`, every instance as Grafana
// expands "All", is set once the servers run (see grafanaRegex).
const VARIABLES = {
  instance: null,
  node: '.*',
  __rate_interval: '1m',
  __interval: '15s',
  __range: '5m',
  datasource: 'prometheus',
};

/**
 * What Grafana puts in a regex matcher for a multi-value variable with "All" selected and no
 * custom all value: every value, regex-escaped (backslashes doubled for the PromQL string),
 * as `(a|b)`.
 */
function grafanaRegex(values) {
  const esc = values.map((v) => v.replace(/[$^*{}[\]'+?.()|]/g, (c) => `\\\\${c}`));
  return `(${esc.join('|')})`;
}

/** `expr` with Grafana's `$name` / `${name}` variables replaced; unknown ones fail. */
function substitute(expr) {
  return expr.replace(/\$\{(\w+)\}|\$(\w+)/g, (_, a, b) => {
    const name = a ?? b;
    assert.ok(name in VARIABLES && VARIABLES[name] !== null, `unknown dashboard variable $${name} in ${expr}`);
    return VARIABLES[name];
  });
}

/** Every panel of the dashboard (rows' nested panels included), rows left out. */
function dashboardPanels(dash) {
  const out = [];
  for (const p of dash.panels ?? []) {
    if (p.type === 'row') out.push(...(p.panels ?? []));
    else out.push(p);
  }
  return out;
}

/** The metric names an expression reads (identifiers followed by a `{` selector). */
function metricsOf(expr) {
  return [...expr.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\{/g)].map((m) => m[1]);
}

function pendingMetric(expr) {
  return PENDING_NEW_METRICS.find((name) => new RegExp(`\\b${name}(_bucket|_count|_sum)?\\b`).test(expr));
}

/** Runs a program to completion: see the harness's `runProgram`. */
const run = runProgram;

// ---------------------------------------------------------------------------------------------
// Prometheus

/**
 * Starts Prometheus on a free port scraping `targets` (host:port) every second as job `tandem`,
 * evaluating the shipped rules every second, with its TSDB in a temporary directory. Stopped
 * (by PID) and its directory removed when `t` ends.
 */
async function prometheusFor(t, targets) {
  assert.ok(existsSync(PROMETHEUS), 'Prometheus is missing: apt-get install prometheus (./scripts/test.sh does so as root)');
  const dir = mkdtempSync(join(tmpdir(), 'tandem-e2e-prometheus-'));
  const port = await freePort();
  const config = join(dir, 'prometheus.yml');
  writeFileSync(config, [
    'global:',
    '  scrape_interval: 1s',
    '  scrape_timeout: 1s',
    '  evaluation_interval: 1s',
    'rule_files:',
    `  - ${JSON.stringify(RULES)}`,
    'scrape_configs:',
    '  - job_name: tandem',
    '    static_configs:',
    `      - targets: ${JSON.stringify(targets)}`,
    '',
  ].join('\n'));
  const proc = spawn(PROMETHEUS, [
    `--config.file=${config}`,
    `--storage.tsdb.path=${join(dir, 'data')}`,
    `--web.listen-address=127.0.0.1:${port}`,
    '--log.level=warn',
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const keep = (c) => {
    log += c;
    if (log.length > 32_000) log = log.slice(-16_000);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  let exited = null;
  const exit = new Promise((res) => proc.once('exit', (code, signal) => { exited = { code, signal }; res(); }));
  t.after(async () => {
    if (exited === null) {
      process.kill(proc.pid, 'SIGTERM');
      const killer = setTimeout(() => { if (exited === null) process.kill(proc.pid, 'SIGKILL'); }, 5000);
      await exit;
      clearTimeout(killer);
    }
    rmSync(dir, { recursive: true, force: true });
  });
  const url = `http://127.0.0.1:${port}`;
  await until(async () => {
    assert.equal(exited, null, `prometheus exited: ${JSON.stringify(exited)}\n${log}`);
    try {
      return (await fetch(`${url}/-/ready`, { signal: AbortSignal.timeout(1000) })).status === 200;
    } catch {
      return false;
    }
  }, 20_000, () => `prometheus not ready:\n${log}`, 100);
  return { url, port, log: () => log };
}

/** GET a Prometheus API path; resolves with the parsed body (status and all). */
async function promApi(prom, path, params = {}) {
  const qs = new URLSearchParams(params).toString();
  const res = await fetch(`${prom.url}${path}${qs ? `?${qs}` : ''}`, { signal: AbortSignal.timeout(10_000) });
  const body = await res.json();
  return { httpStatus: res.status, ...body };
}

/** An instant query: `{ status, error, result }` (result: the vector's series). */
async function query(prom, expr) {
  const res = await fetch(`${prom.url}/api/v1/query`, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams({ query: expr }).toString(),
    signal: AbortSignal.timeout(10_000),
  });
  const body = await res.json();
  return { status: body.status, error: body.error, resultType: body.data?.resultType, result: body.data?.result ?? [] };
}

// ---------------------------------------------------------------------------------------------

test('promtool: the rules check and their unit tests pass', async () => {
  assert.ok(existsSync(PROMTOOL), 'promtool is missing: apt-get install prometheus (./scripts/test.sh does so as root)');
  const check = await run(PROMTOOL, ['check', 'rules', RULES]);
  assert.equal(check.code, 0, `promtool check rules:\n${check.out}`);
  assert.match(check.out, /SUCCESS: \d+ rules found/);
  const unit = await run(PROMTOOL, ['test', 'rules', RULES_TEST]);
  assert.equal(unit.code, 0, `promtool test rules:\n${unit.out}`);
  assert.match(unit.out, /SUCCESS/);
});

test('the dashboard is a Grafana 10 dashboard whose every query filters by $instance on ${datasource}', () => {
  const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8'));
  assert.ok(dash.schemaVersion >= 38, `schemaVersion ${dash.schemaVersion}`);
  const vars = Object.fromEntries(dash.templating.list.map((v) => [v.name, v]));
  assert.equal(vars.datasource?.type, 'datasource');
  assert.equal(vars.datasource.query, 'prometheus');
  for (const [name, source] of [['instance', 'label_values(tandem_guests, instance)'], ['node', 'label_values(tandem_cluster_node_info, node)']]) {
    const v = vars[name];
    assert.ok(v, `variable ${name}`);
    assert.equal(v.type, 'query');
    assert.equal(v.definition, source);
    assert.equal(v.query.query ?? v.query, source);
    assert.equal(v.multi, true, `${name}: multi`);
    assert.equal(v.includeAll, true, `${name}: include all`);
    assert.equal(v.datasource.uid, '${datasource}');
  }
  // "All" instances must expand to tandem's instances, not `.*`: `up` and `process_*` come from
  // every scrape job. A single node has no node names: there "All" is `.*`.
  assert.ok(!vars.instance.allValue, 'instance: no custom all value');
  assert.equal(vars.node.allValue, '.*', 'node: "All" matches also when there is no node name');
  const ids = new Set();
  const rowTitles = dash.panels.filter((p) => p.type === 'row').map((p) => p.title);
  assert.deepEqual(rowTitles.map((r) => r.split(' ')[0]), ['Overview', 'Chat', 'Calls', 'Media', 'TURN', 'Files', 'Limits', 'Process', 'Redis']);
  for (const p of dash.panels.flatMap((x) => [x, ...(x.type === 'row' ? x.panels ?? [] : [])])) {
    assert.ok(Number.isInteger(p.id) && !ids.has(p.id), `${p.title}: missing or duplicate panel id ${p.id}`);
    ids.add(p.id);
    assert.ok(p.gridPos && p.gridPos.w > 0 && p.gridPos.h > 0 && p.gridPos.x + p.gridPos.w <= 24, `${p.title}: gridPos`);
  }
  for (const p of dashboardPanels(dash)) {
    assert.equal(p.datasource?.uid, '${datasource}', `${p.title}: datasource`);
    assert.ok(p.targets?.length > 0, `${p.title}: no targets`);
    assert.ok(p.description, `${p.title}: no description`);
    for (const tg of p.targets) {
      assert.equal(tg.datasource?.uid, '${datasource}', `${p.title} [${tg.refId}]: datasource`);
      const names = metricsOf(tg.expr);
      assert.ok(names.length > 0, `${p.title} [${tg.refId}]: no metric selector in ${tg.expr}`);
      // Every selector filters by instance, and no metric is read without a selector.
      for (const m of tg.expr.matchAll(/([a-zA-Z_:][a-zA-Z0-9_:]*)\{([^}]*)\}/g)) {
        assert.match(m[2], /instance=~"\$instance"/, `${p.title} [${tg.refId}]: ${m[1]} not filtered by $instance`);
      }
      for (const m of tg.expr.matchAll(/\b(tandem_\w+|process_\w+|up)\b(.)?/g)) {
        assert.equal(m[2], '{', `${p.title} [${tg.refId}]: ${m[1]} without a selector in ${tg.expr}`);
      }
    }
  }
});

test('every dashboard panel and alert expression evaluates in a real Prometheus scraping tandem under load', async (t) => {
  for (const tool of [PROMETHEUS, UCLIENT, PEER]) {
    assert.ok(existsSync(tool), `${tool} is missing (./scripts/test.sh installs prometheus and coturn as root)`);
  }
  const started = Date.now();
  // The main node: media, TURN with a known secret relaying to loopback peers, tight typing and
  // upload limits so that the load trips them.
  const turnPort = await freePort();
  const main = await serverFor(t, [
    '--turn-port', String(turnPort), '--turn-secret', TURN_SECRET, '--turn-allow-loopback-peers',
    '--typing-per-sec', '2', '--file-uploads-per-min', '1', '--node-name', 'main',
  ], { media: true });
  // The busy node: on Redis, over its memory budget from the start, one guest creation a minute,
  // two TURN streams per address.
  const redis = await redisFor(t);
  const busyTurnPort = await freePort();
  const busy = await serverFor(t, [
    '--redis-url', redis.url, '--turn-secret', TURN_SECRET, '--node-name', 'busy',
    '--memory-budget-mb', '1', '--guest-creations-per-min', '1', '--turn-port', String(busyTurnPort),
    '--max-stream-connections-per-ip', '2',
  ]);
  redis.nodes.push(busy); // stopped before Redis
  const mainInstance = `127.0.0.1:${main.port}`;
  const busyInstance = `127.0.0.1:${busy.port}`;
  VARIABLES.instance = grafanaRegex([mainInstance, busyInstance]);
  const prom = await prometheusFor(t, [mainInstance, busyInstance]);
  // Let Prometheus see every counter at its starting value first (rate() needs the increase).
  await until(async () => (await query(prom, 'count(up{job="tandem"} == 1)')).result[0]?.value[1] === '2', 15_000, 'both targets scraped', 200);
  await sleep(1500);

  // ---- chat: guests, messages with delivered and read receipts ----
  const { a, b, ga, gb, roomId } = await pair(main.url);
  t.after(() => { a.close(); b.close(); });
  const sent = [];
  for (let i = 0; i < 5; i++) sent.push(await sendText(a, `hello ${i}`));
  for (const s of sent) await waitFor(b, 'chat:message', 5000, (m) => m.id === s.id);
  for (const s of sent) await waitFor(a, 'chat:message:delivered', 5000, (m) => m.id === s.id);
  assertOk(await emitAck(b, 'chat:message:read', { id: sent.at(-1).id }), 'chat:message:read');
  await waitFor(a, 'chat:message:read');

  // ---- a file: uploaded, downloaded by the partner; the next upload is over the limit ----
  const uploadPng = async () => {
    const form = new FormData();
    form.append('file', new Blob([png(16, 16)], { type: 'image/png' }), 'dash.png');
    const res = await fetch(`${main.url}/api/files`, {
      method: 'POST', body: form, headers: { authorization: `Bearer ${ga.token}` }, signal: AbortSignal.timeout(15_000),
    });
    return { status: res.status, body: await res.json().catch(() => undefined) };
  };
  const up = await uploadPng();
  assert.equal(up.status, 201, JSON.stringify(up.body));
  const down = await fetch(`${main.url}${up.body.url}`, { headers: { authorization: `Bearer ${gb.token}` } });
  assert.equal(down.status, 200);
  await down.arrayBuffer();
  assert.equal((await uploadPng()).status, 429, 'the second upload within a minute is rate limited');

  // ---- TURN: a relayed allocation (REST credentials, echo peer), bad credentials, a STUN spray ----
  const peerPort = await freeUdpPort();
  const peer = spawn(PEER, ['-L', '127.0.0.1', '-p', String(peerPort)], { stdio: 'ignore' });
  t.after(() => { if (peer.exitCode === null) process.kill(peer.pid, 'SIGKILL'); });
  await sleep(200);
  const relayed = await run(UCLIENT, [
    '-c', '-W', TURN_SECRET, '-u', `dash${hex(4)}`, '-e', '127.0.0.1', '-r', String(peerPort),
    '-n', '100', '-m', '1', '-l', '172', '-p', String(turnPort), '127.0.0.1',
  ]);
  assert.match(relayed.out, /tot_recv_msgs=[1-9]/, `nothing relayed:\n${relayed.out.slice(-2000)}`);
  await run(UCLIENT, [
    '-c', '-W', 'not-the-secret-at-all-000', '-u', 'mallory', '-e', '127.0.0.1', '-r', String(peerPort),
    '-n', '2', '-m', '1', '-p', String(turnPort), '127.0.0.1',
  ], 20_000);
  const stun = dgram.createSocket('udp4');
  await new Promise((res) => stun.bind(0, '127.0.0.1', res));
  for (let i = 0; i < 200; i++) {
    const req = Buffer.alloc(20);
    req.writeUInt16BE(0x0001, 0);
    req.writeUInt32BE(0x2112a442, 4);
    randomBytes(12).copy(req, 8);
    stun.send(req, turnPort, '127.0.0.1');
  }
  await sleep(200);
  stun.close();

  // ---- a call with media both ways, then hung up ----
  await request(a, b, roomId, true);
  await accept(a, b, roomId);
  const [pa, pb] = await offeringPeers(t, a, b);
  await until(() => mediaFlowing(pa, pb), 20_000, () => `media did not flow:\n${dump(main, [pa, pb], { a, b })}`);
  // RTCP reports (RTT, jitter, bandwidth estimate) come every ~1–5 s.
  let scraped = '';
  await until(async () => {
    scraped = (await api(main.url, '/metrics')).text;
    return /^tandem_media_rtt_seconds_count\{kind="(audio|video)"\} [1-9]/m.test(scraped) && /^tandem_media_bandwidth_estimate_bps_count [1-9]/m.test(scraped);
  }, 15_000, () => `no RTCP in /metrics:\n${scraped.split('\n').filter((l) => l.startsWith('tandem_media')).join('\n')}`, 250);
  assertOk(await emitAck(a, 'call:end'), 'call:end');
  await waitFor(b, 'call:ended');
  pa.close();
  pb.close();
  // ---- a call between two webrtc-rs peers (the `webrtc` crate): tandem-media-load pairs two
  // guests of its own, calls, sends audio and video both ways for a few seconds and hangs up;
  // it fails unless media flowed through tandem both ways ----
  const mediaLoad = join(dirname(process.env.TANDEM_BIN), 'tandem-media-load');
  assert.ok(existsSync(mediaLoad), `${mediaLoad} is missing: cargo build --workspace --all-targets builds it`);
  const rs = await run(mediaLoad, [
    '--url', main.url, '--pairs', '1', '--warmup', '1s', '--duration', '3s', '--video-kbps', '300', '--fps', '15',
  ], 60_000);
  assert.equal(rs.code, 0, `a call between webrtc-rs peers through tandem:\n${rs.out.slice(-3000)}`);
  t.diagnostic(`webrtc-rs call: ${rs.out.split('\n').filter((l) => /pkt|loss|setup/i.test(l)).slice(0, 4).join(' | ')}`);
  // Refusals and a rate limit (late in the load: "Refusals by code" shows the codes refused
  // within the rate window).
  assertRefused(await emitAck(b, 'chat:message:read', { id: 'deadbeefdeadbeef' }), 'unknown_message');
  assertRefused(await emitAck(a, 'match:start', {}), 'already_in_chat');
  const typing = await Promise.all(Array.from({ length: 8 }, () => emitAck(a, 'typing:start')));
  assert.ok(typing.some((x) => x.ok === false && x.error?.code === 'rate_limited'), `no typing:start rate limited: ${JSON.stringify(typing)}`);
  // The chat ends too (its file with it).
  assertOk(await emitAck(a, 'chat:leave'), 'chat:leave');

  // ---- the busy node: server_busy for connects and guests, a guest-creation limit, TURN streams ----
  let refusal = '';
  await until(async () => {
    try {
      const s = await connect(busy.url, undefined);
      s.close();
    } catch (err) {
      refusal = err.message;
    }
    return refusal === 'server_busy';
  }, 10_000, () => `the busy node never refused with server_busy (last: ${refusal})`, 200);
  const busyGuest = await api(busy.url, '/api/guest', { method: 'POST', body: {} });
  assert.equal(busyGuest.status, 503, busyGuest.text);
  assert.equal(busyGuest.body?.error?.code, 'server_busy');
  assert.equal((await api(busy.url, '/api/guest', { method: 'POST', body: {} })).status, 429, 'guest creations limited');
  const streams = await Promise.all(Array.from({ length: 4 }, () => rawConn(busyTurnPort)));
  await until(() => streams.filter((s) => s.isClosed()).length >= 2, 5000, 'TURN streams over the per-address cap closed', 50);
  for (const s of streams) s.sock.destroy();

  // ---- wait until Prometheus has scraped both nodes a few times after the load ----
  const loadEnd = Date.now() / 1000;
  const loadSecs = ((Date.now() - started) / 1000).toFixed(1);
  await until(async () => {
    const r = await query(prom, 'min(timestamp(up{job="tandem"}))');
    return r.result.length === 1 && Number(r.result[0].value[1]) > loadEnd + 3;
  }, 20_000, 'scrapes after the load', 250);
  await until(async () => {
    const r = await promApi(prom, '/api/v1/rules');
    return r.data.groups.length > 0 && r.data.groups.every((g) => Date.parse(g.lastEvaluation) / 1000 > loadEnd + 1);
  }, 10_000, 'rules evaluated after the load', 250);

  // ---- the dashboard's variables ----
  const instances = await promApi(prom, '/api/v1/label/instance/values', { 'match[]': 'tandem_guests' });
  assert.deepEqual(instances.data.sort(), [mainInstance, busyInstance].sort(), 'label_values(tandem_guests, instance)');
  const nodes = await promApi(prom, '/api/v1/label/node/values', { 'match[]': 'tandem_cluster_node_info' });
  assert.deepEqual(nodes.data, ['busy'], 'label_values(tandem_cluster_node_info, node): the Redis node');

  // ---- every panel target ----
  const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8'));
  const lines = [];
  const failures = [];
  const pendingEmpty = [];
  const pendingNowData = [];
  let targets = 0;
  for (const p of dashboardPanels(dash)) {
    const counts = [];
    for (const tg of p.targets) {
      targets++;
      const key = `${p.title} [${tg.refId}]`;
      const expr = substitute(tg.expr);
      const r = await query(prom, expr);
      if (r.status !== 'success') {
        failures.push(`${key}: does not evaluate (${r.error}): ${expr}`);
        counts.push(`${tg.refId}=error`);
        continue;
      }
      const n = r.result.length;
      const nan = r.result.filter((x) => !Number.isFinite(Number(x.value?.[1]))).length;
      counts.push(`${tg.refId}=${n}${nan ? ` (${nan} NaN)` : ''}`);
      const pending = pendingMetric(tg.expr);
      if (n === 0) {
        if (pending) pendingEmpty.push(`${key} (${pending})`);
        else if (!(key in NO_DATA_EXPECTED)) failures.push(`${key}: no series: ${expr}`);
      } else {
        if (pending) pendingNowData.push(`${key} (${pending})`);
        if (key in NO_DATA_EXPECTED) t.diagnostic(`${key} has data now: drop it from NO_DATA_EXPECTED`);
      }
    }
    lines.push(`${p.title}: ${counts.join(' ')}`);
  }
  // Annotations: they must at least evaluate.
  for (const an of dash.annotations?.list ?? []) {
    if (!an.expr) continue;
    const r = await query(prom, substitute(an.expr));
    if (r.status !== 'success') failures.push(`annotation ${an.name}: does not evaluate (${r.error})`);
  }

  // ---- every rule Prometheus loaded: healthy, and its expression evaluates ----
  const rules = await promApi(prom, '/api/v1/rules');
  assert.equal(rules.status, 'success');
  const groups = rules.data.groups;
  const loaded = groups.flatMap((g) => g.rules.map((r) => ({ group: g.name, ...r })));
  const check = await run(PROMTOOL, ['check', 'rules', RULES]);
  const inFile = Number(/SUCCESS: (\d+) rules found/.exec(check.out)?.[1]);
  assert.equal(loaded.length, inFile, `Prometheus loaded ${loaded.length} rules, the file has ${inFile}`);
  const fileGroups = [...readFileSync(RULES, 'utf8').matchAll(/^\s*- name:\s*(\S+)/gm)].map((m) => m[1]);
  assert.deepEqual(groups.map((g) => g.name).sort(), fileGroups.sort(), 'every rule group is loaded');
  for (const rule of loaded) {
    if (rule.health !== 'ok') failures.push(`rule ${rule.name}: health ${rule.health} ${rule.lastError ?? ''}`);
    const r = await query(prom, rule.query);
    if (r.status !== 'success') failures.push(`rule ${rule.name}: does not evaluate (${r.error})`);
    lines.push(`alert ${rule.name}: ${rule.state}, ${r.result.length} series now`);
  }
  // The busy node is over 80 % of its 1 MiB budget: TandemMemoryHigh is pending for it (and for
  // nothing else), which proves the rule joins RSS and budget of one instance.
  const memoryRule = loaded.find((r) => r.name === 'TandemMemoryHigh');
  assert.ok(memoryRule, 'TandemMemoryHigh loaded');
  if (!pendingMetric(memoryRule.query)) {
    assert.deepEqual(memoryRule.alerts.map((al) => [al.labels.instance, al.state]), [[busyInstance, 'pending']], 'TandemMemoryHigh');
  }

  t.diagnostic(`load took ${loadSecs} s; ${targets} panel targets in ${dashboardPanels(dash).length} panels, ${loaded.length} rules`);
  for (const l of lines) t.diagnostic(l);
  if (pendingEmpty.length) t.diagnostic(`PENDING_NEW_METRICS, still empty: ${pendingEmpty.join('; ')}`);
  if (pendingNowData.length) t.diagnostic(`PENDING_NEW_METRICS, with data now: ${pendingNowData.join('; ')}`);
  assert.deepEqual(failures, [], `panels or rules that failed:\n${failures.join('\n')}\nPrometheus log:\n${prom.log().slice(-3000)}`);
});
