// The web client in a real browser: two strangers (two browser contexts, so two guest sessions)
// meet and chat. Lobby → searching → chat, partner names, typing indicator, receipts
// (sent → delivered → read), a reply, live statistics. Selectors: web/README.md.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { serverFor } from '../harness.mjs';
import {
  launchBrowser, guestFor, screenshot, start, waitView, waitUntil, waitShown, waitMessage, waitReceipt,
  watchReceipt, messages, text, attr, report,
} from './browser.mjs';

let b;
before(async () => {
  b = await launchBrowser();
});
after(() => b?.close());

test('two strangers chat in the browser: matching, names, typing, receipts sent → delivered → read, a reply, stats', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const suffix = Math.floor(Math.random() * 1e4);
  const nameA = `Ann ${suffix}`;
  const nameB = `Bob_${suffix}`;

  const A = await guestFor(t, b, server, { name: 'A' });
  await waitView(A, 'lobby');
  for (const sel of ['#nickname', '#start']) {
    assert.ok(await A.page.$(sel), `lobby has no ${sel}:\n${await report(A)}`);
  }
  await screenshot(A.page, 'chat-lobby');

  // A alone: searching.
  await start(A, nameA);
  await waitView(A, 'searching');
  await waitUntil(A, '#me-name = own nickname', (n) => document.querySelector('#me-name')?.textContent?.trim() === n, nameA);
  await waitUntil(A, '#conn-status connected', () => document.querySelector('#conn-status')?.getAttribute('data-state') === 'connected');
  await waitUntil(A, '#stat-searching ≥ 1', () => Number((document.querySelector('#stat-searching')?.textContent ?? '').replace(/[^\d]/g, '') || 0) >= 1);
  await screenshot(A.page, 'chat-searching');

  // B arrives: both in a chat with each other.
  const B = await guestFor(t, b, server, { name: 'B', viewport: 'desktop' });
  await start(B, nameB);
  await waitView(A, 'chat');
  await waitView(B, 'chat');
  await waitUntil(A, `#partner-name = ${nameB}`, (n) => document.querySelector('#partner-name')?.textContent?.trim() === n, nameB);
  await waitUntil(B, `#partner-name = ${nameA}`, (n) => document.querySelector('#partner-name')?.textContent?.trim() === n, nameA);
  assert.equal(await attr(A, '#partner-status', 'data-state'), 'online', `A's #partner-status:\n${await report(A)}`);
  assert.equal(await attr(B, '#partner-status', 'data-state'), 'online', `B's #partner-status:\n${await report(B)}`);
  // The statistics count both guests in a chat (realtime:stats, at most one per second).
  await waitUntil(B, '#stat-in-chat ≥ 2', () => Number((document.querySelector('#stat-in-chat')?.textContent ?? '').replace(/[^\d]/g, '') || 0) >= 2);
  const online = Number(((await text(B, '#stat-online')) ?? '').replace(/[^\d]/g, '') || 0);
  assert.ok(online >= 2, `#stat-online should count both guests, shows ${JSON.stringify(await text(B, '#stat-online'))}`);

  // A types: B sees the typing indicator.
  await waitShown(B, '#typing', false);
  const first = `Hello from ${nameA}, ${suffix}!`;
  await A.page.click('#message-input');
  await A.page.keyboard.type(first.slice(0, 8), { delay: 30 });
  await waitShown(B, '#typing', true);

  // A sends with Enter: the receipt goes sent → delivered → read (B's page shows the message).
  const watch = await watchReceipt(A, first);
  await A.page.fill('#message-input', first);
  await A.page.press('#message-input', 'Enter');
  await waitMessage(A, 'me', first);
  await waitMessage(B, 'partner', first);
  await waitReceipt(A, first, 'read');
  const seen = await watch.stop();
  t.diagnostic(`A's receipt went ${seen.join(' → ')}`);
  const order = ['sending', 'sent', 'delivered', 'read'];
  const ranks = seen.map((s) => order.indexOf(s));
  assert.ok(ranks.every((r) => r >= 0), `unknown receipt status among ${JSON.stringify(seen)}`);
  assert.ok(ranks.every((r, i) => i === 0 || r > ranks[i - 1]), `receipt statuses out of order: ${JSON.stringify(seen)}`);
  for (const s of ['sent', 'delivered', 'read']) {
    assert.ok(seen.includes(s), `A's receipt never showed "${s}" (seen ${JSON.stringify(seen)})`);
  }
  // The composer is cleared and B's typing indicator goes away once the message is there.
  assert.equal(await A.page.inputValue('#message-input'), '', 'the composer should be empty after sending');
  await waitShown(B, '#typing', false);

  // The same message on both screens, with tandem's id.
  const mineA = (await messages(A)).find((m) => m.from === 'me' && m.text === first);
  const theirsB = (await messages(B)).find((m) => m.from === 'partner' && m.text === first);
  assert.ok(mineA?.id, `A's message has no data-id: ${JSON.stringify(mineA)}`);
  assert.ok(mineA?.clientId, `A's message has no data-client-id: ${JSON.stringify(mineA)}`);
  assert.equal(theirsB?.id, mineA.id, 'both screens must carry tandem\'s message id in data-id');

  // B replies with the #send button: A gets it, B's receipt ends at read.
  const reply = `Hi ${nameA}, ${nameB} here.`;
  await B.page.fill('#message-input', reply);
  await B.page.click('#send');
  await waitMessage(A, 'partner', reply);
  await waitReceipt(B, reply, 'read');
  // Only one copy of each message on each side, in order.
  const textsA = (await messages(A)).filter((m) => m.from !== 'system').map((m) => `${m.from}:${m.text}`);
  const textsB = (await messages(B)).filter((m) => m.from !== 'system').map((m) => `${m.from}:${m.text}`);
  assert.deepEqual(textsA, [`me:${first}`, `partner:${reply}`]);
  assert.deepEqual(textsB, [`partner:${first}`, `me:${reply}`]);
  await screenshot(A.page, 'chat-chat');
  await screenshot(B.page, 'chat-chat-desktop');
});

test('Shift+Enter makes a new line; a message of only spaces is not sent', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const A = await guestFor(t, b, server, { name: 'A' });
  const B = await guestFor(t, b, server, { name: 'B' });
  await start(A, 'Lines A');
  await waitView(A, 'searching');
  await start(B, 'Lines B');
  await waitView(A, 'chat');
  await waitView(B, 'chat');

  await A.page.fill('#message-input', '   ');
  await A.page.press('#message-input', 'Enter');
  await A.page.click('#message-input');
  await A.page.keyboard.press('Control+A');
  await A.page.keyboard.type('line one');
  await A.page.keyboard.press('Shift+Enter');
  await A.page.keyboard.type('line two');
  assert.equal(await A.page.inputValue('#message-input'), 'line one\nline two', 'Shift+Enter should insert a new line');
  await A.page.keyboard.press('Enter');
  await waitUntil(
    B,
    'the two-line message',
    () => [...document.querySelectorAll('#messages li.msg[data-from="partner"] .msg-text')].some((el) => el.textContent.includes('line one') && el.textContent.includes('line two')),
  );
  await waitReceipt(A, 'line one\nline two', 'read', { orLater: true }).catch(async () => {
    // .textContent keeps the newline; a client rendering <br> would not match exactly.
    await waitUntil(A, 'read receipt on the two-line message', () => document.querySelector('#messages li.msg[data-from="me"] .receipt')?.getAttribute('data-status') === 'read');
  });
  const fromA = (await messages(B)).filter((m) => m.from === 'partner');
  assert.equal(fromA.length, 1, `only the two-line message should reach B (the blank one must not be sent): ${JSON.stringify(fromA)}`);
});
