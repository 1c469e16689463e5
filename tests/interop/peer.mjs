// Node `ws` as an independent peer of uringws, with permessage-deflate (scripts/interop.sh).
//
//   node peer.mjs server MODE [PORT]  echo server on 127.0.0.1:PORT (default: a free port);
//                                     prints "PORT N"
//   node peer.mjs client URL MODE  echo check against a server; prints one line, exit 0 or 1
//
// MODE: "takeover" (ws's defaults: context takeover both ways unless the peer asks
// otherwise), "takeover-only" (the server refuses offers that ask it not to keep its context:
// serverNoContextTakeover false) or "no-context" (serverNoContextTakeover and
// clientNoContextTakeover true); all with threshold 0 (or UWS_THRESHOLD) so that every message
// is compressed, and level 1 (or UWS_ZLIB_LEVEL).
import { WebSocket, WebSocketServer } from 'ws';

const level = Number(process.env.UWS_ZLIB_LEVEL || 1);
function deflateOptions(mode) {
  const options = {
    zlibDeflateOptions: { level },
    threshold: Number(process.env.UWS_THRESHOLD || 0),
  };
  if (mode === 'no-context') {
    options.serverNoContextTakeover = true;
    options.clientNoContextTakeover = true;
  } else if (mode === 'takeover-only') {
    options.serverNoContextTakeover = false;
  } else if (mode !== 'takeover') {
    throw new Error(`unknown mode ${mode}`);
  }
  return options;
}

function jsonLike(size) {
  const rows = [];
  let n = 2;
  for (let i = 0; n < size; i++) {
    const r = JSON.stringify({ id: i, user: `user-${i % 97}`, text: 'hello room', ts: 1700000000 + i });
    rows.push(r);
    n += r.length + 1;
  }
  return `[${rows.join(',')}]`;
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

const [, , role, a, b] = process.argv;
if (role === 'server') {
  const wss = new WebSocketServer({ host: '127.0.0.1', port: Number(b || 0), perMessageDeflate: deflateOptions(a), maxPayload: 64 << 20 });
  wss.on('connection', (ws) => {
    ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
  });
  wss.on('listening', () => console.log(`PORT ${wss.address().port}`));
} else if (role === 'client') {
  const ws = new WebSocket(a, { perMessageDeflate: deflateOptions(b), maxPayload: 64 << 20 });
  const sent = [jsonLike(1 << 20), randomBytes(1 << 20), ''];
  for (let i = 0; i < 50; i++) sent.push(JSON.stringify({ n: i, text: 'hello' }));
  const fail = (why) => { console.error(`node client: ${why}`); process.exit(1); };
  const timer = setTimeout(() => fail('timed out'), 20000);
  let got = 0;
  ws.on('open', () => {
    if (!/^permessage-deflate/.test(ws.extensions)) fail(`extension not agreed: ${JSON.stringify(ws.extensions)}`);
    for (const m of sent) ws.send(m, { binary: Buffer.isBuffer(m) });
  });
  ws.on('message', (data, isBinary) => {
    const want = sent[got];
    const ok = Buffer.isBuffer(want) ? isBinary && Buffer.compare(data, want) === 0 : !isBinary && data.toString() === want;
    if (!ok) fail(`echo ${got} differs`);
    if (++got === sent.length) ws.close(1000, 'done');
  });
  ws.on('close', (code) => {
    clearTimeout(timer);
    if (got !== sent.length || code !== 1000) fail(`closed with ${code} after ${got} of ${sent.length} echoes`);
    console.log(`node ws client (${b}): ${got} messages echoed, extensions: ${ws.extensions}`);
  });
  ws.on('error', (e) => fail(e.message));
} else {
  console.error('usage: node peer.mjs server MODE | client URL MODE');
  process.exit(2);
}
