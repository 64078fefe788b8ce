// The web client's lobby and the ways out of a chat: a refused nickname, stopping a search,
// interests (a shared one is matched first), leaving (`#leave`) and reporting (`#report` →
// `#report-confirm`). Selectors: web/README.md.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { serverFor } from '../harness.mjs';
import {
  launchBrowser, guestFor, chatPair, screenshot, start, waitView, waitUntil, waitShown, waitMessage, attr, text, report, send,
  partnerIs,
} from './browser.mjs';

let b;
before(async () => {
  b = await launchBrowser();
});
after(() => b?.close());


test('a nickname tandem would refuse shows an error and stays in the lobby; a valid one starts; #cancel-search stops', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const A = await guestFor(t, b, server, { name: 'A' });
  await start(A, 'no <html> here!');
  await waitUntil(A, 'a message in #error', () => (document.querySelector('#error')?.textContent ?? '').trim().length > 0);
  assert.equal(await attr(A, '#app', 'data-view'), 'lobby', `a refused nickname must not start a search:\n${await report(A)}`);
  await screenshot(A.page, 'lobby-invalid-nickname');

  await start(A, 'Valid Name');
  await waitView(A, 'searching');
  await waitUntil(A, '#error cleared', () => (document.querySelector('#error')?.textContent ?? '').trim() === '');
  await waitUntil(A, '#me-name = Valid Name', () => document.querySelector('#me-name')?.textContent?.trim() === 'Valid Name');
  await A.page.click('#cancel-search');
  await waitView(A, 'lobby');
  // Stopped for real: a second guest who starts now is not paired with A.
  const B = await guestFor(t, b, server, { name: 'B' });
  await start(B, 'Lonely B');
  await waitView(B, 'searching');
  await waitUntil(B, '#stat-searching = 1', () => (document.querySelector('#stat-searching')?.textContent ?? '').trim() === '1');
  assert.equal(await attr(A, '#app', 'data-view'), 'lobby', `A stopped searching and must not be paired:\n${await report(A)}`);
  assert.equal(await attr(B, '#app', 'data-view'), 'searching', `B has nobody to meet:\n${await report(B)}`);
});

test('interests: a stranger who shares one is matched first, even past someone who waited longer', async (t) => {
  const server = await serverFor(t, [], { media: true });
  // A and B just chatted, so they are not paired again and can both wait at once.
  const { A, B } = await chatPair(b, server, t, ['Chess A', 'Music B']);
  await A.page.click('#leave');
  await waitView(A, 'lobby');
  await waitView(B, ['lobby', 'searching']);
  if ((await attr(B, '#app', 'data-view')) === 'searching') {
    await B.page.click('#cancel-search');
    await waitView(B, 'lobby');
  }
  await A.page.fill('#interests', 'chess, go');
  await start(A, 'Chess A');
  await waitView(A, 'searching');
  await B.page.fill('#interests', 'Music');
  await start(B, 'Music B');
  await waitView(B, 'searching');
  await waitUntil(B, '#stat-searching = 2', () => (document.querySelector('#stat-searching')?.textContent ?? '').trim() === '2');

  const C = await guestFor(t, b, server, { name: 'C' });
  await C.page.fill('#interests', 'cooking,  music ');
  await start(C, 'Music C');
  await waitView(C, 'chat');
  await waitView(B, 'chat');
  await partnerIs(C, 'Music B');
  await partnerIs(B, 'Music C');
  assert.equal(await attr(A, '#app', 'data-view'), 'searching', `A shares nothing with C and waits on:\n${await report(A)}`);
});

test('#leave ends the chat for both; #report asks to confirm, then ends the chat for both', async (t) => {
  const server = await serverFor(t, [], { media: true });
  const { A, B } = await chatPair(b, server, t, ['Leave A', 'Leave B']);
  await send(A, 'bye');
  await waitMessage(B, 'partner', 'bye');
  await A.page.click('#leave');
  await waitView(A, ['lobby']);
  await waitView(B, ['lobby', 'searching']);
  await screenshot(B.page, 'lobby-partner-left');
  if ((await attr(B, '#app', 'data-view')) === 'searching') {
    await B.page.click('#cancel-search');
    await waitView(B, 'lobby');
  }

  // A new chat (with a third stranger: A and B are not paired again right away), then a report.
  const C = await guestFor(t, b, server, { name: 'C' });
  await start(A, 'Leave A');
  await waitView(A, 'searching');
  await start(C, 'Report C');
  await waitView(A, 'chat');
  await waitView(C, 'chat');
  await partnerIs(A, 'Report C');
  await C.page.click('#report');
  await waitShown(C, '#report-confirm');
  assert.equal(await attr(C, '#app', 'data-view'), 'chat', 'clicking #report alone must not end the chat');
  assert.equal(await attr(A, '#app', 'data-view'), 'chat', 'clicking #report alone must not end the chat');
  await screenshot(C.page, 'lobby-report-confirm');
  await C.page.click('#report-confirm');
  await waitView(C, ['lobby', 'searching']);
  await waitView(A, ['lobby', 'searching']);
  const notice = await text(C, '#notice');
  t.diagnostic(`C's notice after reporting: ${JSON.stringify(notice)}`);
});
