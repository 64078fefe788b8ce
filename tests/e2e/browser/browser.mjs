// Helpers for the browser end-to-end tests: the real web client (served by tandem at `/`) in
// Debian's Chromium (/usr/bin/chromium), driven by playwright-core. Nothing is downloaded.
//
// Each test file launches ONE browser (`launchBrowser()` in `before`, `close()` in `after`); every
// guest is its own browser context (own storage, so its own guest session) with camera and
// microphone granted for the server's origin. Chromium's fake devices stand in for the camera (a
// 20 fps test pattern) and the microphone (a beep). The tests only use the client's stable
// selectors (web/README.md) and, for media, `window.__pcs`: every RTCPeerConnection the page
// creates, recorded by an init script so that a test can call getStats() without test hooks in
// the product.

import { chromium } from 'playwright-core';
import { mkdtempSync, mkdirSync, rmSync, existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, dirname, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

export { sleep };

export const CHROMIUM = process.env.TANDEM_E2E_CHROMIUM || '/usr/bin/chromium';
const REPO = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
export const ARTIFACTS = process.env.TANDEM_E2E_ARTIFACTS || join(REPO, 'target', 'e2e');

/** How long a test waits for a state of the page (matching, a call connecting…). */
export const WAIT_MS = 20_000;

// Chromium reads only the last --disable-features flag: every feature to disable goes here.
const DISABLED_FEATURES = [
  // ICE host candidates with real addresses (127.0.0.1), not mDNS names, in the namespace.
  'WebRtcHideLocalIpsWithMdns',
  // Quiet, deterministic browser (the usual automation set).
  'Translate',
  'MediaRouter',
  'DialMediaRouteProvider',
  'GlobalMediaControls',
  'OptimizationHints',
  'NetworkTimeServiceQuerying',
  'PreconnectToSearch',
  'AimEnabled',
  'LensOverlay',
  'HttpsUpgrades',
  'HttpsFirstBalancedModeAutoEnable',
  'PaintHolding',
  'LazyFrameLoading',
  'AcceptCHFrame',
  'AutoExpandDetailsElement',
  'AvoidUnnecessaryBeforeUnloadCheckSync',
  'DestroyProfileOnBrowserClose',
  'ThirdPartyStoragePartitioning',
  'CertificateTransparencyComponentUpdater',
  'ImprovedCookieControls',
];

/** Chromium's command line (playwright's own defaults are off: we pass them all). */
function chromiumArgs(userDataDir, extra = []) {
  return [
    ...extra,
    '--headless',
    '--no-sandbox',
    '--disable-gpu',
    '--disable-quic',
    '--no-first-run',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--allow-loopback-in-peer-connection',
    '--use-fake-device-for-media-stream',
    '--use-fake-ui-for-media-stream',
    '--autoplay-policy=no-user-gesture-required',
    `--disable-features=${DISABLED_FEATURES.join(',')}`,
    `--user-data-dir=${userDataDir}`,
    // What playwright needs to drive the browser (normally among its default arguments).
    '--remote-debugging-pipe',
    '--no-startup-window',
    // Keep timers, rendering and media of unfocused / hidden pages running: two guests share a
    // headless browser and must behave like two people in front of their own screens.
    '--disable-background-timer-throttling',
    '--disable-backgrounding-occluded-windows',
    '--disable-renderer-backgrounding',
    '--disable-ipc-flooding-protection',
    '--disable-back-forward-cache',
    '--disable-field-trial-config',
    '--disable-breakpad',
    '--disable-dev-shm-usage',
    '--disable-extensions',
    '--disable-default-apps',
    '--disable-hang-monitor',
    '--disable-popup-blocking',
    '--disable-prompt-on-repost',
    '--disable-search-engine-choice-screen',
    '--no-default-browser-check',
    '--password-store=basic',
    '--use-mock-keychain',
    '--metrics-recording-only',
    '--force-color-profile=srgb',
    '--hide-scrollbars',
    '--mute-audio',
  ];
}

// Records every RTCPeerConnection of the page in window.__pcs (runs before the page's scripts).
function recordPeerConnections() {
  const Native = window.RTCPeerConnection;
  if (!Native || window.__pcs) return;
  window.__pcs = [];
  class Recorded extends Native {
    constructor(...args) {
      super(...args);
      window.__pcs.push(this);
    }
  }
  window.RTCPeerConnection = Recorded;
  if (window.webkitRTCPeerConnection) window.webkitRTCPeerConnection = Recorded;
}

export const VIEWPORTS = {
  phone: { viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: false, hasTouch: true },
  desktop: { viewport: { width: 1280, height: 800 }, deviceScaleFactor: 1 },
};

/**
 * Launches Chromium once (call in `before`; call `close()` in `after`, which also removes its
 * profile directory). Fails with a clear message when Chromium is not installed.
 */
/**
 * `extraArgs`: more Chromium flags for this browser (e.g. a certificate to trust);
 * `executablePath`: a wrapper that starts Chromium elsewhere (e.g. in a network namespace).
 */
export async function launchBrowser(extraArgs = [], { executablePath = CHROMIUM } = {}) {
  if (!existsSync(CHROMIUM)) {
    throw new Error(`${CHROMIUM} is missing: the browser tests need Debian's chromium (apt-get install chromium)`);
  }
  const userDataDir = mkdtempSync(join(tmpdir(), 'tandem-e2e-chromium-'));
  let browser;
  try {
    browser = await chromium.launch({
      executablePath,
      headless: true,
      ignoreDefaultArgs: true,
      args: chromiumArgs(userDataDir, extraArgs),
      timeout: 60_000,
      env: { ...process.env, TZ: 'UTC' },
    });
  } catch (err) {
    rmSync(userDataDir, { recursive: true, force: true });
    throw err;
  }
  const guests = new Set();
  let closed = false;
  return {
    browser,
    userDataDir,
    guests,
    /**
     * A new guest: its own context (storage, cookies), camera and microphone granted for the
     * server's origin, `window.__pcs` recorded, and one page with tandem's client loaded.
     * `name` labels logs and screenshots. `viewport`: 'phone' (default) or 'desktop'.
     */
    async guest(server, { name = 'guest', viewport = 'phone', open = true } = {}) {
      const context = await browser.newContext({ ...VIEWPORTS[viewport], locale: 'en-US', timezoneId: 'UTC' });
      await context.grantPermissions(['camera', 'microphone'], { origin: server.url });
      await context.addInitScript(recordPeerConnections);
      const page = await context.newPage();
      page.setDefaultTimeout(WAIT_MS);
      const g = { name, context, page, server, logs: [] };
      const log = (line) => {
        g.logs.push(`${new Date().toISOString().slice(11, 23)} ${line}`);
        if (g.logs.length > 300) g.logs.splice(0, 100);
        if (process.env.TANDEM_E2E_BROWSER_LOG) process.stderr.write(`[${name}] ${line}\n`);
      };
      page.on('console', (msg) => log(`console.${msg.type()}: ${msg.text()}`));
      page.on('pageerror', (err) => log(`pageerror: ${err.stack || err.message}`));
      page.on('requestfailed', (req) => log(`requestfailed: ${req.method()} ${req.url()} ${req.failure()?.errorText}`));
      page.on('crash', () => log('page crashed'));
      guests.add(g);
      g.close = async () => {
        guests.delete(g);
        await context.close().catch(() => {});
      };
      if (open) await page.goto(`${server.url}/`, { waitUntil: 'load' });
      return g;
    },
    async close() {
      if (closed) return;
      closed = true;
      for (const g of [...guests]) await g.close();
      await browser.close().catch(() => {});
      rmSync(userDataDir, { recursive: true, force: true });
    },
  };
}

/** A guest whose context is closed when the test `t` ends. */
export async function guestFor(t, b, server, opts) {
  const g = await b.guest(server, opts);
  t.after(() => g.close());
  return g;
}

/** Writes a PNG of the page to `<artifacts>/<name>.png` and returns its path. */
export async function screenshot(page, name) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const path = join(ARTIFACTS, `${name.replace(/[^A-Za-z0-9._-]+/g, '-')}.png`);
  await page.screenshot({ path, fullPage: false, animations: 'disabled', caret: 'hide' });
  return path;
}

// ---------------------------------------------------------------------------------------------
// Page state

/** The page's state as one line, for failure messages. */
export async function describe(g) {
  try {
    const s = await g.page.evaluate(() => {
      const q = (sel) => document.querySelector(sel);
      const attr = (sel, a) => q(sel)?.getAttribute(a) ?? '∅';
      const text = (sel) => (q(sel)?.textContent ?? '∅').trim().slice(0, 120);
      const msgs = [...document.querySelectorAll('#messages li.msg')].slice(-6).map((li) => {
        const r = li.querySelector('.receipt');
        // File messages (data-type file/voice) show as <type:name/state>.
        const body = li.dataset.type
          ? `<${li.dataset.type}:${li.querySelector('.file-name')?.textContent ?? ''}/${li.querySelector('.file')?.dataset.state ?? '?'}>`
          : (li.querySelector('.msg-text')?.textContent ?? '').slice(0, 30);
        return `${li.dataset.from}:${body}${r ? `[${r.dataset.status}]` : ''}`;
      });
      return {
        view: attr('#app', 'data-view'),
        conn: attr('#conn-status', 'data-state'),
        call: attr('#call', 'data-state'),
        partner: `${text('#partner-name')}/${attr('#partner-status', 'data-state')}`,
        me: text('#me-name'),
        notice: text('#notice'),
        error: text('#error'),
        messages: msgs,
        uploading: !!document.querySelector('#upload-progress:not([hidden])'),
        pcs: (window.__pcs || []).map((pc) => `${pc.connectionState}/${pc.iceConnectionState}/${pc.signalingState}`),
      };
    });
    return `${g.name}: ${JSON.stringify(s)}`;
  } catch (err) {
    return `${g.name}: (page not readable: ${err.message})`;
  }
}

/** The page's state and its last console lines, for failure messages. */
export async function report(g, lines = 25) {
  return `${await describe(g)}\n  last console/page events of ${g.name}:\n    ${g.logs.slice(-lines).join('\n    ') || '(none)'}`;
}

/**
 * Waits until `fn(arg)` (run in the page) is truthy. On timeout: a screenshot `<name>-timeout`
 * and an error with `what`, the page's state and its last console lines.
 */
export async function waitUntil(g, what, fn, arg, timeoutMs = WAIT_MS) {
  try {
    return await g.page.waitForFunction(fn, arg, { timeout: timeoutMs, polling: 100 });
  } catch (err) {
    let shot = '';
    try {
      shot = ` (screenshot ${await screenshot(g.page, `timeout-${g.name}-${what}`.slice(0, 80))})`;
    } catch {
      // page gone
    }
    throw new Error(`${g.name}: timed out after ${timeoutMs} ms waiting for ${what}${shot}: ${err.message.split('\n')[0]}\n${await report(g)}`);
  }
}

/** Waits until `selector`'s attribute `attr` is one of `values` (a string or a list). */
export function waitAttr(g, selector, attr, values, timeoutMs = WAIT_MS) {
  const list = Array.isArray(values) ? values : [values];
  return waitUntil(
    g,
    `${selector}[${attr}] in ${list.join('|')}`,
    ([sel, a, l]) => l.includes(document.querySelector(sel)?.getAttribute(a)),
    [selector, attr, list],
    timeoutMs,
  );
}

/** Waits for `#app[data-view=<view>]`. */
export const waitView = (g, view, timeoutMs) => waitAttr(g, '#app', 'data-view', view, timeoutMs);
/** Waits for `#call[data-state=<state>]` (a state or a list of states). */
export const waitCall = (g, state, timeoutMs) => waitAttr(g, '#call', 'data-state', state, timeoutMs);

/** Current value of an attribute (null when the element or attribute is missing). */
export function attr(g, selector, name) {
  return g.page.evaluate(([sel, a]) => document.querySelector(sel)?.getAttribute(a) ?? null, [selector, name]);
}

/** Trimmed text of an element (null when missing). */
export function text(g, selector) {
  return g.page.evaluate((sel) => document.querySelector(sel)?.textContent?.trim() ?? null, selector);
}

/** Whether an element is shown: present, without `hidden`, and rendered (not display:none etc.). */
export function shown(g, selector) {
  return g.page.evaluate((sel) => {
    const el = document.querySelector(sel);
    if (!el || el.hidden || el.closest('[hidden]')) return false;
    const st = getComputedStyle(el);
    return st.display !== 'none' && st.visibility !== 'hidden' && el.getClientRects().length > 0;
  }, selector);
}

/** Waits until `selector` is shown (see `shown`), or hidden when `want` is false. */
export function waitShown(g, selector, want = true, timeoutMs = WAIT_MS) {
  return waitUntil(
    g,
    `${selector} ${want ? 'shown' : 'hidden'}`,
    ([sel, w]) => {
      const el = document.querySelector(sel);
      let vis = false;
      if (el && !el.hidden && !el.closest('[hidden]')) {
        const st = getComputedStyle(el);
        vis = st.display !== 'none' && st.visibility !== 'hidden' && el.getClientRects().length > 0;
      }
      return vis === w;
    },
    [selector, want],
    timeoutMs,
  );
}

/** The messages in `#messages`: `[{ from, id, clientId, text, status }]`. */
export function messages(g) {
  return g.page.evaluate(() =>
    [...document.querySelectorAll('#messages li.msg')].map((li) => ({
      from: li.getAttribute('data-from'),
      id: li.getAttribute('data-id'),
      clientId: li.getAttribute('data-client-id'),
      text: (li.querySelector('.msg-text')?.textContent ?? '').trim(),
      status: li.querySelector('.receipt')?.getAttribute('data-status') ?? null,
    })),
  );
}

/** Waits until a message from `from` with exactly `content` is in `#messages`. */
export function waitMessage(g, from, content, timeoutMs = WAIT_MS) {
  return waitUntil(
    g,
    `a ${from} message ${JSON.stringify(content)}`,
    ([f, c]) =>
      [...document.querySelectorAll(`#messages li.msg[data-from="${f}"]`)].some(
        (li) => (li.querySelector('.msg-text')?.textContent ?? '').trim() === c,
      ),
    [from, content],
    timeoutMs,
  );
}

/**
 * Waits until my message `content` shows the receipt `status` (or a later one when `orLater`).
 * Resolves with the status seen.
 */
export async function waitReceipt(g, content, status, { orLater = false, timeoutMs = WAIT_MS } = {}) {
  const order = ['sending', 'sent', 'delivered', 'read'];
  const accepted = orLater ? order.slice(order.indexOf(status)) : [status];
  const handle = await waitUntil(
    g,
    `receipt ${accepted.join('|')} on my message ${JSON.stringify(content)}`,
    ([c, acc]) => {
      const li = [...document.querySelectorAll('#messages li.msg[data-from="me"]')].find(
        (m) => (m.querySelector('.msg-text')?.textContent ?? '').trim() === c,
      );
      const st = li?.querySelector('.receipt')?.getAttribute('data-status');
      return acc.includes(st) ? st : false;
    },
    [content, accepted],
    timeoutMs,
  );
  return handle.jsonValue();
}

/**
 * Watches the receipt of my message `content` in the page from now on (a MutationObserver that
 * also replays the old values of `data-status` changes, plus polling, so that fast transitions
 * are not missed). `stop()` resolves with the statuses seen, in order, without repeats.
 */
export async function watchReceipt(g, content) {
  const key = `r${Math.random().toString(16).slice(2)}`;
  await g.page.evaluate(
    ([c, k]) => {
      const seen = [];
      const push = (st) => {
        if (st && seen[seen.length - 1] !== st) seen.push(st);
      };
      const mine = (el) => {
        const li = el?.closest?.('#messages li.msg[data-from="me"]');
        return !!li && (li.querySelector('.msg-text')?.textContent ?? '').trim() === c;
      };
      const look = () => {
        const li = [...document.querySelectorAll('#messages li.msg[data-from="me"]')].find(
          (m) => (m.querySelector('.msg-text')?.textContent ?? '').trim() === c,
        );
        push(li?.querySelector('.receipt')?.getAttribute('data-status'));
      };
      const mo = new MutationObserver((records) => {
        for (const r of records) {
          if (r.type === 'attributes' && r.attributeName === 'data-status' && r.target.classList?.contains('receipt') && mine(r.target)) {
            push(r.oldValue);
          }
        }
        look();
      });
      mo.observe(document.body, { subtree: true, childList: true, attributes: true, attributeOldValue: true, characterData: true });
      const iv = setInterval(look, 20);
      window.__receiptWatch = window.__receiptWatch || {};
      window.__receiptWatch[k] = { seen, stop: () => { mo.disconnect(); clearInterval(iv); look(); } };
      look();
    },
    [content, key],
  );
  return {
    seen: () => g.page.evaluate((k) => [...window.__receiptWatch[k].seen], key),
    stop: () => g.page.evaluate((k) => { window.__receiptWatch[k].stop(); return [...window.__receiptWatch[k].seen]; }, key),
  };
}

/**
 * Fills the lobby's `#nickname` (only while it can be edited: once the guest exists the client
 * keeps its name) and clicks `#start`.
 */
export async function start(g, nickname) {
  await waitView(g, 'lobby');
  if (nickname !== undefined && (await g.page.isEditable('#nickname').catch(() => false)) && (await g.page.isVisible('#nickname'))) {
    await g.page.fill('#nickname', nickname);
  }
  await g.page.click('#start');
}

/** Polls `fn` (async, in node) until it returns a truthy value; fails with `await msg()` after `timeoutMs`. */
export async function until(fn, timeoutMs, msg) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms: ${await msg()}`);
    await sleep(250);
  }
}

/** Waits until `g` shows `name` as its partner. */
export const partnerIs = (g, name) =>
  waitUntil(g, `#partner-name = ${name}`, (n) => document.querySelector('#partner-name')?.textContent?.trim() === n, name);

/** Two guests open the page and start; resolves once both are in a chat with each other. */
export async function chatPair(b, server, t, names = [`Ann${Math.floor(Math.random() * 1e4)}`, `Bob${Math.floor(Math.random() * 1e4)}`]) {
  const A = await guestFor(t, b, server, { name: 'A' });
  const B = await guestFor(t, b, server, { name: 'B' });
  await pairGuests(A, B, names);
  return { A, B, names };
}

/** Guests `A` and `B` (pages already open, in any browsers) start, A first; resolves once they are in a chat with each other. */
export async function pairGuests(A, B, names) {
  await start(A, names[0]);
  await waitView(A, 'searching');
  await start(B, names[1]);
  await waitView(A, 'chat');
  await waitView(B, 'chat');
  await partnerIs(A, names[1]);
  await partnerIs(B, names[0]);
}

/** Types `content` into the composer and sends it with Enter. */
export async function send(g, content) {
  await g.page.fill('#message-input', content);
  await g.page.press('#message-input', 'Enter');
}

// ---------------------------------------------------------------------------------------------
// WebRTC statistics (through window.__pcs)

/**
 * getStats() of the page's newest open peer connection: `{ state, reports }` with `reports` a
 * list of plain stats objects (null when the page has no open peer connection).
 */
export async function pcStats(g) {
  return g.page.evaluate(async () => {
    const pcs = (window.__pcs || []).filter((pc) => pc.connectionState !== 'closed');
    const pc = pcs[pcs.length - 1];
    if (!pc) return null;
    const stats = await pc.getStats();
    const reports = [];
    stats.forEach((r) => reports.push({ ...r }));
    return { state: pc.connectionState, count: (window.__pcs || []).length, reports };
  });
}

/** The inbound-rtp report of `kind` with the most packets (undefined when none). */
export function inbound(stats, kind) {
  const list = (stats?.reports ?? []).filter((r) => r.type === 'inbound-rtp' && (r.kind ?? r.mediaType) === kind);
  return list.sort((x, y) => (y.packetsReceived ?? 0) - (x.packetsReceived ?? 0))[0];
}

/** The outbound-rtp report of `kind` with the most packets (undefined when none). */
export function outbound(stats, kind) {
  const list = (stats?.reports ?? []).filter((r) => r.type === 'outbound-rtp' && (r.kind ?? r.mediaType) === kind);
  return list.sort((x, y) => (y.packetsSent ?? 0) - (x.packetsSent ?? 0))[0];
}

/**
 * The selected candidate pair: transport.selectedCandidatePairId → candidate-pair → its local
 * and remote candidates. `{ pair, local, remote }` (fields undefined when missing).
 */
export function selectedPair(stats) {
  const byId = new Map((stats?.reports ?? []).map((r) => [r.id, r]));
  const transport = (stats?.reports ?? []).find((r) => r.type === 'transport' && r.selectedCandidatePairId);
  const pair = transport ? byId.get(transport.selectedCandidatePairId) : undefined;
  return {
    transport,
    pair,
    local: pair ? byId.get(pair.localCandidateId) : undefined,
    remote: pair ? byId.get(pair.remoteCandidateId) : undefined,
  };
}

/** A short summary of a stats snapshot for failure messages. */
export function summarize(stats) {
  if (!stats) return 'no open peer connection';
  const v = inbound(stats, 'video');
  const a = inbound(stats, 'audio');
  const { remote } = selectedPair(stats);
  return JSON.stringify({
    state: stats.state,
    pcs: stats.count,
    videoIn: v && { packets: v.packetsReceived, framesDecoded: v.framesDecoded, fps: v.framesPerSecond },
    audioIn: a && { packets: a.packetsReceived },
    videoOut: outbound(stats, 'video')?.packetsSent,
    audioOut: outbound(stats, 'audio')?.packetsSent,
    remote: remote && `${remote.address ?? remote.ip}:${remote.port}/${remote.protocol}`,
  });
}
