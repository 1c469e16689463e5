// Headless Chromium as a wss:// client of a uringws TLS echo server (scripts/tls-interop.sh).
//
// Usage: node tests/browser/tls_test.mjs wss://127.0.0.1:PORT/ CA.pem
//
// Drives Debian's /usr/bin/chromium through playwright-core, with the page served over plain
// HTTP from 127.0.0.1 (Chromium's Local Network Access checks block loopback WebSockets from a
// data: page; see browser_test.mjs). How Chromium is made to accept the test certificate:
//   nss     (default when `certutil`, Debian's libnss3-tools, is there) the test CA is added
//           as a trusted root to the NSS database of a throwaway profile ($HOME/.pki/nssdb):
//           Chromium then verifies the chain, the name (IP SAN 127.0.0.1) and the dates as
//           for any site.
//   spki    --ignore-certificate-errors-spki-list=<SHA-256 of the CA's SubjectPublicKeyInfo>:
//           errors are ignored for chains that contain the CA's key (and only those).
//   ignore  --ignore-certificate-errors: every certificate error is ignored.
// Checks: GET https://.../healthz as a page (Chromium offers ALPN h2 and http/1.1 for a
// navigation: the server must pick http/1.1), then in a page: a wss:// socket opens, a JSON
// text and 1 MiB of binary echo exactly, and ws.close(1000) is clean.
// Prints one `ok - ...` / `not ok - ...` line per check, then `N passed, N failed`.
//
// Environment:
//   UWS_CHROMIUM         browser executable (default /usr/bin/chromium)
//   UWS_CHROMIUM_TRUST   nss, spki or ignore (default: nss when certutil exists, else spki)
//   UWS_BROWSER_WATCHDOG_MS  hard limit for the whole run (default 90000)

import { chromium } from 'playwright-core';
import { execFileSync } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [, , url, caFile] = process.argv;
if (!url || !/^wss:\/\//.test(url) || !caFile) {
  console.error('usage: node tls_test.mjs wss://HOST:PORT/ CA.pem');
  process.exit(2);
}
const EXECUTABLE = process.env.UWS_CHROMIUM || '/usr/bin/chromium';
const WATCHDOG_MS = Number(process.env.UWS_BROWSER_WATCHDOG_MS || 90_000);
const STEP_MS = 20_000;

function hasCertutil() {
  try {
    execFileSync('certutil', ['-H'], { stdio: 'ignore' });
    return true;
  } catch (e) {
    return e.code !== 'ENOENT'; // `certutil -H` exits 1 after printing its help
  }
}
const TRUST = process.env.UWS_CHROMIUM_TRUST || (hasCertutil() ? 'nss' : 'spki');

let passed = 0;
let failed = 0;
let finished = false;
function report(ok, name, detail) {
  if (ok) {
    passed++;
    console.log(`ok - ${name}${detail ? ` (${detail})` : ''}`);
  } else {
    failed++;
    console.log(`not ok - ${name}: ${detail}`);
  }
}
function summaryAndExit(extra) {
  if (finished) return;
  finished = true;
  if (extra) report(false, extra.name, extra.detail);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);
}
async function check(name, fn) {
  let timer;
  try {
    const detail = await Promise.race([
      Promise.resolve().then(fn),
      new Promise((_, reject) => { timer = setTimeout(() => reject(new Error(`no result within ${STEP_MS} ms`)), STEP_MS); }),
    ]);
    report(true, name, detail);
    return true;
  } catch (e) {
    report(false, name, (e && e.message ? e.message : String(e)).split('\n')[0]);
    return false;
  } finally {
    clearTimeout(timer);
  }
}

// In the page: open a socket, send, wait for messages, close. Self-contained (serialized).
function installHelper() {
  const s = { ws: null, queue: [], waiters: [], closeEvent: null, closeWaiters: [] };
  window.__tls = {
    open(url, timeoutMs) {
      return new Promise((resolve, reject) => {
        const ws = new WebSocket(url);
        ws.binaryType = 'arraybuffer';
        s.ws = ws;
        const timer = setTimeout(() => reject(new Error(`onopen did not fire within ${timeoutMs} ms`)), timeoutMs);
        ws.onopen = () => { clearTimeout(timer); resolve(`protocol ${JSON.stringify(ws.protocol)}, extensions ${JSON.stringify(ws.extensions)}`); };
        ws.onmessage = (ev) => { const w = s.waiters.shift(); if (w) w(ev.data); else s.queue.push(ev.data); };
        ws.onclose = (ev) => {
          clearTimeout(timer);
          s.closeEvent = { code: ev.code, reason: ev.reason, wasClean: ev.wasClean };
          reject(new Error(`closed before onopen: code ${ev.code}, wasClean ${ev.wasClean} (the console line above says why)`));
          for (const w of s.closeWaiters.splice(0)) w(s.closeEvent);
        };
      });
    },
    next(timeoutMs) {
      if (s.queue.length) return Promise.resolve(s.queue.shift());
      if (s.closeEvent) return Promise.reject(new Error(`socket closed (code ${s.closeEvent.code})`));
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no message within ${timeoutMs} ms`)), timeoutMs);
        s.waiters.push((d) => { clearTimeout(t); resolve(d); });
      });
    },
    send(d) { s.ws.send(d); },
    close(timeoutMs) {
      if (s.closeEvent) return Promise.resolve(s.closeEvent);
      return new Promise((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`onclose did not fire within ${timeoutMs} ms`)), timeoutMs);
        s.closeWaiters.push((ev) => { clearTimeout(t); resolve(ev); });
        s.ws.close(1000, 'bye');
      });
    },
  };
}

async function main() {
  const watchdog = setTimeout(() => summaryAndExit({ name: 'watchdog', detail: `whole run exceeded ${WATCHDOG_MS} ms` }), WATCHDOG_MS);
  watchdog.unref();

  const pageServer = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end('<!doctype html><meta charset="utf-8"><title>uringws TLS test</title><p>uringws TLS test');
  });
  await new Promise((resolve, reject) => { pageServer.once('error', reject); pageServer.listen(0, '127.0.0.1', resolve); });
  const pageUrl = `http://127.0.0.1:${pageServer.address().port}/`;

  const profile = mkdtempSync(join(tmpdir(), 'uringws-chromium-tls-'));
  const args = ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-quic', `--disk-cache-dir=${join(profile, 'cache')}`];
  let trustDetail;
  const caPem = readFileSync(caFile);
  if (TRUST === 'nss') {
    const db = join(profile, '.pki', 'nssdb');
    mkdirSync(db, { recursive: true });
    execFileSync('certutil', ['-N', '-d', `sql:${db}`, '--empty-password']);
    execFileSync('certutil', ['-A', '-d', `sql:${db}`, '-t', 'C,,', '-n', 'uringws test CA', '-i', caFile]);
    trustDetail = 'test CA trusted through the profile\'s NSS database';
  } else if (TRUST === 'spki') {
    const spki = new X509Certificate(caPem).publicKey.export({ type: 'spki', format: 'der' });
    const hash = createHash('sha256').update(spki).digest('base64');
    args.push(`--ignore-certificate-errors-spki-list=${hash}`);
    trustDetail = `--ignore-certificate-errors-spki-list=${hash} (the test CA's key)`;
  } else if (TRUST === 'ignore') {
    args.push('--ignore-certificate-errors');
    trustDetail = '--ignore-certificate-errors';
  } else {
    throw new Error(`UWS_CHROMIUM_TRUST must be nss, spki or ignore, not ${TRUST}`);
  }

  let browser;
  try {
    const launched = await check('chromium launches', async () => {
      browser = await chromium.launch({
        executablePath: EXECUTABLE,
        headless: true,
        timeout: 30_000,
        args,
        env: { ...process.env, HOME: profile, XDG_CONFIG_HOME: join(profile, 'config'), XDG_CACHE_HOME: join(profile, 'cache') },
      });
      return `${EXECUTABLE} ${browser.version()}; ${trustDetail}`;
    });
    if (!launched) return;

    const httpsUrl = new URL('/healthz', url.replace(/^wss:/, 'https:')).href;
    await check(`chromium GET ${httpsUrl} (ALPN h2+http/1.1 offered)`, async () => {
      const p = await browser.newPage();
      try {
        const resp = await p.goto(httpsUrl, { timeout: 10_000 });
        const sec = await resp.securityDetails();
        const desc = sec ? `${sec.protocol}, subject ${sec.subjectName}, issuer ${sec.issuer}` : 'no security details';
        if (resp.status() !== 200) throw new Error(`status ${resp.status()}; ${desc}`);
        return `200; ${desc}`;
      } finally {
        await p.close();
      }
    });

    const page = await browser.newPage();
    page.on('pageerror', (e) => console.error(`# page error: ${e.message}`));
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') console.error(`# console ${m.type()}: ${m.text()}`);
    });
    await page.goto(pageUrl);
    await page.evaluate(installHelper);

    const opened = await check(`chromium WebSocket ${url} opens (page at ${pageUrl})`, () =>
      page.evaluate(({ url }) => window.__tls.open(url, 10_000), { url }));
    const need = () => { if (!opened) throw new Error('skipped: the socket never opened'); };

    await check('JSON text echoes exactly over wss', async () => {
      need();
      return page.evaluate(async () => {
        const text = JSON.stringify({ hello: 'world', n: [1, 2, 3], text: 'κόσμε 🎉' });
        window.__tls.send(text);
        const got = await window.__tls.next(10_000);
        if (got !== text) throw new Error(`echo differs: ${JSON.stringify(String(got).slice(0, 80))}`);
        JSON.parse(got);
        return `${text.length} UTF-16 units`;
      });
    });
    await check('1 MiB of binary echoes exactly over wss', async () => {
      need();
      return page.evaluate(async () => {
        const make = () => {
          const b = new Uint8Array(1 << 20);
          let x = 0x9e3779b9;
          for (let i = 0; i < b.length; i++) { x ^= x << 13; x >>>= 0; x ^= x >>> 17; x ^= x << 5; x >>>= 0; b[i] = x & 0xff; }
          return b;
        };
        window.__tls.send(make().buffer);
        const got = await window.__tls.next(15_000);
        if (!(got instanceof ArrayBuffer)) throw new Error(`expected an ArrayBuffer, got ${typeof got}`);
        const want = make();
        const recv = new Uint8Array(got);
        if (recv.length !== want.length) throw new Error(`length ${recv.length}, expected ${want.length}`);
        for (let i = 0; i < want.length; i++) if (recv[i] !== want[i]) throw new Error(`byte ${i} differs`);
        return `${recv.length} bytes, all equal`;
      });
    });
    await check("ws.close(1000) gives onclose 1000, wasClean true", async () => {
      need();
      const ev = await page.evaluate(() => window.__tls.close(10_000));
      const desc = `code ${ev.code}, reason ${JSON.stringify(ev.reason)}, wasClean ${ev.wasClean}`;
      if (ev.code !== 1000 || !ev.wasClean) throw new Error(desc);
      return desc;
    });
    await page.close();
  } finally {
    if (browser) await browser.close().catch(() => {});
    pageServer.closeAllConnections();
    pageServer.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

main().then(
  () => summaryAndExit(),
  (e) => summaryAndExit({ name: 'unexpected error', detail: (e && e.stack) || String(e) }),
);
