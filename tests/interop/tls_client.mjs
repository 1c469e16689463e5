// Node `ws` as a wss:// client of a uringws TLS echo server (scripts/tls-interop.sh).
//
//   node tls_client.mjs URL CA.pem [any|1.2|1.3]
//
// Trusts only CA.pem (the `ca` option), forces the TLS version when asked, and sends a JSON
// text, 1 MiB of binary, an empty text and an empty binary message and 50 small JSON texts;
// every echo must be exact, then a clean close (1000). Prints one line; exit 0 or 1.
// Set UWS_ALPN=1 to offer ALPN "http/1.1" (ws offers none by default) and require it back.
import { readFileSync } from 'node:fs';
import { WebSocket } from 'ws';

const [, , url, caFile, tls = 'any'] = process.argv;
if (!url || !caFile) {
  console.error('usage: node tls_client.mjs wss://HOST:PORT/ CA.pem [any|1.2|1.3]');
  process.exit(2);
}

function randomBytes(len) {
  const b = Buffer.alloc(len);
  let x = 0x9e3779b9;
  for (let i = 0; i < len; i++) {
    x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0;
    b[i] = x & 0xff;
  }
  return b;
}

const options = { ca: readFileSync(caFile), perMessageDeflate: false, maxPayload: 64 << 20 };
if (tls === '1.2') options.maxVersion = 'TLSv1.2';
else if (tls === '1.3') options.minVersion = 'TLSv1.3';
else if (tls !== 'any') { console.error(`unknown TLS version ${tls}`); process.exit(2); }
const alpn = process.env.UWS_ALPN === '1';
if (alpn) options.ALPNProtocols = ['http/1.1'];

const sent = [JSON.stringify({ hello: 'world', n: [1, 2, 3], text: 'κόσμε' }), randomBytes(1 << 20), '', Buffer.alloc(0)];
for (let i = 0; i < 50; i++) sent.push(JSON.stringify({ n: i, text: 'hello' }));

const fail = (why) => { console.log(`FAIL: node ws client: ${why}`); process.exit(1); };
const timer = setTimeout(() => fail('timed out after 20 s'), 20000);
const t0 = Date.now();
let got = 0;
let info = '';
let closeStart = 0;
const ws = new WebSocket(url, options);
ws.on('upgrade', (res) => {
  const s = res.socket;
  info = `${s.getProtocol()} (${s.getCipher().standardName}), ALPN ${s.alpnProtocol || 'none'}`;
  if (tls === '1.2' && s.getProtocol() !== 'TLSv1.2') fail(`negotiated ${s.getProtocol()} with maxVersion TLSv1.2`);
  if (tls === '1.3' && s.getProtocol() !== 'TLSv1.3') fail(`negotiated ${s.getProtocol()} with minVersion TLSv1.3`);
  if (alpn && s.alpnProtocol !== 'http/1.1') fail(`offered ALPN http/1.1, got ${s.alpnProtocol}`);
});
ws.on('open', () => {
  for (const m of sent) ws.send(m, { binary: Buffer.isBuffer(m) });
});
ws.on('message', (data, isBinary) => {
  const want = sent[got];
  const ok = Buffer.isBuffer(want) ? isBinary && Buffer.compare(data, want) === 0 : !isBinary && data.toString() === want;
  if (!ok) fail(`echo ${got} differs: sent ${Buffer.isBuffer(want) ? 'binary' : 'text'} of ${want.length}, got ${isBinary ? 'binary' : 'text'} of ${data.length}`);
  if (++got === sent.length) {
    closeStart = Date.now();
    ws.close(1000, 'done');
  }
});
ws.on('close', (code) => {
  clearTimeout(timer);
  if (got !== sent.length || code !== 1000) fail(`closed with ${code} after ${got} of ${sent.length} echoes`);
  console.log(`${got} messages echoed over ${info}, ${((closeStart - t0) / 1000).toFixed(2)} s; close ${code} in ${Date.now() - closeStart} ms`);
});
ws.on('error', (e) => fail(`${e.code || ''} ${e.message}`.trim()));
