// Shared helpers for the tandem end-to-end tests.
//
// Every test file starts its own tandem process(es) on a free loopback port, talks to it over
// HTTP (global fetch) and Socket.IO (the official socket.io-client), and stops it afterwards.
// The binary comes from $TANDEM_BIN (cargo sets it in tests/e2e.rs).

import { spawn } from 'node:child_process';
import { createHmac, randomBytes } from 'node:crypto';
import { createServer, connect as netConnect } from 'node:net';
import { createSocket } from 'node:dgram';
import { mkdtempSync, readFileSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import assert from 'node:assert/strict';
import { io } from 'socket.io-client';

export { sleep };

// Limits generous enough that ordinary tests never trip them; tests that exercise a limit pass
// their own value, which replaces the default (clap refuses a repeated single-value flag).
const DEFAULT_FLAGS = {
  '--log-level': process.env.TANDEM_E2E_LOG_LEVEL || 'warn',
  '--guest-creations-per-min': '10000',
  '--http-requests-per-min': '100000',
  '--max-connections-per-ip': '1000',
  '--max-http-connections-per-ip': '100000',
  '--max-sessions-per-ip': '100000',
  '--socket-handshakes-per-min': '100000',
  '--match-per-sec': '100',
  '--match-burst': '100',
  '--events-per-sec': '1000',
  '--chat-messages-per-sec': '1000',
  '--typing-per-sec': '1000',
  // Media: loopback candidates, a free UDP port per server, no ICE-TCP listener.
  '--node-ip': '127.0.0.1',
  '--rtc-udp-port': '0',
  '--rtc-tcp-port': '0',
  '--rtc-udp-workers': process.env.TANDEM_E2E_RTC_WORKERS || '1',
  // TURN: a free port per server, no TLS listener, one thread (turn.test.mjs sets its own).
  '--turn-port': '0',
  '--turn-tls-port': '0',
  '--turn-udp-workers': '1',
};

// Flags that may be given several times; their values are appended, never replaced.
const REPEATABLE = new Set(['--allowed-origin', '--turn-relay-ip', '--turn-allow-peer', '--turn-deny-peer', '--redis-url']);

const STARTUP_TIMEOUT_MS = 15_000;

/** Finds a free TCP port on 127.0.0.1 (listen on port 0, read it, close). */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

/** Finds a free UDP port on 127.0.0.1 (bind a datagram socket to port 0, read it, close). */
export function freeUdpPort() {
  return new Promise((resolve, reject) => {
    const sock = createSocket('udp4');
    sock.unref();
    sock.once('error', reject);
    sock.bind(0, '127.0.0.1', () => {
      const { port } = sock.address();
      sock.close(() => resolve(port));
    });
  });
}

// Media flags of a server started with `{ media: true }`: ICE candidates on loopback, its own UDP
// port for all media, no ICE-TCP, one media thread, and (like DEFAULT_FLAGS) a candidate limit
// that calls in quick succession never trip. Kept out of the other tests' servers.
async function mediaFlags() {
  return {
    '--node-ip': '127.0.0.1',
    '--rtc-udp-port': String(await freeUdpPort()),
    '--rtc-tcp-port': '0',
    '--rtc-udp-workers': process.env.TANDEM_E2E_RTC_WORKERS || '1',
    '--ice-candidates-per-sec': '1000',
  };
}

/** Random lowercase hex of `n` characters. */
export function hex(n) {
  return randomBytes(Math.ceil(n / 2)).toString('hex').slice(0, n);
}

/** A valid, probably unique username (letters, digits, '-'; at most 24 characters). */
export function uname(prefix = 'u') {
  return `${prefix}-${hex(6)}`;
}

// Turns ['--a', '1', '--flag', '--b', '2'] into an ordered list of [flag, value|null] entries.
function parseArgs(list) {
  const out = [];
  for (let i = 0; i < list.length; i++) {
    const flag = String(list[i]);
    if (!flag.startsWith('--')) throw new Error(`startServer: expected a flag, got ${flag}`);
    const next = list[i + 1];
    if (next !== undefined && !String(next).startsWith('--')) {
      out.push([flag, String(next)]);
      i++;
    } else {
      out.push([flag, null]);
    }
  }
  return out;
}

const liveServers = new Set();

/**
 * Starts tandem on a free port with test-friendly limits, then `extraArgs` (which replace
 * defaults of the same flag). Resolves once GET /healthz answers 200.
 * opts.ulimitNofile: start it under `ulimit -n` with that many descriptors.
 * opts.media (default false): also pass the media flags (`--node-ip 127.0.0.1 --rtc-udp-port
 * <free UDP port> --rtc-tcp-port 0 --rtc-udp-workers 1 --ice-candidates-per-sec 1000`) for the
 * call tests; `server.rtcUdpPort` is that port. `server.pid` is the process id (for /proc, see processStats).
 * opts.env: variables added to its environment (not TANDEM_* ones: settings are flags here).
 * @returns {Promise<{url: string, port: number, pid: number, rtcUdpPort: number|null, secret: string, proc: import('node:child_process').ChildProcess, args: string[], output: () => string, stop: () => Promise<void>}>}
 */
export async function startServer(extraArgs = [], opts = {}) {
  // freePort() closes the port it found before tandem binds it: another process (a client's
  // ephemeral port, in a suite that opens thousands) may take it in between. Try a new one.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startServerOnce(extraArgs, opts);
    } catch (err) {
      if (attempt >= 4 || !/Address already in use/.test(String(err && err.message))) throw err;
    }
  }
}

async function startServerOnce(extraArgs = [], opts = {}) {
  const { media = false } = opts;
  const bin = process.env.TANDEM_BIN;
  if (!bin) throw new Error('TANDEM_BIN is not set: point it at the tandem binary (cargo build --bin tandem)');
  const port = await freePort();
  const secret = `e2e-${hex(36)}`; // 40 characters
  const flags = new Map();
  // opts.bindHost: listen on another address than loopback (e.g. 0.0.0.0, for browsers in
  // network namespaces of their own); `url` stays on loopback.
  flags.set('--bind', [`${opts.bindHost ?? '127.0.0.1'}:${port}`]);
  flags.set('--jwt-secret', [secret]);
  for (const [k, v] of Object.entries(DEFAULT_FLAGS)) flags.set(k, [v]);
  if (media) for (const [k, v] of Object.entries(await mediaFlags())) flags.set(k, [v]);
  const overridden = new Set();
  for (const [flag, value] of parseArgs(extraArgs)) {
    if (REPEATABLE.has(flag) && flags.has(flag) && overridden.has(flag)) {
      flags.get(flag).push(value);
    } else {
      flags.set(flag, [value]);
    }
    overridden.add(flag);
  }
  const args = [];
  for (const [flag, values] of flags) {
    for (const v of values) {
      args.push(flag);
      if (v !== null) args.push(v);
    }
  }

  const verbose = !!process.env.TANDEM_E2E_LOG;
  // tandem reads TANDEM_* variables as settings and refuses unknown ones (TANDEM_BIN is ours):
  // the server is configured by flags only.
  const env = {
    ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TANDEM_'))),
    ...(opts.env ?? {}),
  };
  // opts.ulimitNofile: run under `ulimit -n N` (the shell execs tandem, so the PID is tandem's).
  const proc = opts.ulimitNofile
    ? spawn('sh', ['-c', `ulimit -n ${Number(opts.ulimitNofile)} && exec "$0" "$@"`, bin, ...args], {
      stdio: ['ignore', 'pipe', 'pipe'], env,
    })
    : spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let log = '';
  const keep = (chunk) => {
    if (verbose) process.stderr.write(chunk);
    log += chunk.toString();
    if (log.length > 64_000) log = log.slice(-32_000);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    proc.once('exit', (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
    proc.once('error', (err) => {
      exited = { code: null, signal: null, error: err };
      resolve(exited);
    });
  });

  const url = `http://127.0.0.1:${port}`;
  // The token key in force (a test may pass its own, e.g. the one a cluster shares).
  const jwtSecret = flags.get('--jwt-secret')?.[0] ?? secret;
  const sockets = new Set();
  let stopped = false;
  const rtcUdpPort = flags.has('--rtc-udp-port') ? Number(flags.get('--rtc-udp-port')[0]) : null;
  const server = {
    url,
    port,
    pid: proc.pid,
    rtcUdpPort,
    secret: jwtSecret,
    proc,
    args,
    sockets,
    output: () => log,
    exited: () => exited,
    async stop() {
      if (stopped) return exitPromise;
      stopped = true;
      liveServers.delete(server);
      for (const s of sockets) s.close();
      sockets.clear();
      if (exited === null) {
        proc.kill('SIGTERM');
        const killer = setTimeout(() => {
          if (exited === null) proc.kill('SIGKILL');
        }, 3000);
        await exitPromise;
        clearTimeout(killer);
      }
      return exitPromise;
    },
  };
  socketRegistry.set(url, sockets);
  liveServers.add(server);

  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  for (;;) {
    if (exited !== null) {
      await server.stop();
      throw new Error(
        `tandem exited during startup (${JSON.stringify(exited)}); args: ${args.join(' ')}\n${log}`,
      );
    }
    try {
      const res = await fetch(`${url}/healthz`, { signal: AbortSignal.timeout(1000) });
      await res.arrayBuffer();
      if (res.status === 200) break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await server.stop();
      throw new Error(`tandem did not answer GET /healthz 200 within ${STARTUP_TIMEOUT_MS} ms; args: ${args.join(' ')}\n${log}`);
    }
    await sleep(50);
  }
  return server;
}

/** Starts a server and stops it when the test `t` (or the suite, for a `before` hook) ends. */
export async function serverFor(t, extraArgs = [], opts = {}) {
  const server = await startServer(extraArgs, opts);
  t.after(() => server.stop());
  return server;
}

/**
 * Runs tandem with exactly `args` (nothing added) until it exits by itself, for tests of start
 * refusals (`extraEnv` added to its environment). Resolves with `{ code, signal, output }`; a
 * process still running after `timeoutMs` is killed (by its PID) and the promise rejects.
 */
export function runToExit(args, timeoutMs = 15_000, extraEnv = {}) {
  const bin = process.env.TANDEM_BIN;
  if (!bin) throw new Error('TANDEM_BIN is not set: point it at the tandem binary (cargo build --bin tandem)');
  const env = {
    ...Object.fromEntries(Object.entries(process.env).filter(([k]) => !k.startsWith('TANDEM_'))),
    ...extraEnv,
  };
  const proc = spawn(bin, args, { stdio: ['ignore', 'pipe', 'pipe'], env });
  let output = '';
  const keep = (chunk) => {
    output += chunk.toString();
    if (output.length > 64_000) output = output.slice(-32_000);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      proc.kill('SIGKILL');
      reject(new Error(`tandem still running after ${timeoutMs} ms; args: ${args.join(' ')}\n${output}`));
    }, timeoutMs);
    proc.once('error', (err) => {
      clearTimeout(timer);
      reject(err);
    });
    proc.once('close', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal, output });
    });
  });
}

// ---------------------------------------------------------------------------------------------
// Redis (the cluster tests): Debian's redis-server, one per test, on a free loopback port

const REDIS_SERVER = process.env.TANDEM_E2E_REDIS_SERVER || 'redis-server';
const liveRedis = new Set();


/**
 * Runs a program to completion with its stdout and stderr together (killed by PID after `ms`);
 * resolves with `{ code, out }`.
 */
export function runProgram(cmd, args, ms = 60_000) {
  return new Promise((resolve) => {
    const proc = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    proc.stdout.on('data', (c) => (out += c));
    proc.stderr.on('data', (c) => (out += c));
    const killer = setTimeout(() => process.kill(proc.pid, 'SIGKILL'), ms);
    proc.once('exit', (code) => {
      clearTimeout(killer);
      resolve({ code, out });
    });
  });
}

/**
 * Sends one command to the Redis at 127.0.0.1:`port` over a fresh connection and resolves with
 * its reply (strings, numbers, arrays, null; an error reply rejects). A tiny RESP client, so
 * that the tests can look at the registry the nodes keep.
 */
export function redisCommand(port, ...args) {
  return new Promise((resolve, reject) => {
    const sock = netConnect({ host: '127.0.0.1', port });
    let buf = Buffer.alloc(0);
    const done = (err, value) => {
      clearTimeout(timer);
      sock.destroy();
      if (err) reject(err);
      else resolve(value);
    };
    const timer = setTimeout(() => done(new Error(`redis ${args[0]}: no reply within 2000 ms`)), 2000);
    sock.on('error', (err) => done(err));
    sock.on('connect', () => {
      const parts = [`*${args.length}\r\n`];
      for (const a of args) {
        const b = Buffer.from(String(a));
        parts.push(`$${b.length}\r\n`, b, '\r\n');
      }
      sock.write(Buffer.concat(parts.map((p) => (Buffer.isBuffer(p) ? p : Buffer.from(p)))));
    });
    sock.on('data', (chunk) => {
      buf = Buffer.concat([buf, chunk]);
      let parsed;
      try {
        parsed = parseResp(buf, 0);
      } catch (err) {
        done(err);
        return;
      }
      if (parsed === null) return; // incomplete
      const [value] = parsed;
      if (value instanceof Error) done(value);
      else done(null, value);
    });
  });
}

// Parses one RESP2 value at `at`: [value, next offset], or null when more bytes are needed.
function parseResp(buf, at) {
  const eol = buf.indexOf('\r\n', at);
  if (eol < 0) return null;
  const type = String.fromCharCode(buf[at]);
  const line = buf.toString('utf8', at + 1, eol);
  const next = eol + 2;
  switch (type) {
    case '+': return [line, next];
    case '-': return [new Error(line), next];
    case ':': return [Number(line), next];
    case '$': {
      const len = Number(line);
      if (len < 0) return [null, next];
      if (buf.length < next + len + 2) return null;
      return [buf.toString('utf8', next, next + len), next + len + 2];
    }
    case '*': {
      const n = Number(line);
      if (n < 0) return [null, next];
      const out = [];
      let pos = next;
      for (let i = 0; i < n; i++) {
        const item = parseResp(buf, pos);
        if (item === null) return null;
        out.push(item[0]);
        pos = item[1];
      }
      return [out, pos];
    }
    default: throw new Error(`not a RESP reply: ${JSON.stringify(line)}`);
  }
}

/**
 * Starts `redis-server` on a free loopback port (or `opts.port`, e.g. to start it again where
 * it was), without persistence, and resolves once it answers PING. `stop()` ends it by its PID
 * (SIGTERM, then SIGKILL after 3 s); `kill()` sends SIGKILL.
 * @returns {Promise<{port: number, url: string, pid: number, command: (...args: any[]) => Promise<any>, output: () => string, stop: () => Promise<void>, kill: () => Promise<void>}>}
 */
export async function startRedis(opts = {}) {
  const port = opts.port ?? await freePort();
  // opts.tls = { cert, key } (PEM files): also TLS on a port of its own (`tlsUrl`, rediss://).
  const tlsPort = opts.tls ? await freePort() : null;
  const tlsArgs = opts.tls
    ? ['--tls-port', String(tlsPort), '--tls-cert-file', opts.tls.cert, '--tls-key-file', opts.tls.key, '--tls-auth-clients', 'no']
    : [];
  // Its own working directory (a cluster node writes its nodes.conf there), removed at the end.
  const dir = mkdtempSync(join(tmpdir(), 'tandem-e2e-redis-'));
  const proc = spawn(REDIS_SERVER, [
    '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no',
    '--dir', dir, ...tlsArgs, ...(opts.args ?? []),
  ], { stdio: ['ignore', 'pipe', 'pipe'] });
  let log = '';
  const keep = (chunk) => {
    if (process.env.TANDEM_E2E_LOG) process.stderr.write(chunk);
    log += chunk.toString();
    if (log.length > 32_000) log = log.slice(-16_000);
  };
  proc.stdout.on('data', keep);
  proc.stderr.on('data', keep);
  let exited = null;
  const exitPromise = new Promise((resolve) => {
    proc.once('exit', (code, signal) => { exited = { code, signal }; resolve(exited); });
    proc.once('error', (err) => { exited = { code: null, signal: null, error: err }; resolve(exited); });
  });
  const end = async (signal) => {
    liveRedis.delete(redis);
    if (exited === null) {
      proc.kill(signal);
      const killer = setTimeout(() => { if (exited === null) proc.kill('SIGKILL'); }, 3000);
      await exitPromise;
      clearTimeout(killer);
    }
    rmSync(dir, { recursive: true, force: true });
  };
  const redis = {
    port,
    url: `redis://127.0.0.1:${port}`,
    tlsUrl: tlsPort ? `rediss://127.0.0.1:${tlsPort}` : null,
    tlsPort,
    pid: proc.pid,
    // The tandem nodes clusterFor started on it (stopped before it by redisFor).
    nodes: [],
    proc,
    command: (...args) => redisCommand(port, ...args),
    output: () => log,
    stop: () => end('SIGTERM'),
    kill: () => end('SIGKILL'),
  };
  liveRedis.add(redis);
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  for (;;) {
    if (exited !== null) {
      liveRedis.delete(redis);
      throw new Error(`redis-server exited during startup (${JSON.stringify(exited)}); is Debian's redis-server installed?\n${log}`);
    }
    try {
      if ((await redisCommand(port, 'PING')) === 'PONG') break;
    } catch {
      // not listening yet
    }
    if (Date.now() > deadline) {
      await redis.kill();
      throw new Error(`redis-server did not answer PING within ${STARTUP_TIMEOUT_MS} ms\n${log}`);
    }
    await sleep(50);
  }
  return redis;
}

/**
 * Starts a redis-server and stops it when the test `t` ends: after the nodes `clusterFor`
 * started on it (all at once), so that they leave the registry while Redis is still there.
 */
export async function redisFor(t, opts = {}) {
  const redis = await startRedis(opts);
  t.after(async () => {
    await Promise.all(redis.nodes.map((node) => node.stop()));
    await redis.stop();
  });
  return redis;
}

/**
 * Starts `n` tandem nodes sharing `redis` (the same token key and TURN secret, each on its own
 * ports, named `<prefix>1`…), in parallel, each stopped when `t` ends (or before `redis` stops,
 * if it came from redisFor). `opts.args` are added to
 * every node's flags; `opts.media` and `opts.env` as for startServer. Resolves with
 * `{ nodes, jwtSecret, turnSecret }` (nodes in order; `node.name` is its --node-name).
 */
export async function clusterFor(t, redis, n, opts = {}) {
  const { args = [], media = false, prefix = 'node-' } = opts;
  // opts.redisArgs(i): the Redis flags of node i (default: `--redis-url <redis.url>`).
  const redisArgs = opts.redisArgs ?? (() => ['--redis-url', redis.url]);
  const jwtSecret = `cluster-${hex(40)}`;
  const turnSecret = `turn-${hex(32)}`;
  const nodes = await Promise.all(Array.from({ length: n }, async (_, i) => {
    const name = `${prefix}${i + 1}`;
    const server = await serverFor(t, [
      ...redisArgs(i), '--jwt-secret', jwtSecret, '--turn-secret', turnSecret,
      '--node-name', name, ...args,
    ], { media, env: opts.env });
    server.name = name;
    redis.nodes.push(server);
    return server;
  }));
  return { nodes, jwtSecret, turnSecret };
}

/** A free TCP port P on 127.0.0.1 in 20000-29999 whose cluster bus port P + 10000 is free too. */
async function freeClusterPort() {
  const probe = (port) => new Promise((resolve) => {
    const srv = createServer();
    srv.unref();
    srv.once('error', () => resolve(false));
    srv.listen(port, '127.0.0.1', () => srv.close(() => resolve(true)));
  });
  for (let i = 0; i < 200; i++) {
    const port = 20000 + Math.floor(Math.random() * 10000);
    if ((await probe(port)) && (await probe(port + 10000))) return port;
  }
  throw new Error('no free port pair for a Redis Cluster node');
}

/**
 * Starts a Redis Cluster of `n` masters (no replicas) on loopback, each slot range assigned with
 * CLUSTER ADDSLOTSRANGE and the nodes joined with CLUSTER MEET, and resolves once every node
 * says `cluster_state:ok`. Stopped (every server, by PID) when `t` ends, after the tandem nodes
 * listed in its `nodes`. `url` is the `redis+cluster://` form with every node as a seed.
 */
export async function redisClusterFor(t, n = 3) {
  const servers = [];
  const cluster = {
    servers,
    nodes: [],
    url: '',
    ports: [],
    // The server that owns `slot`.
    owner: (slot) => servers[Math.min(n - 1, Math.floor(slot / Math.ceil(16384 / n)))],
  };
  t.after(async () => {
    await Promise.all(cluster.nodes.map((node) => node.stop()));
    await Promise.all(servers.map((r) => r.stop()));
  });
  for (let i = 0; i < n; i++) {
    const port = await freeClusterPort();
    servers.push(await startRedis({
      port,
      args: ['--cluster-enabled', 'yes', '--cluster-config-file', 'nodes.conf', '--cluster-node-timeout', '2000'],
    }));
  }
  const per = Math.ceil(16384 / n);
  for (let i = 0; i < n; i++) {
    const from = i * per;
    const to = Math.min(16383, (i + 1) * per - 1);
    assert.equal(await servers[i].command('CLUSTER', 'ADDSLOTSRANGE', from, to), 'OK');
  }
  for (const other of servers.slice(1)) {
    assert.equal(await servers[0].command('CLUSTER', 'MEET', '127.0.0.1', other.port), 'OK');
  }
  const deadline = Date.now() + STARTUP_TIMEOUT_MS;
  for (;;) {
    const infos = await Promise.all(servers.map((r) => r.command('CLUSTER', 'INFO')));
    if (infos.every((info) => /cluster_state:ok/.test(info) && /cluster_known_nodes:(\d+)/.exec(info)?.[1] === String(n))) break;
    if (Date.now() > deadline) throw new Error(`the Redis Cluster did not form within ${STARTUP_TIMEOUT_MS} ms: ${infos.join(' | ')}`);
    await sleep(100);
  }
  cluster.ports = servers.map((r) => r.port);
  cluster.url = `redis+cluster://${cluster.ports.map((p) => `127.0.0.1:${p}`).join(',')}`;
  return cluster;
}

// Safety net for redis-servers too.
process.once('exit', () => {
  for (const r of liveRedis) {
    try {
      r.proc.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

/**
 * A process's resident memory and open descriptors, from /proc (Linux):
 * `{ rssKb, fds }` (VmRSS in KiB, entries of /proc/PID/fd).
 */
export function processStats(pid) {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const m = /^VmRSS:\s+(\d+)\s+kB/m.exec(status);
  if (!m) throw new Error(`no VmRSS in /proc/${pid}/status`);
  return { rssKb: Number(m[1]), fds: readdirSync(`/proc/${pid}/fd`).length };
}

// Safety net: never leave a server behind if a test process dies.
process.once('exit', () => {
  for (const s of liveServers) {
    try {
      s.proc.kill('SIGKILL');
    } catch {
      // already gone
    }
  }
});

// ---------------------------------------------------------------------------------------------
// HTTP

/**
 * Calls the server. `body` is JSON-encoded unless it is a string (sent as is) or undefined.
 * @returns {Promise<{status: number, headers: Headers, body: any, text: string}>}
 */
export async function api(url, path, { method = 'GET', body, token, headers = {} } = {}) {
  const h = { ...headers };
  let payload;
  if (body !== undefined) {
    payload = typeof body === 'string' ? body : JSON.stringify(body);
    if (!Object.keys(h).some((k) => k.toLowerCase() === 'content-type')) h['content-type'] = 'application/json';
  }
  if (token !== undefined) h.authorization = `Bearer ${token}`;
  const res = await fetch(`${url}${path}`, { method, headers: h, body: payload, signal: AbortSignal.timeout(10_000) });
  const text = await res.text();
  let parsed;
  try {
    parsed = text === '' ? undefined : JSON.parse(text);
  } catch {
    parsed = undefined;
  }
  return { status: res.status, headers: res.headers, body: parsed, text };
}

/** POST /api/guest; asserts 201 and returns `{ token, sessionId, username, expiresAt }`. */
export async function createGuest(url, username) {
  const res = await api(url, '/api/guest', { method: 'POST', body: username === undefined ? {} : { username } });
  assert.equal(res.status, 201, `POST /api/guest answered ${res.status}: ${res.text}`);
  return res.body;
}

/** Asserts the `{ error: { code, message } }` body of an HTTP error response. */
export function assertHttpError(res, status, code) {
  assert.equal(res.status, status, `expected HTTP ${status} ${code}, got ${res.status}: ${res.text}`);
  assert.ok(res.body && typeof res.body === 'object', `error body is not JSON: ${res.text}`);
  assert.ok(res.body.error && typeof res.body.error === 'object', `no "error" object in ${res.text}`);
  assert.equal(res.body.error.code, code);
  assert.equal(typeof res.body.error.message, 'string');
  assert.ok(res.body.error.message.length > 0, 'error.message is empty');
}

// ---------------------------------------------------------------------------------------------
// JWT (crafted by hand for the auth tests)

export function decodeJwt(token) {
  const [h, p] = token.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')),
  };
}

/** Signs `payload` as a JWT. alg: 'HS256' (default), 'HS384', 'HS512' or 'none'. */
export function signJwt(payload, secret, alg = 'HS256') {
  const enc = (obj) => Buffer.from(JSON.stringify(obj), 'utf8').toString('base64url');
  const head = `${enc({ alg, typ: 'JWT' })}.${enc(payload)}`;
  if (alg === 'none') return `${head}.`;
  const hash = { HS256: 'sha256', HS384: 'sha384', HS512: 'sha512' }[alg];
  if (!hash) throw new Error(`signJwt: unsupported alg ${alg}`);
  return `${head}.${createHmac(hash, secret).update(head).digest('base64url')}`;
}

// ---------------------------------------------------------------------------------------------
// Socket.IO

const socketRegistry = new Map(); // url -> Set of sockets, closed by server.stop()

// Records every incoming event (and 'disconnect') so that a test can wait for an event that
// arrived before it started waiting.
function record(socket) {
  socket.__log = [];
  socket.__waiters = [];
  const push = (event, args) => {
    const entry = { event, args, payload: args[0], at: Date.now(), consumed: false };
    socket.__log.push(entry);
    for (const w of socket.__waiters.slice()) {
      if (w.event === event && w.pred(entry.payload)) {
        entry.consumed = true;
        socket.__waiters.splice(socket.__waiters.indexOf(w), 1);
        w.resolve(entry);
        break;
      }
    }
  };
  socket.onAny((event, ...args) => push(event, args));
  socket.on('disconnect', (reason, details) => push('disconnect', [reason, details]));
}

/**
 * Opens a Socket.IO connection with `auth: { token }` (no token when `token` is undefined).
 * Resolves with the connected socket; rejects with the `connect_error` error.
 * opts.autoAck (default true): acknowledge every incoming `chat:message`.
 * Other opts go to `io()` (e.g. extraHeaders, auth).
 */
export function connect(url, token, opts = {}) {
  const { autoAck = true, timeoutMs = 5000, ...ioOpts } = opts;
  const socket = io(url, {
    transports: ['websocket'],
    forceNew: true,
    reconnection: false,
    auth: token === undefined ? {} : { token },
    ...ioOpts,
  });
  socket.autoAck = autoAck;
  record(socket);
  socket.on('chat:message', (_msg, ack) => {
    if (socket.autoAck && typeof ack === 'function') ack();
  });
  const reg = socketRegistry.get(url);
  if (reg) reg.add(socket);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      socket.close();
      reject(new Error(`connect to ${url} timed out after ${timeoutMs} ms`));
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.off('connect_error');
      resolve(socket);
    });
    socket.once('connect_error', (err) => {
      clearTimeout(timer);
      socket.close();
      reject(err);
    });
  });
}

/** Connects and asserts that the connection is refused with `message`. */
export async function assertRefusedConnect(url, token, message, opts = {}) {
  let err;
  try {
    await connect(url, token, opts);
  } catch (e) {
    err = e;
  }
  assert.ok(err, `connection was accepted; expected connect_error "${message}"`);
  assert.equal(err.message, message, `connect_error message: expected "${message}", got "${err.message}"`);
}

/**
 * Resolves with the payload of the first not yet consumed `event` on `socket` that satisfies
 * `pred` (including events that arrived earlier). Rejects after `timeoutMs`.
 */
export async function waitFor(socket, event, timeoutMs = 5000, pred = () => true) {
  const entry = await waitForEntry(socket, event, timeoutMs, pred);
  return entry.payload;
}

/** Like waitFor, resolving with the whole record `{ event, args, payload, at }`. */
export function waitForEntry(socket, event, timeoutMs = 5000, pred = () => true) {
  const found = socket.__log.find((e) => !e.consumed && e.event === event && pred(e.payload));
  if (found) {
    found.consumed = true;
    return Promise.resolve(found);
  }
  return new Promise((resolve, reject) => {
    const waiter = {
      event,
      pred,
      resolve: (entry) => {
        clearTimeout(timer);
        resolve(entry);
      },
    };
    const timer = setTimeout(() => {
      const i = socket.__waiters.indexOf(waiter);
      if (i >= 0) socket.__waiters.splice(i, 1);
      const seen = socket.__log.map((e) => e.event).join(', ');
      reject(new Error(`timed out after ${timeoutMs} ms waiting for "${event}" (events seen: ${seen || 'none'})`));
    }, timeoutMs);
    socket.__waiters.push(waiter);
  });
}

/** Forgets every event recorded so far on `socket` (long-running tests keep the log short). */
export function clearLog(socket) {
  socket.__log = [];
}

/** Every payload of `event` received so far (consumed or not). */
export function received(socket, event, pred = () => true) {
  return socket.__log.filter((e) => e.event === event && pred(e.payload)).map((e) => e.payload);
}

/** Waits `ms` and asserts that no unconsumed `event` (matching `pred`) arrived. */
export async function expectNone(socket, event, ms, pred = () => true) {
  if (ms > 0) await sleep(ms);
  const got = socket.__log.filter((e) => !e.consumed && e.event === event && pred(e.payload));
  assert.equal(got.length, 0, `unexpected "${event}": ${JSON.stringify(got.map((e) => e.payload))}`);
}

/** Emits with an ack callback (5 s timeout) and resolves with the ack's argument. */
/**
 * Emits with an ack callback and resolves with the ack's argument, waiting `ms` (an absent
 * `payload` sends none).
 */
export async function ackOf(socket, event, payload, ms = 10_000) {
  try {
    return payload === undefined
      ? await socket.timeout(ms).emitWithAck(event)
      : await socket.timeout(ms).emitWithAck(event, payload);
  } catch (err) {
    throw new Error(`no ack for "${event}" within ${ms} ms (${err.message})`);
  }
}

/** `waitFor` whose failure says who waited (`who`) for what. */
export async function expectEvent(who, socket, event, pred = () => true, ms = 10_000) {
  try {
    return await waitFor(socket, event, ms, pred);
  } catch (err) {
    throw new Error(`${who}: ${err.message}`);
  }
}

export async function emitAck(socket, event, ...payload) {
  try {
    return await socket.timeout(5000).emitWithAck(event, ...payload);
  } catch (err) {
    throw new Error(`no ack for "${event}" within 5000 ms (${err.message})`);
  }
}

/** Asserts `{ ok: true }` and returns the ack. */
export function assertOk(ack, what = 'ack') {
  assert.ok(ack && typeof ack === 'object', `${what}: not an object: ${JSON.stringify(ack)}`);
  assert.equal(ack.ok, true, `${what}: expected ok:true, got ${JSON.stringify(ack)}`);
  return ack;
}

/** Asserts `{ ok: false, error: { code, message } }`; `code` may be a list of accepted codes. */
export function assertRefused(ack, code, what = 'ack') {
  assert.ok(ack && typeof ack === 'object', `${what}: not an object: ${JSON.stringify(ack)}`);
  assert.equal(ack.ok, false, `${what}: expected ok:false, got ${JSON.stringify(ack)}`);
  assert.ok(ack.error && typeof ack.error === 'object', `${what}: no error object in ${JSON.stringify(ack)}`);
  if (Array.isArray(code)) {
    assert.ok(code.includes(ack.error.code), `${what}: expected one of ${code.join('|')}, got ${JSON.stringify(ack.error)}`);
  } else {
    assert.equal(ack.error.code, code, `${what}: expected ${code}, got ${JSON.stringify(ack.error)}`);
  }
  assert.equal(typeof ack.error.message, 'string', `${what}: error.message is not a string`);
  assert.ok(ack.error.message.length > 0, `${what}: error.message is empty`);
  return ack;
}

/** Resolves when the socket is disconnected (or already is); rejects after `timeoutMs`. */
export async function waitDisconnect(socket, timeoutMs = 5000) {
  if (socket.disconnected && socket.__log.some((e) => e.event === 'disconnect')) {
    return socket.__log.find((e) => e.event === 'disconnect').payload;
  }
  return waitFor(socket, 'disconnect', timeoutMs);
}

/** Creates a guest and connects it; resolves with `{ guest, socket, established }`. */
export async function guestSocket(url, { username, ...opts } = {}) {
  const guest = await createGuest(url, username ?? uname('g'));
  const socket = await connect(url, guest.token, opts);
  const established = await waitFor(socket, 'connection:established');
  return { guest, socket, established };
}

/** Starts a search on `socket` and asserts it has started (ack ok + match:searching). */
export async function startSearching(socket, interests) {
  const ack = assertOk(await emitAck(socket, 'match:start', interests ? { interests } : {}), 'match:start');
  assert.equal(ack.state, 'searching', `match:start: expected state searching, got ${JSON.stringify(ack)}`);
  await waitFor(socket, 'match:searching');
  return ack;
}

/**
 * Creates two guests, connects them, has both start matching and waits for match:found on
 * both. Resolves with `{ a, b, ga, gb, roomId }` (sockets a/b, guests ga/gb).
 */
export async function pair(url, opts = {}) {
  const A = await guestSocket(url, { username: uname('A'), ...(opts.a ?? {}) });
  const B = await guestSocket(url, { username: uname('B'), ...(opts.b ?? {}) });
  await startSearching(A.socket);
  assertOk(await emitAck(B.socket, 'match:start', {}), 'match:start (second guest)');
  const fa = await waitFor(A.socket, 'match:found');
  const fb = await waitFor(B.socket, 'match:found');
  assert.equal(fa.roomId, fb.roomId, 'both guests must get the same roomId');
  assert.equal(fa.partner?.username, B.guest.username);
  assert.equal(fb.partner?.username, A.guest.username);
  return { a: A.socket, b: B.socket, ga: A.guest, gb: B.guest, roomId: fa.roomId };
}

/** Sends a valid text message; asserts ok and returns the ack `{ ok, id, timestamp }`. */
export async function sendText(socket, content, clientId = `c-${hex(8)}`) {
  const ack = await emitAck(socket, 'chat:message', { clientId, type: 'text', content });
  return assertOk(ack, `chat:message ${JSON.stringify(content).slice(0, 40)}`);
}

/** Ends the chat of `socket` (if any) quietly: used so that pairs do not leak into the queue. */
export async function leaveQuietly(socket) {
  try {
    await socket.timeout(2000).emitWithAck('chat:leave');
  } catch {
    // not connected or no ack
  }
}

// ---------------------------------------------------------------------------------------------
// Raw TCP (the hardening tests play an attacker with a plain socket)

/** A raw TCP connection to 127.0.0.1:`port`; `closed` resolves (with the bytes read) when it
 * ends, `isClosed()` and `data()` tell how it stands. */
export function rawConn(port) {
  return new Promise((resolve, reject) => {
    const sock = netConnect({ host: '127.0.0.1', port });
    let data = '';
    let closedAt = null;
    const closed = new Promise((res) => {
      sock.on('close', () => { closedAt = Date.now(); res(data); });
    });
    sock.on('data', (d) => { data += d; });
    sock.on('error', () => {});
    sock.once('connect', () => resolve({ sock, closed, isClosed: () => closedAt !== null, data: () => data }));
    sock.once('error', reject);
  });
}

/** Resolves true if `p` settles within `ms`, false otherwise. */
export async function within(p, ms) {
  let timer;
  const r = await Promise.race([p.then(() => true), new Promise((res) => { timer = setTimeout(() => res(false), ms); })]);
  clearTimeout(timer);
  return r;
}
