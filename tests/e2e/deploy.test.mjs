// The deployment files of deploy/ and the Dockerfile: that each parses, names only what exists
// (flags and variables `tandem --help` lists, files of the repository, the workspace's binary),
// and that the pieces agree with each other and with tandem's defaults. Docker is not on the test
// machines, so the image and compose are checked statically; `systemd-analyze`, `promtool`, `nft`
// and `nginx` check their files where they are installed (skipped with a diagnostic otherwise).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, posix, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseDocument } from 'yaml';
import { runToExit } from './harness.mjs';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..');
const DEPLOY = join(ROOT, 'deploy');
const UNIT = join(DEPLOY, 'systemd', 'tandem.service');
const ENV_EXAMPLE = join(DEPLOY, 'systemd', 'tandem.env.example');
const COMPOSE = join(DEPLOY, 'compose.yml');
const PROMETHEUS = join(DEPLOY, 'prometheus', 'prometheus.yml');
const GRAFANA_DATASOURCE = join(DEPLOY, 'grafana', 'provisioning', 'datasources', 'prometheus.yml');
const GRAFANA_DASHBOARDS = join(DEPLOY, 'grafana', 'provisioning', 'dashboards', 'tandem.yml');
const DOCKERFILE = join(ROOT, 'Dockerfile');
const DOCKERIGNORE = join(ROOT, '.dockerignore');
const README = join(DEPLOY, 'README.md');

const read = (path) => readFileSync(path, 'utf8');
const rel = (path) => relative(ROOT, path);

// ---------------------------------------------------------------------------------------------
// tandem --help: the flags, their variables and defaults

let helpPromise;
/** `tandem --help`, parsed once: { text, flags: Map(flag → { env, default }), envs: Set }. */
function help() {
  helpPromise ??= (async () => {
    const { code, output } = await runToExit(['--help']);
    assert.equal(code, 0, `tandem --help exits 0:\n${output}`);
    const flags = new Map();
    // Each option starts a line, `  -h, --help` or `      --bind <ADDR>` (descriptions are indented
    // further); its text runs to the next option.
    const starts = [...output.matchAll(/^(?: {2}-\w, | {6})(--[a-z0-9-]+)/gm)];
    starts.forEach((m, i) => {
      const body = output.slice(m.index, i + 1 < starts.length ? starts[i + 1].index : output.length);
      const env = body.match(/\[env:\s+(TANDEM_[A-Z0-9_]+)\]/)?.[1];
      const dflt = body.match(/\[default:\s+([^\]]*)\]/)?.[1].replace(/\s+/g, ' ').trim();
      flags.set(m[1], { env, default: dflt });
    });
    assert.ok(flags.size > 50, `--help lists tandem's flags (found ${flags.size})`);
    const envs = new Set([...flags.values()].map((f) => f.env).filter(Boolean));
    return { text: output, flags, envs };
  })();
  return helpPromise;
}

/** The default of `flag` as `tandem --help` prints it. */
async function defaultOf(flag) {
  const f = (await help()).flags.get(flag);
  assert.ok(f, `tandem --help lists ${flag}`);
  assert.ok(f.default !== undefined, `tandem --help gives a default for ${flag}`);
  return f.default;
}

/** The port of an `ip:port` default. */
const portOf = (addr) => Number(addr.slice(addr.lastIndexOf(':') + 1));

// ---------------------------------------------------------------------------------------------
// Small parsers

/** systemd unit file → { sections: Map(section → Map(key → [values])), comments: [lines] }. */
function parseUnit(text) {
  const sections = new Map();
  const comments = [];
  let section = null;
  let pending = '';
  for (const raw of text.split('\n')) {
    const line = pending + raw.trim();
    pending = '';
    if (line.startsWith('#') || line.startsWith(';')) {
      comments.push(raw);
      continue;
    }
    if (line === '') continue;
    if (line.endsWith('\\')) {
      pending = line.slice(0, -1) + ' ';
      continue;
    }
    const header = line.match(/^\[([^\]]+)\]$/);
    if (header) {
      section = header[1];
      if (!sections.has(section)) sections.set(section, new Map());
      continue;
    }
    const kv = line.match(/^([A-Za-z0-9]+)=(.*)$/);
    assert.ok(kv && section, `unit line is key=value inside a section: ${raw}`);
    const keys = sections.get(section);
    if (!keys.has(kv[1])) keys.set(kv[1], []);
    keys.get(kv[1]).push(kv[2].trim());
  }
  return { sections, comments };
}

/** systemd time span ("30s", "1min 30s", "90") in seconds. */
function timespanSecs(span) {
  const units = { ms: 0.001, s: 1, sec: 1, m: 60, min: 60, h: 3600, hr: 3600 };
  if (/^\d+$/.test(span)) return Number(span);
  const re = /(\d+(?:\.\d+)?)\s*(ms|sec|min|hr|s|m|h)\b/g;
  assert.equal(span.replace(re, '').trim(), '', `time span ${span} parses`);
  return [...span.matchAll(re)].reduce((sum, m) => sum + Number(m[1]) * units[m[2]], 0);
}

/** Words of a command line (systemd's ExecStart): double and single quotes group. */
function words(line) {
  return [...line.matchAll(/"([^"]*)"|'([^']*)'|(\S+)/g)].map((m) => m[1] ?? m[2] ?? m[3]);
}

/** `--flag` names among command-line words (`--flag=value` too). */
function flagsIn(argv) {
  return argv.filter((w) => w.startsWith('--')).map((w) => w.split('=')[0]);
}

/** YAML text → plain object; fails on any parse error or warning (duplicate keys included). */
function parseYaml(path) {
  const doc = parseDocument(read(path), { prettyErrors: true, uniqueKeys: true });
  assert.deepEqual(doc.errors.map(String), [], `${rel(path)} parses as YAML`);
  assert.deepEqual(doc.warnings.map(String), [], `${rel(path)} has no YAML warnings`);
  const value = doc.toJS();
  assert.ok(value && typeof value === 'object', `${rel(path)} is a YAML mapping`);
  return value;
}

/** KEY=VALUE lines of an environment file: { set: Map, mentioned: Set (commented ones too) }. */
function parseEnvFile(text) {
  const set = new Map();
  const mentioned = new Set();
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (line === '') continue;
    const commented = line.match(/^#\s*([A-Z][A-Z0-9_]*)=/);
    if (commented) {
      mentioned.add(commented[1]);
      continue;
    }
    if (line.startsWith('#')) continue;
    const kv = line.match(/^([A-Z][A-Z0-9_]*)=(.*)$/);
    assert.ok(kv, `env file line is VARIABLE=value: ${raw}`);
    assert.ok(!/^["']/.test(kv[2]) && !/\s/.test(kv[2]), `no quotes or spaces in values (systemd and compose read them differently): ${raw}`);
    set.set(kv[1], kv[2]);
    mentioned.add(kv[1]);
  }
  return { set, mentioned };
}

/** Dockerfile → stages [{ from, name, instructions: [{ op, args }] }] (continuations joined). */
function parseDockerfile(text) {
  const logical = [];
  let current = '';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (current === '' && (line.startsWith('#') || line === '')) continue;
    if (line.startsWith('#')) continue; // comment lines inside a continued instruction
    if (line.endsWith('\\')) {
      current += line.slice(0, -1) + ' ';
      continue;
    }
    logical.push(current + line);
    current = '';
  }
  assert.equal(current, '', 'the Dockerfile does not end inside a continued line');
  const stages = [];
  for (const line of logical) {
    const m = line.match(/^(\w+)\s+(.*)$/s);
    assert.ok(m, `Dockerfile instruction: ${line}`);
    const op = m[1].toUpperCase();
    const args = m[2].trim();
    if (op === 'FROM') {
      const f = args.match(/^(?:--\S+\s+)*(\S+)(?:\s+AS\s+(\S+))?$/i);
      assert.ok(f, `FROM line: ${line}`);
      stages.push({ from: f[1], name: f[2], instructions: [] });
      continue;
    }
    assert.ok(stages.length > 0, `instruction before FROM: ${line}`);
    stages.at(-1).instructions.push({ op, args });
  }
  return stages;
}

/** The sources and options of a COPY/ADD's arguments (shell form). */
function copyArgs(args) {
  const parts = words(args);
  const options = parts.filter((p) => p.startsWith('--'));
  const paths = parts.filter((p) => !p.startsWith('--'));
  assert.ok(paths.length >= 2, `COPY has a source and a destination: ${args}`);
  return { options, sources: paths.slice(0, -1), dest: paths.at(-1) };
}

/** .dockerignore patterns → a predicate "path (relative, posix) is excluded from the context". */
function dockerignore(text) {
  const rules = text
    .split('\n')
    .map((l) => l.trim())
    .filter((l) => l && !l.startsWith('#'))
    .map((l) => {
      const negate = l.startsWith('!');
      const pattern = posix.normalize((negate ? l.slice(1) : l).replace(/^\/+/, ''));
      const re = pattern
        .split('/')
        .map((seg) =>
          seg === '**'
            ? '(?:.*)'
            : seg.replace(/[.+^${}()|\\]/g, '\\$&').replace(/\*/g, '[^/]*').replace(/\?/g, '[^/]'),
        )
        .join('/')
        .replace(/\(\?:\.\*\)\//g, '(?:.*/)?');
      return { negate, re: new RegExp(`^${re}$`) };
    });
  return (path) => {
    // A path is excluded when it, or a folder it is in, matches (the last matching rule wins).
    const segments = path.split('/');
    let excluded = false;
    for (let i = 1; i <= segments.length; i++) {
      const prefix = segments.slice(0, i).join('/');
      for (const r of rules) if (r.re.test(prefix)) excluded = !r.negate;
    }
    return excluded;
  };
}

/** The text of the `{ … }` block that follows the first match of `head` in `text`. */
function block(text, head) {
  const at = text.search(head);
  assert.ok(at >= 0, `found ${head}`);
  const open = text.indexOf('{', at);
  let depth = 0;
  for (let i = open; i < text.length; i++) {
    if (text[i] === '{') depth++;
    if (text[i] === '}' && --depth === 0) return text.slice(open + 1, i);
  }
  assert.fail(`the block after ${head} is closed`);
}

/** Fenced code blocks of a Markdown file with the given info string. */
function fenced(markdown, lang) {
  return [...markdown.matchAll(new RegExp('^```' + lang + '\\n([\\s\\S]*?)^```', 'gm'))].map((m) => m[1]);
}

/** Runs a command; null when it is not installed. */
function run(cmd, args, opts = {}) {
  const r = spawnSync(cmd, args, { encoding: 'utf8', ...opts });
  if (r.error?.code === 'ENOENT') return null;
  if (r.error) throw r.error;
  return r;
}

function have(cmd) {
  return run('sh', ['-c', `command -v ${cmd}`])?.status === 0;
}

function tempDir(t, prefix) {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

// ---------------------------------------------------------------------------------------------
// systemd

const HARDENING = {
  DynamicUser: 'yes',
  ProtectSystem: 'strict',
  ProtectHome: 'yes',
  PrivateTmp: 'yes',
  NoNewPrivileges: 'yes',
  LimitNOFILE: '1048576',
  Restart: 'on-failure',
  KillSignal: 'SIGTERM',
  EnvironmentFile: '/etc/tandem/tandem.env',
};

/** The commented drop-in at the end of the unit: its `#   Key=Value` lines after `#   [Service]`. */
function commentedDropIn(comments) {
  const at = comments.findIndex((c) => /^#\s+\[Service\]\s*$/.test(c));
  assert.ok(at >= 0, 'the unit carries a commented drop-in ([Service] …) for ports below 1024');
  const lines = ['[Service]'];
  for (const c of comments.slice(at + 1)) {
    const kv = c.match(/^#\s+([A-Za-z]+=\S.*)$/);
    if (!kv) break;
    lines.push(kv[1].trim());
  }
  return lines.join('\n') + '\n';
}

/** The unit's ExecStart words. */
function execStart(unit) {
  const exec = unit.sections.get('Service')?.get('ExecStart');
  assert.equal(exec?.length, 1, 'one ExecStart');
  return words(exec[0]);
}

test('systemd unit: hardening keys, only flags tandem --help lists, a stop timeout longer than the drain', async () => {
  const unit = parseUnit(read(UNIT));
  const service = unit.sections.get('Service');
  assert.ok(service, '[Service] section');
  assert.ok(unit.sections.get('Install')?.get('WantedBy')?.length, '[Install] WantedBy=');

  for (const [key, value] of Object.entries(HARDENING)) {
    assert.deepEqual(service.get(key), [value], `${key}=${value}`);
  }
  assert.ok(service.get('StateDirectory')?.length || service.get('RuntimeDirectory')?.length, 'StateDirectory= or RuntimeDirectory=');
  const families = service.get('RestrictAddressFamilies')?.flatMap((v) => v.split(/\s+/));
  assert.deepEqual(new Set(families), new Set(['AF_INET', 'AF_INET6', 'AF_UNIX', 'AF_NETLINK']), 'RestrictAddressFamilies');
  assert.ok(service.get('SystemCallFilter')?.includes('@system-service'), 'SystemCallFilter=@system-service');
  // An empty bounding set (no capabilities at all) and none ambient, unless a drop-in adds one.
  assert.deepEqual(service.get('CapabilityBoundingSet'), [''], 'CapabilityBoundingSet= (empty)');
  assert.ok((service.get('AmbientCapabilities') ?? ['']).every((v) => v === ''), 'no AmbientCapabilities in the unit itself');
  const dropIn = commentedDropIn(unit.comments);
  assert.match(dropIn, /^AmbientCapabilities=CAP_NET_BIND_SERVICE$/m, 'the drop-in gives CAP_NET_BIND_SERVICE');
  assert.match(dropIn, /^CapabilityBoundingSet=CAP_NET_BIND_SERVICE$/m, 'the drop-in lets it into the bounding set');

  // ExecStart: the tandem binary with flags it knows.
  const argv = execStart(unit);
  assert.match(argv[0], /^\/\S*\/tandem$/, 'ExecStart runs the tandem binary by absolute path');
  const { flags } = await help();
  for (const flag of flagsIn(argv.slice(1))) {
    assert.ok(flags.has(flag), `ExecStart's ${flag} is a flag of tandem --help`);
  }
  // --file-dir must exist at start: it is the state (or runtime) directory systemd makes.
  const fileDir = argv.find((w, i) => argv[i - 1] === '--file-dir') ?? argv.find((w) => w.startsWith('--file-dir='))?.slice(11);
  if (fileDir) {
    const made = [
      ...(service.get('StateDirectory') ?? []).flatMap((v) => v.split(/\s+/)).map((d) => [`%S/${d}`, `/var/lib/${d}`]),
      ...(service.get('RuntimeDirectory') ?? []).flatMap((v) => v.split(/\s+/)).map((d) => [`%t/${d}`, `/run/${d}`]),
    ].flat();
    assert.ok(made.includes(fileDir), `--file-dir ${fileDir} is a directory the unit makes (${made.join(', ')})`);
  }

  // systemd waits longer than tandem drains (--shutdown-grace-secs, from the flags or the env file).
  const env = parseEnvFile(read(ENV_EXAMPLE)).set;
  const grace = Number(
    argv.find((w, i) => argv[i - 1] === '--shutdown-grace-secs') ??
      env.get('TANDEM_SHUTDOWN_GRACE_SECS') ??
      (await defaultOf('--shutdown-grace-secs')),
  );
  const stop = service.get('TimeoutStopSec');
  assert.equal(stop?.length, 1, 'TimeoutStopSec=');
  assert.ok(timespanSecs(stop[0]) > grace, `TimeoutStopSec=${stop[0]} is longer than the drain (${grace} s)`);
});

test('systemd unit: systemd-analyze verify accepts it (and the drop-in), exposure at most 2.0', async (t) => {
  if (!have('systemd-analyze')) {
    t.diagnostic('systemd-analyze is not installed: skipped (the static checks above still ran)');
    t.skip('no systemd-analyze');
    return;
  }
  const bin = process.env.TANDEM_BIN;
  assert.ok(bin, 'TANDEM_BIN is set');
  const dir = tempDir(t, 'tandem-unit-');
  // verify wants ExecStart's binary to exist: run the copy with the binary under test.
  const text = read(UNIT).replace(/^ExecStart=\S+/m, `ExecStart=${resolve(bin)}`);
  const unitPath = join(dir, 'tandem.service');
  writeFileSync(unitPath, text);

  const verify = () => {
    const r = run('systemd-analyze', ['verify', unitPath]);
    assert.equal(r.status, 0, `systemd-analyze verify exits 0:\n${r.stdout}${r.stderr}`);
    // Unknown keys and bad values are only warnings (exit 0): none allowed.
    assert.equal(r.stderr.trim(), '', `systemd-analyze verify has no complaint:\n${r.stderr}`);
  };
  const security = () => {
    const r = run('systemd-analyze', ['security', '--offline=yes', '--threshold=20', unitPath]);
    assert.ok(r.status === 0, `exposure at most 2.0 (systemd-analyze security):\n${r.stdout.split('\n').filter((l) => !l.startsWith('✓')).join('\n')}${r.stderr}`);
    return r.stdout;
  };
  const netBind = (out) => out.split('\n').find((l) => l.includes('CapabilityBoundingSet=~CAP_NET_(BIND_SERVICE'));

  if (!/--offline/.test(run('systemd-analyze', ['security', '--help']).stdout)) {
    verify();
    t.diagnostic('this systemd-analyze has no `security --offline`: exposure not rated');
    return;
  }
  verify();
  const plain = security();
  t.diagnostic(plain.trim().split('\n').at(-1));
  assert.match(netBind(plain) ?? '', /^✓/, 'without the drop-in: no CAP_NET_BIND_SERVICE');

  // The commented drop-in, installed as systemctl edit would.
  mkdirSync(join(dir, 'tandem.service.d'));
  writeFileSync(join(dir, 'tandem.service.d', 'low-ports.conf'), commentedDropIn(parseUnit(read(UNIT)).comments));
  verify();
  const withDropIn = security();
  assert.match(netBind(withDropIn) ?? '', /^✗/, 'with the drop-in: CAP_NET_BIND_SERVICE in the bounding set');
});

test('env file example: only variables tandem knows; the placeholder secrets are refused', async () => {
  const { set, mentioned } = parseEnvFile(read(ENV_EXAMPLE));
  const { envs } = await help();
  for (const name of mentioned) {
    assert.ok(envs.has(name), `${name} (tandem.env.example) is a variable of tandem --help`);
  }
  for (const secret of ['TANDEM_JWT_SECRET', 'TANDEM_TURN_SECRET']) {
    assert.ok(set.has(secret), `${secret} is set in the example`);
  }
  assert.ok(mentioned.has('TANDEM_REDIS_URL'), 'TANDEM_REDIS_URL is in the example');
  // Used as shipped, tandem must refuse to start (exit 2) rather than run on a known secret.
  const { code, output } = await runToExit(
    ['--bind', '127.0.0.1:0', '--rtc-udp-port', '0', '--rtc-tcp-port', '0', '--turn-port', '0', '--turn-tls-port', '0'],
    10_000,
    Object.fromEntries(set),
  );
  assert.equal(code, 2, `tandem refuses the example's placeholder secrets (exit 2):\n${output}`);
  assert.match(output, /secret must be at least/, output);
});

// ---------------------------------------------------------------------------------------------
// Dockerfile

test('Dockerfile: builds the workspace binary from sources that exist, runs it as non-root, exposes the default ports', async () => {
  const stages = parseDockerfile(read(DOCKERFILE));
  assert.ok(stages.length >= 2, 'multi-stage');
  assert.match(stages[0].from, /^rust:/, 'built in a rust image');
  const runtime = stages.at(-1);
  assert.match(runtime.from, /^(gcr\.io\/distroless\/cc-debian12|debian:bookworm-slim)(:|$)/, 'distroless cc or debian slim at run time');

  // The binary: the [[bin]] of Cargo.toml whose path is src/main.rs.
  const cargo = read(join(ROOT, 'Cargo.toml'));
  const bins = [...cargo.matchAll(/^\[\[bin\]\]\s*\nname\s*=\s*"([^"]+)"\s*\npath\s*=\s*"([^"]+)"/gm)].map((m) => ({ name: m[1], path: m[2] }));
  const main = bins.find((b) => b.path === 'src/main.rs');
  assert.ok(main, 'Cargo.toml has a [[bin]] at src/main.rs');
  const runs = stages.flatMap((s) => s.instructions.filter((i) => i.op === 'RUN').map((i) => i.args));
  const build = runs.find((r) => /cargo build/.test(r));
  assert.ok(build, 'a RUN cargo build');
  assert.match(build, /--release/, 'a release build');
  assert.match(build, new RegExp(`--bin ${main.name}(\\s|$)`), `cargo build --bin ${main.name}`);
  assert.match(build, new RegExp(`target/release/${main.name}(\\s|$)`), 'the built binary is the one taken');
  const entry = runtime.instructions.find((i) => i.op === 'ENTRYPOINT');
  assert.ok(entry, 'ENTRYPOINT');
  const entryArgv = entry.args.startsWith('[') ? JSON.parse(entry.args) : words(entry.args);
  assert.match(entryArgv[0], new RegExp(`/${main.name}$`), 'ENTRYPOINT runs tandem');
  const user = runtime.instructions.filter((i) => i.op === 'USER').at(-1)?.args;
  const nonrootBase = /:nonroot$/.test(runtime.from);
  assert.ok(nonrootBase || user, 'a USER (or a nonroot base image)');
  if (user) assert.doesNotMatch(user, /^(0|root)(:|$)/, 'USER is not root');

  // Every COPY from the build context exists and is not excluded by .dockerignore.
  const excluded = dockerignore(read(DOCKERIGNORE));
  const sources = [];
  for (const stage of stages) {
    for (const ins of stage.instructions.filter((i) => i.op === 'COPY' || i.op === 'ADD')) {
      const { options, sources: srcs } = copyArgs(ins.args);
      if (options.some((o) => o.startsWith('--from'))) continue;
      for (const src of srcs) {
        const path = posix.normalize(src.replace(/\/+$/, '')) || '.';
        assert.ok(existsSync(join(ROOT, path)), `COPY source ${src} exists in the repository`);
        assert.ok(!excluded(path), `COPY source ${src} is not excluded by .dockerignore`);
        sources.push(path);
      }
    }
  }
  const copied = (path) => sources.some((s) => s === '.' || path === s || path.startsWith(`${s}/`));
  // …and they cover what cargo needs: the manifest, the lock file, every workspace member, every
  // target path of the root package, and what its sources include at compile time.
  for (const path of ['Cargo.toml', 'Cargo.lock', 'src/main.rs']) assert.ok(copied(path), `the image copies ${path}`);
  const members = cargo.match(/^members\s*=\s*\[([^\]]*)\]/m)?.[1].match(/"([^"]+)"/g).map((s) => s.slice(1, -1));
  assert.ok(members?.length, 'Cargo.toml lists workspace members');
  for (const m of members.filter((m) => m !== '.')) assert.ok(copied(`${m}/Cargo.toml`), `the image copies workspace member ${m}`);
  for (const m of cargo.matchAll(/^path\s*=\s*"([^"]+)"/gm)) assert.ok(copied(m[1]), `the image copies target ${m[1]}`);
  for (const m of cargo.matchAll(/^\[\[bench\]\]\s*\nname\s*=\s*"([^"]+)"/gm)) assert.ok(copied(`benches/${m[1]}.rs`), `the image copies bench ${m[1]}`);
  const walk = (dir) =>
    readdirSync(dir, { withFileTypes: true }).flatMap((e) => (e.isDirectory() ? walk(join(dir, e.name)) : e.name.endsWith('.rs') ? [join(dir, e.name)] : []));
  for (const file of walk(join(ROOT, 'src'))) {
    for (const m of read(file).matchAll(/include_(?:bytes|str)!\("([^"]+)"\)/g)) {
      const included = rel(resolve(dirname(file), m[1])).split('\\').join('/');
      assert.ok(copied(included), `the image copies ${included} (included by ${rel(file)})`);
      assert.ok(!excluded(included), `${included} is not excluded by .dockerignore`);
    }
  }

  // EXPOSE: tandem's default ports (tandem --help).
  const exposed = new Set(runtime.instructions.filter((i) => i.op === 'EXPOSE').flatMap((i) => i.args.split(/\s+/)));
  const want = [
    `${portOf(await defaultOf('--bind'))}/tcp`,
    `${await defaultOf('--rtc-udp-port')}/udp`,
    `${await defaultOf('--rtc-tcp-port')}/tcp`,
    `${await defaultOf('--turn-port')}/udp`,
    `${await defaultOf('--turn-port')}/tcp`,
    `${await defaultOf('--turn-tls-port')}/tcp`,
    `${await defaultOf('--turn-relay-ports')}/udp`,
  ];
  for (const p of want) assert.ok(exposed.has(p), `EXPOSE ${p}`);

  // .dockerignore keeps build output and dependencies out of the context.
  for (const path of ['target', 'fuzz/target', 'tests/e2e/node_modules', 'web/node_modules', '.git']) {
    assert.ok(excluded(path), `.dockerignore excludes ${path}`);
  }
});

// ---------------------------------------------------------------------------------------------
// compose, Prometheus, Grafana

/** A compose service's short-syntax bind mounts: [{ host (absolute), container }]. */
function bindMounts(service) {
  return (service.volumes ?? [])
    .map((v) => (typeof v === 'string' ? v.split(':') : [v.source, v.target]))
    .filter(([src]) => src && (src.startsWith('.') || src.startsWith('/')))
    .map(([src, dst]) => ({ host: resolve(DEPLOY, src), container: dst }));
}

/** A command-line option's value from a list of `--name=value` words. */
const optionOf = (command, name) => (command ?? []).find((w) => w.startsWith(`${name}=`))?.slice(name.length + 1);

test('compose.yml: parses; every file it mounts exists; tandem from the Dockerfile; Prometheus and Grafana wired to the files here', async (t) => {
  const compose = parseYaml(COMPOSE);
  const { tandem, prometheus, grafana } = compose.services ?? {};
  assert.ok(tandem && prometheus && grafana, 'services tandem, prometheus and grafana');

  // Every host path mounted exists: also the dashboard and the alert rules, which the dashboard's
  // author writes (they must be there once both parts are merged).
  for (const [name, service] of Object.entries(compose.services)) {
    for (const { host } of bindMounts(service)) {
      assert.ok(existsSync(host), `${name} mounts ${rel(host)}, which exists`);
    }
    for (const v of service.volumes ?? []) {
      const src = typeof v === 'string' ? v.split(':')[0] : v.source;
      if (src && !src.startsWith('.') && !src.startsWith('/')) {
        assert.ok(compose.volumes && src in compose.volumes, `named volume ${src} is declared`);
      }
    }
  }

  // tandem: the repository's Dockerfile; host networking (or the UDP ports published).
  const context = resolve(DEPLOY, tandem.build?.context ?? tandem.build ?? '.');
  assert.equal(context, ROOT, 'tandem is built from the repository root');
  assert.ok(existsSync(join(context, tandem.build?.dockerfile ?? 'Dockerfile')), 'its Dockerfile exists');
  if (tandem.network_mode !== 'host') {
    const ports = (tandem.ports ?? []).map(String);
    const media = await defaultOf('--rtc-udp-port');
    assert.ok(ports.some((p) => p.includes(media) && p.endsWith('/udp')), 'the media UDP port is published');
  }
  // The same secrets file as the unit; a stop timeout longer than the drain.
  const unit = parseUnit(read(UNIT)).sections.get('Service');
  const envFiles = [tandem.env_file ?? []].flat().map((e) => (typeof e === 'string' ? e : e.path));
  assert.ok(envFiles.includes(unit.get('EnvironmentFile')[0]), 'tandem reads the env file the systemd unit reads');
  const grace = Number(await defaultOf('--shutdown-grace-secs'));
  assert.ok(tandem.stop_grace_period && timespanSecs(String(tandem.stop_grace_period)) > grace, `stop_grace_period longer than the drain (${grace} s)`);

  // Prometheus: its config file and the rule files it names, side by side in the container.
  const configPath = optionOf(prometheus.command, '--config.file') ?? '/etc/prometheus/prometheus.yml';
  const promMounts = bindMounts(prometheus);
  const mountedConfig = promMounts.find((m) => m.container === configPath);
  assert.equal(mountedConfig?.host, PROMETHEUS, `deploy/prometheus/prometheus.yml is mounted at ${configPath}`);
  for (const rule of parseYaml(PROMETHEUS).rule_files ?? []) {
    const inContainer = posix.resolve(posix.dirname(configPath), rule);
    const m = promMounts.find((x) => x.container === inContainer);
    assert.ok(m, `the rule file ${rule} is mounted at ${inContainer}`);
    assert.equal(m.host, resolve(dirname(PROMETHEUS), rule), `${inContainer} is deploy/prometheus/${rule}`);
  }

  // Grafana: the provisioning folder, and the dashboard where the provider looks.
  const grafanaMounts = bindMounts(grafana);
  assert.ok(
    grafanaMounts.some((m) => m.host === join(DEPLOY, 'grafana', 'provisioning') && m.container === '/etc/grafana/provisioning'),
    'deploy/grafana/provisioning is mounted at /etc/grafana/provisioning',
  );
  const dashboard = grafanaMounts.find((m) => m.host === join(DEPLOY, 'grafana', 'tandem.json'));
  assert.ok(dashboard, 'deploy/grafana/tandem.json is mounted');
  const providers = parseYaml(GRAFANA_DASHBOARDS).providers ?? [];
  assert.ok(
    providers.some((p) => p.type === 'file' && posix.resolve(p.options?.path ?? '') === posix.dirname(dashboard.container)),
    `a file provider loads ${posix.dirname(dashboard.container)}, where compose mounts tandem.json`,
  );
  const sources = parseYaml(GRAFANA_DATASOURCE).datasources ?? [];
  const ds = sources.find((d) => d.uid === 'prometheus');
  assert.ok(ds, 'a data source with uid prometheus');
  assert.equal(ds.type, 'prometheus');
  // It reaches the Prometheus compose starts: localhost on the host network, else the service.
  const listen = optionOf(prometheus.command, '--web.listen-address') ?? '0.0.0.0:9090';
  const url = new URL(ds.url);
  assert.equal(Number(url.port || 80), portOf(listen), `the data source's port is Prometheus's (${listen})`);
  const hostOk = prometheus.network_mode === 'host' && grafana.network_mode === 'host' ? ['localhost', '127.0.0.1'] : ['prometheus'];
  assert.ok(hostOk.includes(url.hostname), `the data source's host (${url.hostname}) is one of ${hostOk.join(', ')}`);
  t.diagnostic(`mounted: ${Object.values(compose.services).flatMap(bindMounts).map((m) => rel(m.host)).join(', ')}`);
});

test('prometheus.yml: parses, scrapes tandem every 15 s on its HTTP port, names rule files that exist (promtool where installed)', async (t) => {
  const config = parseYaml(PROMETHEUS);
  const job = (config.scrape_configs ?? []).find((j) => j.job_name === 'tandem');
  assert.ok(job, 'a scrape job named tandem');
  assert.equal(job.scrape_interval ?? config.global?.scrape_interval, '15s', 'scrape_interval 15s');
  assert.equal(job.metrics_path ?? '/metrics', '/metrics');
  const targets = (job.static_configs ?? []).flatMap((s) => s.targets ?? []);
  const port = portOf(await defaultOf('--bind'));
  assert.ok(targets.includes(`localhost:${port}`), `targets include localhost:${port} (--bind's default port)`);
  const rules = config.rule_files ?? [];
  assert.ok(rules.includes('tandem.rules.yml'), 'rule_files names tandem.rules.yml');
  for (const rule of rules) {
    assert.ok(existsSync(resolve(dirname(PROMETHEUS), rule)), `rule file ${rule} exists beside prometheus.yml`);
  }
  if (!have('promtool')) {
    t.diagnostic('promtool is not installed (Debian: prometheus): `promtool check config` skipped');
    return;
  }
  const r = run('promtool', ['check', 'config', PROMETHEUS]);
  assert.equal(r.status, 0, `promtool check config:\n${r.stdout}${r.stderr}`);
});

// ---------------------------------------------------------------------------------------------
// deploy/README.md

test('deploy/README.md: the ports table matches tandem --help; the nft example checks; the nginx example upgrades WebSockets', async (t) => {
  const readme = read(README);
  const { flags } = await help();

  // Ports table: each flag exists and its default is tandem's.
  const rows = readme.split('\n').filter((l) => /^\|.*\| `--[a-z0-9-]+`/.test(l));
  assert.ok(rows.length >= 7, 'a ports table with a row per port flag');
  const inTable = new Set();
  for (const row of rows) {
    const cells = row.split('|').map((c) => c.trim());
    const flag = cells[2].match(/`(--[a-z0-9-]+)`/)[1];
    assert.ok(flags.has(flag), `${flag} (ports table) is a flag of tandem --help`);
    inTable.add(flag);
    const dflt = cells[3].match(/^`([^`]+)`/)?.[1];
    if (dflt) assert.equal(dflt, flags.get(flag).default, `${flag}'s default in the ports table is tandem's`);
  }
  for (const flag of ['--bind', '--rtc-udp-port', '--rtc-tcp-port', '--turn-port', '--turn-tls-port', '--turn-relay-ports']) {
    assert.ok(inTable.has(flag), `the ports table has ${flag}`);
  }
  for (const section of ['## The dashboard', '--node-ip', '--trusted-proxy', 'docs/cluster.md', 'systemd', 'compose']) {
    assert.ok(readme.includes(section), `the README covers ${section}`);
  }

  // nftables: opens tandem's default ports, and parses (nft -c) where nft is installed.
  const [nft] = fenced(readme, 'nft');
  assert.ok(nft, 'an nftables example');
  for (const [proto, flag] of [['udp', '--rtc-udp-port'], ['tcp', '--rtc-tcp-port'], ['udp', '--turn-port'], ['tcp', '--turn-port'], ['tcp', '--turn-tls-port'], ['udp', '--turn-relay-ports']]) {
    const port = flags.get(flag).default;
    const opened = nft.split('\n').some((l) => new RegExp(`^\\s*${proto} dport (\\{[^}]*\\b${port}\\b[^}]*\\}|${port})\\s+accept`).test(l));
    assert.ok(opened, `the nft example opens ${proto} ${port} (${flag})`);
  }
  if (have('nft')) {
    const dir = tempDir(t, 'tandem-nft-');
    writeFileSync(join(dir, 'rules.nft'), nft);
    const r = run('nft', ['-c', '-f', join(dir, 'rules.nft')]);
    assert.equal(r.status, 0, `nft -c accepts the example:\n${r.stderr}`);
  } else {
    t.diagnostic('nft is not installed: the nftables example was not parsed');
  }

  // nginx: the Socket.IO location upgrades to WebSocket and forwards the client's address.
  const [nginx] = fenced(readme, 'nginx');
  assert.ok(nginx, 'an nginx example');
  const sio = block(nginx, /location\s+\/socket\.io\/\s*\{/);
  assert.match(sio, /^\s*proxy_pass\s+http:\/\/\S+;/m, 'proxy_pass');
  assert.match(sio, /^\s*proxy_http_version\s+1\.1;/m, 'proxy_http_version 1.1 (WebSocket needs it)');
  assert.match(sio, /^\s*proxy_set_header\s+Upgrade\s+\$http_upgrade;/m, 'Upgrade $http_upgrade');
  const connection = sio.match(/^\s*proxy_set_header\s+Connection\s+(\S+);/m)?.[1];
  assert.ok(connection, 'a Connection header');
  if (connection.startsWith('$')) {
    const map = block(nginx, new RegExp(`map\\s+\\$http_upgrade\\s+\\${connection}\\s*\\{`));
    assert.match(map, /default\s+upgrade;/, `${connection} maps to upgrade`);
  } else {
    assert.match(connection, /^"?upgrade"?$/i, 'Connection: upgrade');
  }
  assert.match(sio, /^\s*proxy_set_header\s+X-Forwarded-For\s+\$(proxy_add_x_forwarded_for|remote_addr);/m, 'X-Forwarded-For');
  assert.match(sio, /^\s*proxy_set_header\s+Host\s+\$(http_host|host);/m, 'Host (tandem checks Origin against it)');
  const readTimeout = sio.match(/^\s*proxy_read_timeout\s+(\d+)s?;/m)?.[1] ?? '60';
  const heartbeat = Number(await defaultOf('--ping-interval-secs')) + Number(await defaultOf('--ping-timeout-secs'));
  assert.ok(Number(readTimeout) > heartbeat, `proxy_read_timeout ${readTimeout}s outlasts a heartbeat (${heartbeat} s)`);
  // The upstream is where the README binds tandem, and the proxy's address is trusted.
  const upstream = nginx.match(/upstream\s+\S+\s*\{[^}]*server\s+(\S+?);/)?.[1];
  assert.ok(upstream, 'an upstream server');
  assert.ok(readme.includes(`TANDEM_BIND=${upstream}`), `the README binds tandem to ${upstream}`);
  const trusted = readme.match(/TANDEM_TRUSTED_PROXY=(\S+)/)?.[1];
  assert.ok(trusted, 'the README sets TANDEM_TRUSTED_PROXY');
  assert.ok(trusted.split(',').some((c) => c.startsWith(upstream.split(':')[0])), `${trusted} covers the proxy's address`);

  if (!have('nginx') || !have('openssl')) {
    t.diagnostic('nginx or openssl is not installed: the nginx example was not run through `nginx -t`');
    return;
  }
  const dir = tempDir(t, 'tandem-nginx-');
  const made = run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes',
    '-keyout', join(dir, 'key.pem'), '-out', join(dir, 'cert.pem'), '-days', '1', '-subj', '/CN=chat.example.org']);
  assert.equal(made.status, 0, made.stderr);
  const site = nginx
    .replace(/^(\s*ssl_certificate)\s+\S+;/m, `$1 ${join(dir, 'cert.pem')};`)
    .replace(/^(\s*ssl_certificate_key)\s+\S+;/m, `$1 ${join(dir, 'key.pem')};`);
  const temp = ['client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi'].map((k) => `${k}_temp_path ${join(dir, k)};`).join('\n');
  writeFileSync(join(dir, 'nginx.conf'), `pid ${join(dir, 'nginx.pid')};\nerror_log ${join(dir, 'error.log')};\nevents {}\nhttp {\naccess_log off;\n${temp}\n${site}\n}\n`);
  const r = run('nginx', ['-t', '-p', dir, '-e', join(dir, 'error.log'), '-c', join(dir, 'nginx.conf')]);
  assert.equal(r.status, 0, `nginx -t accepts the example:\n${r.stderr}`);
});
