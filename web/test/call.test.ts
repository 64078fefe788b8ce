import { test } from 'node:test';
import assert from 'node:assert/strict';
import { IDLE, canStart, describeCall, isActive, mediaWanted, reduceCall, type CallInput, type CallView } from '../src/call';

const run = (inputs: CallInput[], from: CallView = IDLE): CallView => inputs.reduce(reduceCall, from);

test('outgoing call: calling → connecting → connected → ended', () => {
  let v = reduceCall(IDLE, { type: 'request', video: true });
  assert.equal(v.state, 'calling');
  assert.equal(v.outgoing, true);
  assert.equal(mediaWanted(v), false);
  v = reduceCall(v, { type: 'accepted' });
  assert.equal(v.state, 'connecting');
  assert.equal(mediaWanted(v), true);
  v = reduceCall(v, { type: 'media', state: 'connected' });
  assert.equal(v.state, 'connected');
  assert.equal(describeCall(v), 'Video call: connected');
  v = reduceCall(v, { type: 'ended', reason: 'hangup' });
  assert.equal(v.state, 'ended');
  assert.equal(isActive(v), false);
  assert.equal(canStart(v), true);
  assert.deepEqual(reduceCall(v, { type: 'clear' }), IDLE);
});

test('incoming call rings; a reject ends it', () => {
  const v = run([{ type: 'incoming', video: false }]);
  assert.equal(v.state, 'ringing');
  assert.equal(v.outgoing, false);
  assert.equal(describeCall(v), 'Incoming voice call');
  const r = reduceCall(v, { type: 'ended', reason: 'rejected' });
  assert.equal(r.state, 'ended');
  assert.equal(describeCall(r), 'You declined the call.');
  const r2 = run([{ type: 'request', video: false }, { type: 'ended', reason: 'rejected' }]);
  assert.equal(describeCall(r2), 'The stranger declined the call.');
});

test('ringing timeout reads as no answer / missed', () => {
  assert.equal(describeCall(run([{ type: 'request', video: true }, { type: 'ended', reason: 'timeout' }])), 'No answer.');
  assert.equal(describeCall(run([{ type: 'incoming', video: true }, { type: 'ended', reason: 'timeout' }])), 'Missed call.');
});

test('failed and media errors end in failed', () => {
  const base: CallInput[] = [{ type: 'incoming', video: true }, { type: 'accepted' }];
  assert.equal(run([...base, { type: 'ended', reason: 'failed' }]).state, 'failed');
  assert.equal(run([...base, { type: 'ended', reason: 'media' }]).state, 'failed');
});

test('a lost media path goes back to connecting, not failed', () => {
  const v = run([{ type: 'incoming', video: true }, { type: 'accepted' }, { type: 'media', state: 'connected' }]);
  for (const s of ['disconnected', 'failed', 'connecting'] as RTCPeerConnectionState[]) {
    assert.equal(reduceCall(v, { type: 'media', state: s }).state, 'connecting');
  }
});

test('out-of-order inputs change nothing', () => {
  // Nothing to accept, no media before acceptance, no second call while one is active.
  assert.equal(reduceCall(IDLE, { type: 'accepted' }), IDLE);
  assert.equal(reduceCall(IDLE, { type: 'media', state: 'connected' }), IDLE);
  assert.equal(reduceCall(IDLE, { type: 'ended', reason: 'hangup' }), IDLE);
  const calling = reduceCall(IDLE, { type: 'request', video: true });
  assert.equal(reduceCall(calling, { type: 'media', state: 'connected' }), calling);
  assert.equal(reduceCall(calling, { type: 'incoming', video: false }), calling);
  assert.equal(reduceCall(calling, { type: 'request', video: false }), calling);
  const connected = run([{ type: 'accepted' }, { type: 'media', state: 'connected' }], calling);
  assert.equal(reduceCall(connected, { type: 'accepted' }), connected);
  assert.equal(reduceCall(connected, { type: 'clear' }), connected);
  const ended = reduceCall(connected, { type: 'ended', reason: 'hangup' });
  assert.equal(reduceCall(ended, { type: 'ended', reason: 'failed' }), ended);
});

test('resume after a reconnect follows the server', () => {
  // After a reload the page is idle; the server says the call is accepted: connect again.
  const v = reduceCall(IDLE, { type: 'resume', call: { state: 'connected', video: true } });
  assert.equal(v.state, 'connecting');
  assert.equal(v.video, true);
  assert.equal(mediaWanted(v), true);
  assert.equal(reduceCall(IDLE, { type: 'resume', call: { state: 'ringing', video: false } }).state, 'ringing');
  assert.equal(reduceCall(IDLE, { type: 'resume', call: { state: 'calling', video: false } }).state, 'calling');
  // The call is gone on the server: an active one ends as lost; idle stays idle.
  const active = run([{ type: 'incoming', video: true }, { type: 'accepted' }]);
  const lost = reduceCall(active, { type: 'resume', call: null });
  assert.equal(lost.state, 'ended');
  assert.equal(describeCall(lost), 'The call ended while you were away.');
  assert.equal(reduceCall(IDLE, { type: 'resume', call: null }), IDLE);
  assert.equal(reduceCall(IDLE, { type: 'resume', call: { state: 'weird', video: true } }), IDLE);
});

test('every reachable state has a text; idle has none', () => {
  assert.equal(describeCall(IDLE), '');
  const states = [
    run([{ type: 'request', video: false }]),
    run([{ type: 'incoming', video: false }]),
    run([{ type: 'incoming', video: false }, { type: 'accepted' }]),
    run([{ type: 'incoming', video: false }, { type: 'accepted' }, { type: 'media', state: 'connected' }]),
    run([{ type: 'incoming', video: false }, { type: 'ended', reason: 'partner_left' }]),
    run([{ type: 'incoming', video: false }, { type: 'accepted' }, { type: 'ended', reason: 'failed' }]),
  ];
  for (const s of states) assert.notEqual(describeCall(s), '', s.state);
});
