// Test files shared by files.test.mjs and browser/files.test.mjs: real PNGs built here (zlib +
// CRC-32), a minimal PDF, an Ogg/Opus head, and things that must be refused (HTML, SVG).
import { deflateSync } from 'node:zlib';

function crc32(buf) {
  let c = ~0;
  for (const b of buf) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = (c >>> 1) ^ (0xedb88320 & -(c & 1));
  }
  return ~c >>> 0;
}

function chunk(type, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const td = Buffer.concat([Buffer.from(type, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(td));
  return Buffer.concat([len, td, crc]);
}

/** A valid w×h RGB PNG (a colour gradient); `pad` bytes of a text chunk make it larger. */
export function png(w = 8, h = 8, pad = 0) {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const rows = [];
  for (let y = 0; y < h; y++) {
    const row = Buffer.alloc(1 + w * 3); // filter byte 0: none
    for (let x = 0; x < w; x++) {
      row.set([(x * 255) / Math.max(1, w - 1), (y * 255) / Math.max(1, h - 1), 160], 1 + x * 3);
    }
    rows.push(row);
  }
  const parts = [Buffer.from('89504e470d0a1a0a', 'hex'), chunk('IHDR', ihdr)];
  if (pad > 0) parts.push(chunk('teXt', Buffer.alloc(pad, 0x61)));
  parts.push(chunk('IDAT', deflateSync(Buffer.concat(rows))), chunk('IEND', Buffer.alloc(0)));
  return Buffer.concat(parts);
}

/** A minimal one-page PDF. */
export const PDF = Buffer.from(
  '%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n2 0 obj << /Type /Pages /Kids [3 0 R] /Count 1 >> endobj\n' +
    '3 0 obj << /Type /Page /Parent 2 0 R /MediaBox [0 0 200 200] >> endobj\ntrailer << /Root 1 0 R >>\n%%EOF\n',
);

/** An Ogg page carrying an Opus head: sniffed as Ogg audio. */
export function ogg() {
  const b = Buffer.alloc(64);
  b.write('OggS', 0, 'ascii');
  b[5] = 0x02;
  b.write('OpusHead', 28, 'ascii');
  return b;
}

export const HTML = Buffer.from('<!DOCTYPE html><html><body><script>alert(1)</script></body></html>');
export const SVG = Buffer.from('<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>');
