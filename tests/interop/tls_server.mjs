// Node `ws` 8 over TLS (https.createServer) as an echo server, for uringws's client
// (scripts/tls-interop.sh, part f).
//
// Usage: node tls_server.mjs HOST:PORT CHAIN.pem KEY.pem
// Prints "listening on HOST:PORT" on stderr once it listens.
import fs from 'node:fs';
import https from 'node:https';
import { WebSocketServer } from 'ws';

const [addr, cert, key] = process.argv.slice(2);
if (!addr || !cert || !key) {
  console.error('usage: node tls_server.mjs HOST:PORT CHAIN.pem KEY.pem');
  process.exit(2);
}
const i = addr.lastIndexOf(':');
const host = addr.slice(0, i);
const port = Number(addr.slice(i + 1));
const server = https.createServer({ cert: fs.readFileSync(cert), key: fs.readFileSync(key) });
const wss = new WebSocketServer({ server, maxPayload: 64 << 20, perMessageDeflate: true });
wss.on('connection', (ws) => {
  ws.on('message', (data, isBinary) => ws.send(data, { binary: isBinary }));
});
server.listen(port, host, () => console.error(`listening on ${host}:${port} (Node ws over TLS)`));
