// Baseline for `tandem-load`: the Node socket.io stack doing the same relay work per message as
// tandem (ack, chat:message:sent, partner delivery with ack, delivered and read receipts). No
// limits, no validation beyond the shape: a lower bound on what the Node stack costs.
// Usage: node server.mjs <port>
import { createServer } from 'node:http';
import { randomBytes } from 'node:crypto';
import { Server } from 'socket.io';

const port = Number(process.argv[2] ?? 18091);
const guests = new Map(); // token -> { id, username, room, partner }
const hex = (n) => randomBytes(n).toString('hex');

const http = createServer((req, res) => {
  if (req.method === 'POST' && req.url === '/api/guest') {
    req.resume();
    req.on('end', () => {
      const token = hex(16);
      const g = { id: hex(16), username: `Guest-${hex(2)}`, room: null, partner: null, socket: null };
      guests.set(token, g);
      res.writeHead(201, { 'content-type': 'application/json' });
      res.end(JSON.stringify({ token, sessionId: g.id, username: g.username, expiresAt: new Date(Date.now() + 7200e3).toISOString() }));
    });
    return;
  }
  res.writeHead(404).end();
});

const io = new Server(http, { maxHttpBufferSize: 16384 });
let waiting = null;

io.use((socket, next) => {
  const g = guests.get(socket.handshake.auth?.token);
  if (!g) return next(new Error('unauthorized'));
  socket.data.g = g;
  next();
});

io.on('connection', (socket) => {
  const g = socket.data.g;
  g.socket = socket;
  socket.emit('connection:established', { sessionId: g.id, username: g.username, state: 'online' });
  socket.on('match:start', (_p, ack) => {
    socket.emit('match:searching', {});
    if (waiting && waiting !== g) {
      const other = waiting;
      waiting = null;
      const room = hex(16);
      g.room = other.room = room;
      g.partner = other;
      other.partner = g;
      other.socket.emit('match:found', { roomId: room, partner: { username: g.username } });
      socket.emit('match:found', { roomId: room, partner: { username: other.username } });
      ack?.({ ok: true, state: 'in_chat' });
    } else {
      waiting = g;
      ack?.({ ok: true, state: 'searching' });
    }
  });
  socket.on('chat:message', (p, ack) => {
    const partner = g.partner;
    if (!partner || typeof p?.content !== 'string') return ack?.({ ok: false, error: { code: 'not_in_chat' } });
    const id = hex(8);
    const timestamp = Date.now();
    const content = p.content.trim();
    ack?.({ ok: true, id, timestamp });
    socket.emit('chat:message:sent', { clientId: p.clientId, id, timestamp });
    partner.socket.timeout(10000).emit('chat:message', { id, roomId: g.room, type: 'text', content, timestamp, from: 'partner' }, (err) => {
      if (!err) socket.emit('chat:message:delivered', { id });
    });
  });
  socket.on('chat:message:read', (p, ack) => {
    ack?.({ ok: true });
    g.partner?.socket.emit('chat:message:read', { id: p?.id });
  });
  socket.on('disconnect', () => {
    if (waiting === g) waiting = null;
  });
});

http.listen(port, '127.0.0.1', () => console.log(`node baseline on 127.0.0.1:${port}`));
