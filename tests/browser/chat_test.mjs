// Real-browser test of the chat (examples/chat.rs, run as `uringws chat`): two Chromium pages
// in one room, each on its own server process, the two processes sharing one Redis; then Redis
// stopped for 5 s and restarted while the pages chat.
//
// Usage: node tests/browser/chat_test.mjs UWS_BIN SCREENSHOT.png
//
// Starts Debian's redis-server on a free port and two `UWS_BIN chat --broker` processes, and
// drives the chat page each serves (GET /) with clicks and typing, as a person would. Prints
// one `ok - ...` / `not ok - ...` line per check, then `N passed, N failed`; exits non-zero if
// any check failed. Saves a screenshot of the first page at the end.

import { chromium } from 'playwright-core';
import { spawn, execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const [BIN, SHOT] = process.argv.slice(2);
if (!BIN || !SHOT) {
  console.error('usage: node chat_test.mjs UWS_BIN SCREENSHOT.png');
  process.exit(2);
}
const EXECUTABLE = process.env.UWS_CHROMIUM || '/usr/bin/chromium';
const STEP_MS = 20_000;

let passed = 0;
let failed = 0;
const children = [];

function report(ok, name, detail) {
  if (ok) passed++;
  else failed++;
  console.log(ok ? `ok - ${name}${detail ? ` (${detail})` : ''}` : `not ok - ${name}: ${detail}`);
}

async function check(name, fn) {
  let timer;
  try {
    const detail = await Promise.race([
      Promise.resolve().then(fn),
      new Promise((_, reject) => {
        timer = setTimeout(() => reject(new Error(`no result within ${STEP_MS} ms`)), STEP_MS);
      }),
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

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function freePort() {
  const s = createServer();
  await new Promise((r) => s.listen(0, '127.0.0.1', r));
  const { port } = s.address();
  await new Promise((r) => s.close(r));
  return port;
}

function startRedis(port) {
  const p = spawn('redis-server', ['--bind', '127.0.0.1', '--port', String(port), '--save', '', '--appendonly', 'no'], {
    stdio: 'ignore',
  });
  children.push(p);
  return p;
}

function redis(port, ...args) {
  return execFileSync('redis-cli', ['-p', String(port), ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
}

async function waitFor(what, cond, ms = 15_000) {
  const end = Date.now() + ms;
  for (;;) {
    try {
      if (await cond()) return;
    } catch {
      // not yet
    }
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(50);
  }
}

// Starts `uringws chat` on a free port; resolves with its address once it listens.
function startChat(redisPort) {
  const p = spawn(BIN, ['chat', '--addr', '127.0.0.1:0', '--threads', '2', '--broker', `redis://127.0.0.1:${redisPort}`], {
    stdio: ['ignore', 'ignore', 'pipe'],
    env: { ...process.env, RUST_LOG: 'warn' },
  });
  children.push(p);
  return new Promise((resolve, reject) => {
    let err = '';
    p.stderr.on('data', (d) => {
      err += d;
      const m = /listening on http:\/\/([0-9.:]+)\//.exec(err);
      if (m) resolve(m[1]);
    });
    p.on('exit', (code) => reject(new Error(`uringws chat exited (${code}): ${err}`)));
  });
}

async function stats(addr) {
  const r = await fetch(`http://${addr}/stats`);
  return r.json();
}

// The chat log of a page, as the person sees it.
const logOf = (page) => page.$$eval('#log li', (lis) => lis.map((li) => li.textContent));
const sees = (page, text) => waitFor(`"${text}" on the page`, async () => (await logOf(page)).includes(text));

async function say(page, text) {
  await page.fill('#text', text);
  await page.click('#send');
}

async function main() {
  const redisPort = await freePort();
  startRedis(redisPort);
  await waitFor('redis', () => redis(redisPort, 'ping') === 'PONG');
  const [addrA, addrB] = await Promise.all([startChat(redisPort), startChat(redisPort)]);
  await waitFor('both brokers connected', async () => (await stats(addrA)).connected && (await stats(addrB)).connected);

  const profile = mkdtempSync(join(tmpdir(), 'uringws-chat-chromium-'));
  const browser = await chromium.launch({
    executablePath: EXECUTABLE,
    headless: true,
    timeout: 30_000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-quic'],
    env: { ...process.env, HOME: profile },
  });
  try {
    const a = await (await browser.newContext({ viewport: { width: 760, height: 640 } })).newPage();
    const b = await (await browser.newContext({ viewport: { width: 760, height: 640 } })).newPage();
    for (const p of [a, b]) p.on('pageerror', (e) => console.error(`# page error: ${e.message}`));

    await check('each page loads from its own server process and connects with subprotocol chat', async () => {
      await a.goto(`http://${addrA}/`);
      await b.goto(`http://${addrB}/`);
      for (const p of [a, b]) await waitFor('connected', async () => (await p.textContent('#status')) === 'connected (chat)');
      return `${addrA} and ${addrB}`;
    });
    await check('Ann (process A) and Bob (process B) join the lobby and see each other join', async () => {
      await a.fill('#name', 'Ann');
      await a.click('#join');
      await sees(a, 'Ann joined lobby');
      // Process A is subscribed on Redis now; B subscribes when Bob joins.
      await b.fill('#name', 'Bob');
      await b.click('#join');
      await sees(b, 'Bob joined lobby');
      await sees(a, 'Bob joined lobby');
      await waitFor('both processes subscribed on Redis', () => redis(redisPort, 'pubsub', 'numsub', 'uringws:room:lobby').endsWith('2'));
      return 'join notices crossed processes';
    });
    await check('messages cross processes both ways, each seen once', async () => {
      await say(a, 'Hello from process A');
      await sees(b, 'Ann: Hello from process A');
      await sees(a, 'Ann: Hello from process A');
      await say(b, 'Hi Ann, Bob here on process B');
      await sees(a, 'Bob: Hi Ann, Bob here on process B');
      const log = await logOf(a);
      const n = log.filter((l) => l === 'Ann: Hello from process A').length;
      if (n !== 1) throw new Error(`seen ${n} times`);
      return `${log.length} lines on Ann's page`;
    });
    await check('Redis stopped for 5 s: each process keeps serving its own page, then delivery resumes', async () => {
      redis(redisPort, 'shutdown', 'nosave');
      const stopped = Date.now();
      await waitFor('both brokers see the outage', async () => !(await stats(addrA)).connected && !(await stats(addrB)).connected);
      await say(a, 'said during the outage');
      await sees(a, 'Ann: said during the outage'); // local delivery goes on
      await sleep(Math.max(0, 5000 - (Date.now() - stopped)));
      const bLog = await logOf(b);
      if (bLog.includes('Ann: said during the outage')) throw new Error('crossed without Redis?');
      startRedis(redisPort);
      const restarted = Date.now();
      await waitFor('both reconnected and resubscribed', async () => (await stats(addrA)).connected && (await stats(addrB)).connected
        && redis(redisPort, 'pubsub', 'numsub', 'uringws:room:lobby').endsWith('2'));
      const back = Date.now() - restarted;
      await say(a, 'back after the restart');
      await sees(b, 'Ann: back after the restart');
      await say(b, 'welcome back');
      await sees(a, 'Bob: welcome back');
      const [sa, sb] = [await stats(addrA), await stats(addrB)];
      if (sa.publish_lost !== 1 || sb.missed !== 1) throw new Error(`A ${JSON.stringify(sa)}, B ${JSON.stringify(sb)}`);
      if (sa.duplicates + sb.duplicates !== 0) throw new Error('duplicates');
      return `resubscribed ${back} ms after the restart; A lost 1 publish, B counted 1 missed, no duplicates`;
    });
    await check('a malformed message gets an error and the page stays connected', async () => {
      await b.evaluate(() => ws.send('{"type":"shout"}'));
      await waitFor('error line', async () => (await logOf(b)).some((l) => l.startsWith('error: ')));
      await say(b, 'still here');
      await sees(a, 'Bob: still here');
      return 'error shown, chat goes on';
    });
    await check('Bob leaves and Ann sees it', async () => {
      await b.click('#leave');
      await sees(b, 'Bob left lobby');
      await sees(a, 'Bob left lobby');
      return 'leave notice crossed processes';
    });
    await check('screenshot of the chat page', async () => {
      await a.screenshot({ path: SHOT });
      return SHOT;
    });
  } finally {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

const watchdog = setTimeout(() => {
  report(false, 'watchdog', 'the whole run exceeded 150 s');
  finish();
}, 150_000);

function finish() {
  clearTimeout(watchdog);
  for (const c of children) c.kill('SIGKILL');
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed === 0 && passed > 0 ? 0 : 1);
}

main().then(finish, (e) => {
  report(false, 'chat test', e && e.message ? e.message : String(e));
  finish();
});
