// The web client when things change under it: skipping to the next stranger (and being matched
// again), reloading the page in the middle of a chat (restored from sessionStorage, same partner,
// same messages), and losing the network (the partner sees "away", then "online" again).
// Selectors: web/README.md.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { serverFor } from '../harness.mjs';
import {
  launchBrowser, guestFor, chatPair, screenshot, start, waitView, waitUntil, waitAttr, waitShown, waitMessage, waitReceipt,
  messages, attr, report, send,
  partnerIs,
} from './browser.mjs';

let b;
before(async () => {
  b = await launchBrowser();
});
after(() => b?.close());


test('#next: both leave the chat, the skipper searches again and meets a third stranger', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { A, B, names } = await chatPair(b, server, t, ['Next A', 'Next B']);
  await send(A, 'see you');
  await waitMessage(B, 'partner', 'see you');

  await A.page.click('#next');
  await waitView(A, 'searching');
  // B is out of the chat too (back in the lobby, or searching again if the client does that).
  await waitView(B, ['lobby', 'searching']);
  if ((await attr(B, '#app', 'data-view')) === 'searching') {
    await B.page.click('#cancel-search');
    await waitView(B, 'lobby');
  }
  // A is still searching (A and B are never paired again right away): a third stranger meets A.
  assert.equal(await attr(A, '#app', 'data-view'), 'searching', `A should still be searching:\n${await report(A)}`);
  const C = await guestFor(t, b, server, { name: 'C' });
  await start(C, 'Next C');
  await waitView(C, 'chat');
  await waitView(A, 'chat');
  await partnerIs(A, 'Next C');
  await partnerIs(C, names[0]);
  // A fresh chat: nothing of the old one, and it works.
  const old = (await messages(A)).filter((m) => m.from !== 'system');
  assert.deepEqual(old, [], `the new chat should start empty, A shows ${JSON.stringify(old)}`);
  await send(C, 'hello A');
  await waitMessage(A, 'partner', 'hello A');
  await waitReceipt(C, 'hello A', 'read');
  assert.equal(await attr(B, '#app', 'data-view'), 'lobby', `B stays in the lobby:\n${await report(B)}`);
});

test('reload in the middle of a chat: same partner, the earlier messages are back, and the chat goes on', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { A, B, names } = await chatPair(b, server, t, ['Reload A', 'Reload B']);
  await send(A, 'before the reload (A)');
  await waitMessage(B, 'partner', 'before the reload (A)');
  await waitReceipt(A, 'before the reload (A)', 'read');
  await send(B, 'before the reload (B)');
  await waitMessage(A, 'partner', 'before the reload (B)');
  await waitReceipt(B, 'before the reload (B)', 'read');

  await A.page.reload({ waitUntil: 'load' });
  await waitView(A, 'chat');
  await partnerIs(A, names[1]);
  await waitUntil(A, `#me-name = ${names[0]}`, (n) => document.querySelector('#me-name')?.textContent?.trim() === n, names[0]);
  await waitAttr(A, '#conn-status', 'data-state', 'connected');
  await waitAttr(A, '#partner-status', 'data-state', 'online');
  const restored = (await messages(A)).filter((m) => m.from !== 'system').map((m) => `${m.from}:${m.text}`);
  assert.deepEqual(restored, ['me:before the reload (A)', 'partner:before the reload (B)'], `A's messages after the reload:\n${await report(A)}`);
  // B still sees A (a reload is quicker than the grace period) and the chat goes on both ways.
  await waitView(B, 'chat');
  await waitAttr(B, '#partner-status', 'data-state', 'online');
  await send(A, 'after the reload (A)');
  await waitMessage(B, 'partner', 'after the reload (A)');
  await waitReceipt(A, 'after the reload (A)', 'read');
  await send(B, 'after the reload (B)');
  await waitMessage(A, 'partner', 'after the reload (B)');
  const all = (await messages(A)).filter((m) => m.from !== 'system').map((m) => `${m.from}:${m.text}`);
  assert.deepEqual(all, [
    'me:before the reload (A)', 'partner:before the reload (B)', 'me:after the reload (A)', 'partner:after the reload (B)',
  ]);
  await screenshot(A.page, 'resilience-after-reload');
});

test('offline and back: the partner sees away then online; messages sent meanwhile arrive', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { A, B } = await chatPair(b, server, t, ['Offline A', 'Offline B']);
  await send(A, 'still here');
  await waitMessage(B, 'partner', 'still here');
  assert.equal(
    await A.page.evaluate(() => navigator.onLine),
    true,
    'Chromium believes it is offline before the test takes the network away: in a network namespace it needs a non-loopback link up (tests/e2e.rs adds a veth pair; see tests/e2e/README.md)',
  );

  await A.context.setOffline(true);
  await waitAttr(A, '#conn-status', 'data-state', ['offline', 'reconnecting']);
  await waitShown(A, '#retry', (await attr(A, '#conn-status', 'data-state')) === 'offline');
  await waitAttr(B, '#partner-status', 'data-state', 'away');
  await screenshot(A.page, 'resilience-offline');
  await screenshot(B.page, 'resilience-partner-away');
  // B writes while A is away: tandem queues it.
  await send(B, 'are you there?');
  await waitMessage(B, 'me', 'are you there?');

  await A.context.setOffline(false);
  await waitAttr(A, '#conn-status', 'data-state', 'connected');
  await waitShown(A, '#retry', false);
  await waitAttr(B, '#partner-status', 'data-state', 'online');
  await waitView(A, 'chat');
  await waitMessage(A, 'partner', 'are you there?');
  await waitReceipt(B, 'are you there?', 'read');
  await send(A, 'back again');
  await waitMessage(B, 'partner', 'back again');
  const mine = (await messages(A)).filter((m) => m.from === 'me').map((m) => m.text);
  assert.deepEqual(mine, ['still here', 'back again'], `A's own messages after coming back:\n${await report(A)}`);
});
