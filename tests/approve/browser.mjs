// A headless Chromium for the approval-app test (tests/it/mfa_approve.rs),
// driven over the DevTools protocol through --remote-debugging-pipe: no
// npm packages, no debugging port.
//
//   node browser.mjs CHROMIUM ORIGIN CA_PEM
//
// Chromium trusts the test server's certificate by its public key
// (--ignore-certificate-errors-spki-list with the hashes of the server's
// chain and the CA), so the origin is a normal secure context: service
// workers and WebCrypto work as on a real site.
//
// Commands, one JSON object per line on stdin; one answer per line on
// stdout ({"ok": true, ...} or {"ok": false, "error": ...}):
//   {"cmd":"open","url":U}                      navigate, wait for load
//   {"cmd":"wait","expr":JS,"timeout_ms":N}     until JS is truthy; its value
//   {"cmd":"eval","expr":JS}                    its value (promises awaited)
//   {"cmd":"click","selector":S}                a real mouse click on S
//   {"cmd":"type","selector":S,"text":T}        replace S's value by typing
//   {"cmd":"grant","permissions":[...]}         grant permissions to ORIGIN
//   {"cmd":"log"}                               console, errors, CSP reports
//   {"cmd":"quit"}
import { spawn } from 'node:child_process';
import { createHash, X509Certificate } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';
import tls from 'node:tls';

const [chromiumPath, origin, caPath] = process.argv.slice(2);
if (!chromiumPath || !origin || !caPath) {
  console.error('usage: node browser.mjs CHROMIUM ORIGIN CA_PEM');
  process.exit(2);
}

const spkiHash = (der) => createHash('sha256').update(der).digest('base64');

/** SPKI hashes of the CA and of every certificate the server presents. */
async function spkiHashes() {
  const hashes = new Set([
    spkiHash(new X509Certificate(readFileSync(caPath)).publicKey.export({ type: 'spki', format: 'der' })),
  ]);
  const url = new URL(origin);
  await new Promise((resolve, reject) => {
    const socket = tls.connect(
      { host: url.hostname, port: Number(url.port || 443), rejectUnauthorized: false },
      () => {
        let cert = socket.getPeerCertificate(true);
        const seen = new Set();
        while (cert && cert.raw && !seen.has(cert.fingerprint256)) {
          seen.add(cert.fingerprint256);
          const key = new X509Certificate(cert.raw).publicKey.export({ type: 'spki', format: 'der' });
          hashes.add(spkiHash(key));
          cert = cert.issuerCertificate;
        }
        socket.end();
        resolve();
      },
    );
    socket.on('error', reject);
  });
  return [...hashes].join(',');
}

const profile = mkdtempSync(join(tmpdir(), 'portcullis-chromium-'));
const chromium = spawn(
  chromiumPath,
  [
    '--headless=new',
    '--remote-debugging-pipe',
    `--user-data-dir=${profile}`,
    `--ignore-certificate-errors-spki-list=${await spkiHashes()}`,
    '--no-sandbox', // the test suite runs as root
    '--no-first-run',
    '--no-default-browser-check',
    '--disable-gpu',
    '--disable-dev-shm-usage',
    '--disable-background-networking',
    '--disable-component-update',
    '--disable-sync',
    '--disable-extensions',
    '--password-store=basic',
    '--window-size=412,915', // a phone's screen
    'about:blank',
  ],
  { stdio: ['ignore', 'ignore', 'pipe', 'pipe', 'pipe'] },
);
let chromiumErr = '';
let quitting = false;
chromium.stderr.on('data', (d) => {
  chromiumErr = (chromiumErr + d).slice(-4000);
});
chromium.on('exit', (code) => {
  if (!quitting) {
    console.error(`chromium exited (${code}):\n${chromiumErr}`);
    process.exit(1);
  }
});

// ---- the protocol: NUL-terminated JSON messages over fds 3 (in) and 4 (out) ----

const toBrowser = chromium.stdio[3];
const fromBrowser = chromium.stdio[4];
let nextId = 1;
const calls = new Map();
const listeners = new Set();
let pending = '';
fromBrowser.on('data', (chunk) => {
  pending += chunk.toString('utf8');
  let end;
  while ((end = pending.indexOf('\0')) >= 0) {
    const msg = JSON.parse(pending.slice(0, end));
    pending = pending.slice(end + 1);
    if (msg.id && calls.has(msg.id)) {
      const { resolve, reject } = calls.get(msg.id);
      calls.delete(msg.id);
      if (msg.error) reject(new Error(`${msg.error.message} ${msg.error.data || ''}`.trim()));
      else resolve(msg.result);
    } else if (msg.method) {
      for (const l of listeners) l(msg);
    }
  }
});

function send(method, params = {}, sessionId = undefined) {
  const id = nextId++;
  const msg = { id, method, params };
  if (sessionId) msg.sessionId = sessionId;
  return new Promise((resolve, reject) => {
    calls.set(id, { resolve, reject });
    toBrowser.write(JSON.stringify(msg) + '\0');
  });
}

function nextEvent(method, sessionId, timeoutMs) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      listeners.delete(on);
      reject(new Error(`no ${method} within ${timeoutMs} ms`));
    }, timeoutMs);
    const on = (msg) => {
      if (msg.method === method && msg.sessionId === sessionId) {
        clearTimeout(timer);
        listeners.delete(on);
        resolve(msg.params);
      }
    };
    listeners.add(on);
  });
}

// ---- one page ----

const log = [];
const { targetId } = await send('Target.createTarget', { url: 'about:blank' });
const { sessionId } = await send('Target.attachToTarget', { targetId, flatten: true });
const page = (method, params) => send(method, params, sessionId);
listeners.add((msg) => {
  if (msg.sessionId !== sessionId) return;
  if (msg.method === 'Runtime.consoleAPICalled') {
    const text = msg.params.args.map((a) => a.value ?? a.description ?? '').join(' ');
    log.push({ kind: `console.${msg.params.type}`, text });
  } else if (msg.method === 'Runtime.exceptionThrown') {
    const d = msg.params.exceptionDetails;
    log.push({ kind: 'exception', text: (d.exception && d.exception.description) || d.text });
  } else if (msg.method === 'Log.entryAdded') {
    log.push({ kind: `log.${msg.params.entry.source}.${msg.params.entry.level}`, text: msg.params.entry.text });
  }
});
await page('Page.enable');
await page('Runtime.enable');
await page('Log.enable');
await page('Emulation.setDeviceMetricsOverride', { width: 412, height: 915, deviceScaleFactor: 2, mobile: true });

async function evaluate(expr) {
  const r = await page('Runtime.evaluate', { expression: expr, awaitPromise: true, returnByValue: true });
  if (r.exceptionDetails) {
    const d = r.exceptionDetails;
    throw new Error((d.exception && d.exception.description) || d.text);
  }
  return r.result.value;
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function waitFor(expr, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  let last = null;
  for (;;) {
    try {
      const value = await evaluate(expr);
      if (value) return value;
      last = value;
    } catch (e) {
      // A navigation in between destroys the context: look again.
      last = e.message;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${expr} (last: ${JSON.stringify(last)})`);
    await sleep(100);
  }
}

async function click(selector) {
  const box = await waitFor(
    `(() => { const e = document.querySelector(${JSON.stringify(selector)});
       if (!e || e.disabled || e.offsetParent === null) return null;
       e.scrollIntoView({ block: 'center' });
       const r = e.getBoundingClientRect(); return { x: r.x + r.width / 2, y: r.y + r.height / 2 }; })()`,
    10000,
  );
  for (const type of ['mousePressed', 'mouseReleased']) {
    await page('Input.dispatchMouseEvent', { type, x: box.x, y: box.y, button: 'left', clickCount: 1 });
  }
}

async function run(cmd) {
  switch (cmd.cmd) {
    case 'open': {
      const loaded = nextEvent('Page.loadEventFired', sessionId, 30000);
      const r = await page('Page.navigate', { url: cmd.url });
      if (r.errorText) throw new Error(`navigation failed: ${r.errorText}`);
      await loaded;
      return { url: await evaluate('location.href') };
    }
    case 'wait':
      return { value: await waitFor(cmd.expr, cmd.timeout_ms || 30000) };
    case 'eval':
      return { value: await evaluate(cmd.expr) };
    case 'click':
      await click(cmd.selector);
      return {};
    case 'type':
      await evaluate(`(() => { const e = document.querySelector(${JSON.stringify(cmd.selector)});
        e.focus(); e.select(); })()`);
      await page('Input.insertText', { text: cmd.text });
      return {};
    case 'grant':
      await send('Browser.grantPermissions', { origin, permissions: cmd.permissions });
      return {};
    case 'log':
      return { log };
    case 'quit':
      return { quit: true };
    default:
      throw new Error(`unknown command ${cmd.cmd}`);
  }
}

const lines = createInterface({ input: process.stdin });
for await (const line of lines) {
  if (!line.trim()) continue;
  let answer;
  try {
    const cmd = JSON.parse(line);
    answer = { ok: true, ...(await run(cmd)) };
  } catch (e) {
    answer = { ok: false, error: String(e && e.message ? e.message : e) };
  }
  process.stdout.write(JSON.stringify(answer) + '\n');
  if (answer.quit) break;
}
quitting = true;
await Promise.race([send('Browser.close').catch(() => {}), sleep(3000)]);
const exited = new Promise((resolve) => chromium.once('exit', resolve));
if (chromium.exitCode === null) chromium.kill();
await Promise.race([exited, sleep(5000)]);
try {
  rmSync(profile, { recursive: true, force: true, maxRetries: 5, retryDelay: 200 });
} catch (e) {
  // Chromium's helpers may still be writing: leave the temporary profile.
}
process.exit(0);
