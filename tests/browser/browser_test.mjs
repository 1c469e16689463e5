// Real-browser test of the uringws echo server (examples/hello_server.rs).
//
// Usage: node tests/browser/browser_test.mjs ws://127.0.0.1:PORT
//
// Drives Debian's /usr/bin/chromium (never a Playwright-downloaded browser) through
// playwright-core. Everything WebSocket-related runs inside the page with the browser's own
// `WebSocket`, so the handshake, masking, fragmentation and close handshake are Chromium's.
// Prints one `ok - ...` / `not ok - ...` line per check, then `N passed, N failed`, and exits
// non-zero if any check failed.
//
// The page is served over HTTP from 127.0.0.1 by this script (node:http), as a real deployment
// would serve it: Chromium's Local Network Access checks (on by default since Chromium 142)
// block WebSockets to loopback from a data: URL page (net::ERR_BLOCKED_BY_LOCAL_NETWORK_ACCESS_CHECKS),
// but not from a page whose own origin is on loopback. Its Origin header is then a real one.
//
// Environment:
//   UWS_CHROMIUM   browser executable (default /usr/bin/chromium)
//   UWS_BROWSER_WATCHDOG_MS   hard limit for the whole run (default 100000)

import { chromium } from 'playwright-core';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const url = process.argv[2];
if (!url || !/^wss?:\/\//.test(url)) {
  console.error('usage: node browser_test.mjs ws://HOST:PORT');
  process.exit(2);
}
const EXECUTABLE = process.env.UWS_CHROMIUM || '/usr/bin/chromium';
const WATCHDOG_MS = Number(process.env.UWS_BROWSER_WATCHDOG_MS || 100_000);
const STEP_MS = 15_000; // per-check limit (the in-page limits are shorter, for clearer messages)

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

function summaryAndExit(extraFailure) {
  if (finished) return;
  finished = true;
  if (extraFailure) report(false, extraFailure.name, extraFailure.detail);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);
}

function withTimeout(promise, ms, what) {
  let timer;
  return Promise.race([
    promise,
    new Promise((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no result within ${ms} ms`)), ms);
    }),
  ]).finally(() => clearTimeout(timer));
}

// Runs one check. `fn` returns a detail string on success and throws on failure.
async function check(name, fn) {
  try {
    const detail = await withTimeout(Promise.resolve().then(fn), STEP_MS, name);
    report(true, name, detail);
    return true;
  } catch (e) {
    report(false, name, (e && e.message ? e.message : String(e)).split('\n')[0]);
    return false;
  }
}

// Installed into each page: a small WebSocket client with a message queue. Must be
// self-contained (Playwright serializes it with Function.prototype.toString).
function installHelper() {
  const describe = (d) => {
    if (typeof d === 'string') return `string of ${d.length} UTF-16 units`;
    if (d instanceof ArrayBuffer) return `ArrayBuffer of ${d.byteLength} bytes`;
    if (typeof Blob !== 'undefined' && d instanceof Blob) return `Blob of ${d.size} bytes`;
    return `${Object.prototype.toString.call(d)}`;
  };
  const sockets = [];
  window.__uws = {
    describe,
    // Opens a socket; resolves with its index once `onopen` fires.
    open(url, timeoutMs) {
      return new Promise((resolve, reject) => {
        let ws;
        try {
          ws = new WebSocket(url);
        } catch (e) {
          reject(new Error(`new WebSocket threw: ${e.message}`));
          return;
        }
        ws.binaryType = 'arraybuffer';
        const s = { ws, queue: [], waiters: [], closeEvent: null, closeWaiters: [], errored: false };
        const idx = sockets.push(s) - 1;
        const timer = setTimeout(
          () => reject(new Error(`onopen did not fire within ${timeoutMs} ms (readyState ${ws.readyState})`)),
          timeoutMs,
        );
        ws.onopen = () => {
          clearTimeout(timer);
          resolve(idx);
        };
        ws.onerror = () => {
          s.errored = true;
        };
        ws.onmessage = (ev) => {
          const w = s.waiters.shift();
          if (w) w.resolve(ev.data);
          else s.queue.push(ev.data);
        };
        ws.onclose = (ev) => {
          clearTimeout(timer);
          s.closeEvent = { code: ev.code, reason: ev.reason, wasClean: ev.wasClean, errored: s.errored };
          const msg = `socket closed (code ${ev.code}, reason ${JSON.stringify(ev.reason)}, wasClean ${ev.wasClean}, onerror ${s.errored})`;
          reject(new Error(`${msg} before onopen`));
          for (const w of s.waiters.splice(0)) w.reject(new Error(`${msg} while waiting for a message`));
          for (const w of s.closeWaiters.splice(0)) w(s.closeEvent);
        };
      });
    },
    socket(idx) {
      const s = sockets[idx];
      if (!s) throw new Error('socket was never opened');
      return s;
    },
    send(idx, data) {
      const s = window.__uws.socket(idx);
      if (s.ws.readyState !== WebSocket.OPEN) {
        throw new Error(`cannot send: readyState is ${s.ws.readyState}` +
          (s.closeEvent ? ` (closed with code ${s.closeEvent.code})` : ''));
      }
      s.ws.send(data);
    },
    next(idx, timeoutMs) {
      const s = window.__uws.socket(idx);
      if (s.queue.length) return Promise.resolve(s.queue.shift());
      if (s.closeEvent) {
        return Promise.reject(new Error(`socket already closed (code ${s.closeEvent.code}) while waiting for a message`));
      }
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          const i = s.waiters.indexOf(w);
          if (i >= 0) s.waiters.splice(i, 1);
          reject(new Error(`no message received within ${timeoutMs} ms (readyState ${s.ws.readyState}, bufferedAmount ${s.ws.bufferedAmount})`));
        }, timeoutMs);
        const w = {
          resolve: (d) => { clearTimeout(timer); resolve(d); },
          reject: (e) => { clearTimeout(timer); reject(e); },
        };
        s.waiters.push(w);
      });
    },
    close(idx, code, reason, timeoutMs) {
      const s = window.__uws.socket(idx);
      if (s.closeEvent) return Promise.resolve(s.closeEvent);
      return new Promise((resolve, reject) => {
        const timer = setTimeout(
          () => reject(new Error(`onclose did not fire within ${timeoutMs} ms (readyState ${s.ws.readyState})`)),
          timeoutMs,
        );
        s.closeWaiters.push((ev) => { clearTimeout(timer); resolve(ev); });
        s.ws.close(code, reason);
      });
    },
  };
}

// Text echo in the page: sends `text`, expects the identical string back.
async function textEcho(page, idx, text) {
  return page.evaluate(async ({ idx, text }) => {
    const u = window.__uws;
    u.send(idx, text);
    const got = await u.next(idx, 10_000);
    if (typeof got !== 'string') throw new Error(`expected a string back, got ${u.describe(got)}`);
    if (got !== text) {
      throw new Error(`echo differs: sent ${JSON.stringify(text)} (${text.length} units), got ${JSON.stringify(got.slice(0, 80))} (${got.length} units)`);
    }
    return `${text.length} UTF-16 units, ${new TextEncoder().encode(text).length} bytes UTF-8`;
  }, { idx, text });
}

// Binary echo in the page: `len` deterministic pseudo-random bytes (xorshift32, `seed`).
async function binaryEcho(page, idx, len, seed) {
  return page.evaluate(async ({ idx, len, seed }) => {
    const u = window.__uws;
    const make = () => {
      const b = new Uint8Array(len);
      let x = seed >>> 0 || 1;
      for (let i = 0; i < len; i++) {
        x ^= x << 13; x >>>= 0;
        x ^= x >>> 17;
        x ^= x << 5; x >>>= 0;
        b[i] = x & 0xff;
      }
      return b;
    };
    const sent = make();
    u.send(idx, sent.buffer);
    const got = await u.next(idx, 10_000);
    if (!(got instanceof ArrayBuffer)) throw new Error(`expected an ArrayBuffer back, got ${u.describe(got)}`);
    if (got.byteLength !== len) throw new Error(`length differs: sent ${len} bytes, got ${got.byteLength}`);
    const expect = make(); // regenerate: `sent.buffer` may have been handed over to the socket
    const recv = new Uint8Array(got);
    let first = -1;
    let bad = 0;
    for (let i = 0; i < len; i++) {
      if (recv[i] !== expect[i]) {
        if (first < 0) first = i;
        bad++;
      }
    }
    if (bad) {
      throw new Error(`${bad} of ${len} bytes differ, first at offset ${first} (expected 0x${expect[first].toString(16)}, got 0x${recv[first].toString(16)})`);
    }
    return `${len} bytes, all equal`;
  }, { idx, len, seed });
}

const PAGE_HTML = '<!doctype html><meta charset="utf-8"><title>uringws browser test</title><p>uringws browser test</p>';
let pageUrl = null; // set in main() once the page server listens

async function newPage(browser) {
  const page = await browser.newPage();
  page.on('pageerror', (e) => console.error(`# page error: ${e.message}`));
  // Chromium explains WebSocket handshake failures only on the console.
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') console.error(`# console ${m.type()}: ${m.text()}`);
  });
  await page.goto(pageUrl);
  await page.evaluate(installHelper);
  return page;
}

async function main() {
  const watchdog = setTimeout(() => {
    summaryAndExit({ name: 'watchdog', detail: `whole run exceeded ${WATCHDOG_MS} ms` });
  }, WATCHDOG_MS);
  watchdog.unref();

  const pageServer = createServer((req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
    res.end(PAGE_HTML);
  });
  await new Promise((resolve, reject) => {
    pageServer.once('error', reject);
    pageServer.listen(0, '127.0.0.1', resolve);
  });
  pageUrl = `http://127.0.0.1:${pageServer.address().port}/`;

  const profile = mkdtempSync(join(tmpdir(), 'uringws-chromium-'));
  let browser;
  try {
    const launched = await check('chromium launches', async () => {
      browser = await chromium.launch({
        executablePath: EXECUTABLE,
        headless: true,
        timeout: 30_000,
        args: [
          '--headless',
          '--no-sandbox',
          '--disable-gpu',
          '--no-first-run',
          '--disable-background-networking',
          '--disable-component-update',
          '--disable-sync',
          '--disable-quic',
          `--disk-cache-dir=${join(profile, 'cache')}`,
        ],
        env: { ...process.env, HOME: profile, XDG_CONFIG_HOME: join(profile, 'config'), XDG_CACHE_HOME: join(profile, 'cache') },
      });
      return `${EXECUTABLE}, version ${browser.version()}`;
    });
    if (!launched) return;

    // Scenario 1: one socket, several messages, clean close.
    const page = await newPage(browser);
    let idx = null;
    await check('onopen fires', async () => {
      idx = await page.evaluate(({ url }) => window.__uws.open(url, 10_000), { url });
      return `${url} from a page at ${pageUrl}`;
    });
    const need = () => {
      if (idx === null) throw new Error('skipped: the socket never opened');
    };
    await check('permessage-deflate negotiated (ws.extensions)', async () => {
      need();
      const ext = await page.evaluate(({ idx }) => window.__uws.socket(idx).ws.extensions, { idx });
      if (!/^permessage-deflate/.test(ext)) throw new Error(`ws.extensions is ${JSON.stringify(ext)}`);
      return ext;
    });
    await check('1 MiB of compressible JSON text round-trips (compressed both ways)', async () => {
      need();
      return page.evaluate(async ({ idx }) => {
        const u = window.__uws;
        // The length is kept as rows are added: joining all rows at every step took seconds
        // (quadratic), enough on a loaded machine to miss the step's time limit.
        const rows = [];
        for (let i = 0, joined = 0; joined < (1 << 20); i++) {
          const row = JSON.stringify({ id: i, user: `user-${i % 97}`, text: 'hello room, κόσμε', n: [i, i * 2] });
          rows.push(row);
          joined += row.length + (i > 0 ? 1 : 0);
        }
        const text = `[${rows.join(',')}]`;
        u.send(idx, text);
        const got = await u.next(idx, 10_000);
        if (typeof got !== 'string') throw new Error(`expected a string back, got ${u.describe(got)}`);
        if (got !== text) throw new Error(`echo differs: sent ${text.length} units, got ${got.length}`);
        if (JSON.parse(got).length !== rows.length) throw new Error('the echo does not parse to the rows sent');
        return `${text.length} UTF-16 units, ${rows.length} JSON rows`;
      }, { idx });
    });
    await check('text "Hello, World!" echoes back as a string', async () => {
      need();
      return textEcho(page, idx, 'Hello, World!');
    });
    await check('1 MiB of random binary (ArrayBuffer) round-trips intact', async () => {
      need();
      return binaryEcho(page, idx, 1 << 20, 0x9e3779b9);
    });
    await check('JSON message round-trips and parses', async () => {
      need();
      return page.evaluate(async ({ idx }) => {
        const u = window.__uws;
        const text = JSON.stringify({ hello: 'world', n: [1, 2, 3] });
        u.send(idx, text);
        const got = await u.next(idx, 10_000);
        if (typeof got !== 'string') throw new Error(`expected a string back, got ${u.describe(got)}`);
        if (got !== text) throw new Error(`echo differs: sent ${text}, got ${JSON.stringify(got.slice(0, 80))}`);
        const v = JSON.parse(got);
        if (v.hello !== 'world' || !Array.isArray(v.n) || v.n.join(',') !== '1,2,3') {
          throw new Error(`parsed value differs: ${JSON.stringify(v)}`);
        }
        return got;
      }, { idx });
    });
    await check('non-ASCII text "κόσμε 🎉" round-trips', async () => {
      need();
      return textEcho(page, idx, 'κόσμε 🎉');
    });
    await check("ws.close(1000, 'bye') gives onclose code 1000, wasClean true", async () => {
      need();
      const ev = await page.evaluate(({ idx }) => window.__uws.close(idx, 1000, 'bye', 10_000), { idx });
      const desc = `code ${ev.code}, reason ${JSON.stringify(ev.reason)}, wasClean ${ev.wasClean}, onerror ${ev.errored}`;
      if (ev.code !== 1000 || ev.wasClean !== true) throw new Error(`onclose reported ${desc}`);
      return desc;
    });
    await page.close();

    // Scenario 2: a page is closed while its socket is open (with a large message in flight);
    // the server must keep serving.
    await check('page with an open socket is closed mid-transfer', async () => {
      const p = await newPage(browser);
      const i = await p.evaluate(({ url }) => window.__uws.open(url, 10_000), { url });
      await textEcho(p, i, 'before page close');
      await p.evaluate(({ i }) => {
        const big = new Uint8Array(4 << 20);
        for (let k = 0; k < big.length; k++) big[k] = (k * 31) & 0xff;
        window.__uws.send(i, big.buffer);
        window.__uws.send(i, 'trailing text');
      }, { i });
      await p.close();
      return 'echoed once, queued 4 MiB + text, then page.close()';
    });
    await new Promise((r) => setTimeout(r, 500));
    await check('server still serves after the page was closed', async () => {
      const p = await newPage(browser);
      try {
        const i = await p.evaluate(({ url }) => window.__uws.open(url, 10_000), { url });
        const detail = await textEcho(p, i, 'still there?');
        const ev = await p.evaluate(({ i }) => window.__uws.close(i, 1000, 'bye', 10_000), { i });
        if (ev.code !== 1000 || !ev.wasClean) {
          throw new Error(`echo ok, but close gave code ${ev.code}, wasClean ${ev.wasClean}`);
        }
        return `new socket opened, echo ${detail}, closed cleanly`;
      } finally {
        await p.close();
      }
    });
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
