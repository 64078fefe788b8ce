// Shared-file throughput: one pair of guests, N uploads of SIZE bytes (each posted into the chat)
// and N downloads of them by the partner, against the release binary on loopback, with files in
// memory and then in a directory (--file-dir). Reports MiB/s, the server's CPU time per MiB
// (utime + stime from /proc) and its resident memory before, with the files stored, and after the
// chat ended (the files are deleted). Baseline, same run: a bare node:http server that reads the
// same request bodies and throws them away (the floor of moving the bytes over loopback with this
// client); the upload ratio is tandem's time over the baseline's.
//
//   cargo build --release --bin tandem && npm ci --prefix tests/e2e
//   TANDEM_BIN=target/release/tandem node benches/files/bench.mjs [N=30] [SIZE=10485760]
import http from 'node:http';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startServer, pair, processStats, sleep } from '../../tests/e2e/harness.mjs';

const N = Number(process.argv[2] ?? 30);
const SIZE = Number(process.argv[3] ?? 10 * 1024 * 1024);
const MiB = 1024 * 1024;

// A PNG signature followed by filler: sniffed as PNG, SIZE bytes in all.
const file = Buffer.alloc(SIZE, 0x5a);
Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex').copy(file);

const cpuTicks = (pid) => {
  const f = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return Number(f[11]) + Number(f[12]); // utime + stime, fields 14 and 15
};
const TICK_MS = 10; // CLK_TCK = 100 on Linux

function form() {
  const fd = new FormData();
  fd.append('file', new Blob([file], { type: 'image/png' }), 'bench.png');
  return fd;
}

async function baseline() {
  const srv = http.createServer((req, res) => {
    req.on('data', () => {});
    req.on('end', () => res.writeHead(201).end('{}'));
  });
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const url = `http://127.0.0.1:${srv.address().port}/`;
  const t0 = performance.now();
  for (let i = 0; i < N; i++) {
    const r = await fetch(url, { method: 'POST', body: form() });
    await r.arrayBuffer();
  }
  const ms = performance.now() - t0;
  srv.close();
  return ms;
}

async function round(server) {
  const { a, b, ga, gb } = await pair(server.url);
  b.on('chat:message', (_m, ack) => ack && ack());
  await sleep(200);
  let c0 = cpuTicks(server.pid);
  let t0 = performance.now();
  const urls = [];
  for (let i = 0; i < N; i++) {
    const r = await fetch(`${server.url}/api/files`, {
      method: 'POST', body: form(), headers: { authorization: `Bearer ${ga.token}` },
    });
    if (r.status !== 201) throw new Error(`upload ${i}: ${r.status} ${await r.text()}`);
    urls.push((await r.json()).url);
  }
  const upMs = performance.now() - t0;
  const upCpu = (cpuTicks(server.pid) - c0) * TICK_MS;
  const rss1 = processStats(server.pid).rssKb;
  c0 = cpuTicks(server.pid);
  t0 = performance.now();
  for (const u of urls) {
    const r = await fetch(server.url + u, { headers: { authorization: `Bearer ${gb.token}` } });
    const got = await r.arrayBuffer();
    if (r.status !== 200 || got.byteLength !== SIZE) throw new Error(`download: ${r.status}`);
  }
  const downMs = performance.now() - t0;
  const downCpu = (cpuTicks(server.pid) - c0) * TICK_MS;
  await a.timeout(2000).emitWithAck('chat:leave');
  await sleep(1500);
  const rss2 = processStats(server.pid).rssKb;
  const metrics = await (await fetch(`${server.url}/metrics`)).text();
  const stored = /^tandem_files_stored (\d+)/m.exec(metrics)?.[1];
  if (stored !== '0') throw new Error(`files still stored after the chat ended: ${stored}`);
  a.close(); b.close();
  return { upMs, upCpu, downMs, downCpu, rss1, rss2, mib: (SIZE * N) / MiB };
}

async function run(label, extra) {
  const server = await startServer([
    '--max-file-size', String(SIZE), '--file-uploads-per-min', '100000',
    '--file-bytes-per-hour', String(SIZE * N * 4), '--file-storage-mb', String(Math.ceil((SIZE * N) / MiB) + 64),
    '--http-requests-per-min', '1000000', ...extra,
  ]);
  try {
    const rss0 = processStats(server.pid).rssKb;
    const first = await round(server);
    // A second chat on the same server: the allocator reuses the first chat's freed memory, so
    // resident memory stays at the first high-water mark instead of growing.
    const second = await round(server);
    return { label, ...first, rss0, rssAgain: second.rss2 };
  } finally {
    await server.stop();
  }
}

await baseline(); // warm-up (JIT, sockets)
const base = await baseline();
const dir = mkdtempSync(join(tmpdir(), 'tandem-files-bench-'));
const rows = [await run('memory', []), await run('disk', ['--file-dir', dir])];
rmSync(dir, { recursive: true, force: true });
const mib = (SIZE * N) / MiB;
console.log(`${N} files × ${(SIZE / MiB).toFixed(1)} MiB (${mib.toFixed(0)} MiB each way)`);
console.log(`baseline (node:http sink): upload ${(mib / (base / 1000)).toFixed(0)} MiB/s`);
for (const r of rows) {
  console.log(
    `${r.label.padEnd(6)} upload ${(r.mib / (r.upMs / 1000)).toFixed(0)} MiB/s (${(r.upMs / base).toFixed(2)}× baseline time), ` +
      `server CPU ${(r.upCpu / r.mib).toFixed(2)} ms/MiB; download ${(r.mib / (r.downMs / 1000)).toFixed(0)} MiB/s, ` +
      `CPU ${(r.downCpu / r.mib).toFixed(2)} ms/MiB; RSS MiB: ${(r.rss0 / 1024).toFixed(0)} at start, ${(r.rss1 / 1024).toFixed(0)} stored, ` +
      `${(r.rss2 / 1024).toFixed(0)} chat ended, ${(r.rssAgain / 1024).toFixed(0)} after a second chat`,
  );
}
