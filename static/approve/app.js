// Portcullis: the browser approval app, served as /approve/app.js for the
// pages /approve and /mfa/enroll (allowed by their CSP: script-src 'self',
// connect-src 'self'; no inline script, no markup built from strings).
//
// - Enrollment (/mfa/enroll#TOKEN): the token is read from the fragment
//   (never sent in a URL) and dropped from the address bar at once. The app
//   makes a non-extractable P-256 key with WebCrypto, keeps the CryptoKey in
//   IndexedDB, optionally subscribes to Web Push with the server's VAPID key,
//   and registers the public key (raw point, base64url) with
//   POST /api/mfa/enroll.
// - Approving (/approve): signed long polls of GET /api/mfa/challenges list
//   what waits for an answer; Approve / Deny / "This wasn't me" (or a number,
//   for number matching) POST a decision signed separately.
//
// Requests are signed exactly as the server's mfa::device::request_message
// and decision_message expect: ECDSA P-256 SHA-256, the raw r || s form
// WebCrypto produces, base64url without padding.
'use strict';
(function () {
  const DB_NAME = 'portcullis-approve';
  const DB_STORE = 'device';
  const DB_KEY = 'current';
  const ENROLL_PATH = '/mfa/enroll';
  const APP_PATH = '/approve';
  const WORKER = '/approve/sw.js';
  const LONG_POLL_SECS = 25;
  const KEEP_ANSWERED_MS = 10000;
  const PUSH_TIMEOUT_MS = 15000;

  const $ = (id) => document.getElementById(id);
  const encoder = new TextEncoder();

  /** The enrolled device: {deviceId, name, privateKey, publicKey, push}. */
  let device = null;
  /** Seconds to add to this device's clock to get the server's. */
  let clockOffset = 0;
  /** The enrollment token, in memory only. */
  let enrollToken = null;
  /** The server's VAPID key, when Web Push is on. */
  let vapidKey = null;
  /** Challenge id -> {li, expiresAt, state}. */
  const cards = new Map();
  let polling = false;
  let gone = false;

  // ---- encodings ----

  function toB64u(buf) {
    const bytes = new Uint8Array(buf);
    let bin = '';
    for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  function fromB64u(s) {
    const pad = '='.repeat((4 - (s.length % 4)) % 4);
    const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/') + pad);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out;
  }

  function toHex(buf) {
    return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, '0')).join('');
  }

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

  // ---- the key store (IndexedDB keeps CryptoKey objects as they are) ----

  function openDb() {
    return new Promise((resolve, reject) => {
      const req = indexedDB.open(DB_NAME, 1);
      req.onupgradeneeded = () => req.result.createObjectStore(DB_STORE);
      req.onsuccess = () => resolve(req.result);
      req.onerror = () => reject(req.error);
    });
  }

  async function dbDo(mode, op) {
    const db = await openDb();
    try {
      return await new Promise((resolve, reject) => {
        const tx = db.transaction(DB_STORE, mode);
        const req = op(tx.objectStore(DB_STORE));
        tx.oncomplete = () => resolve(req.result);
        tx.onerror = () => reject(tx.error);
        tx.onabort = () => reject(tx.error);
      });
    } finally {
      db.close();
    }
  }

  const loadDevice = () => dbDo('readonly', (s) => s.get(DB_KEY));
  const saveDevice = (record) => dbDo('readwrite', (s) => s.put(record, DB_KEY));
  const deleteDevice = () => dbDo('readwrite', (s) => s.delete(DB_KEY));

  // ---- time, signatures, the device API ----

  const now = () => Math.floor(Date.now() / 1000) + clockOffset;

  /** Follows the server's clock (its Date header) when ours is far off. */
  function learnClock(response) {
    const date = Date.parse(response.headers.get('date') || '');
    if (Number.isNaN(date)) return;
    const offset = Math.round((date - Date.now()) / 1000);
    clockOffset = Math.abs(offset) > 10 ? offset : 0;
  }

  async function sign(text) {
    const sig = await crypto.subtle.sign({ name: 'ECDSA', hash: 'SHA-256' }, device.privateKey, encoder.encode(text));
    return toB64u(sig);
  }

  /**
   * A signed request; `makeBody` (optional) builds the body anew for each
   * attempt (a decision carries its own timestamp). Retries once when the
   * server says our clock is off. Returns {status, data}.
   */
  async function api(method, path, makeBody) {
    for (let attempt = 0; ; attempt++) {
      const body = makeBody ? await makeBody() : '';
      const bytes = encoder.encode(body);
      const ts = now();
      const digest = toHex(await crypto.subtle.digest('SHA-256', bytes));
      const message = `portcullis-device-request-v1\n${method}\n${path}\n${ts}\n${digest}`;
      const headers = {
        'x-portcullis-device': device.deviceId,
        'x-portcullis-timestamp': String(ts),
        'x-portcullis-signature': await sign(message),
      };
      if (body) headers['content-type'] = 'application/json';
      const response = await fetch(path, {
        method,
        headers,
        body: body ? bytes : undefined,
        cache: 'no-store',
        credentials: 'omit',
      });
      const data = await response.json().catch(() => ({}));
      const skewed = response.status === 401 && /clock/.test(String(data.error || ''));
      learnClock(response);
      if (skewed && attempt === 0) continue;
      return { status: response.status, data };
    }
  }

  // ---- the page ----

  function setStatus(text, isError) {
    const status = $('status');
    status.textContent = text || '';
    status.classList.toggle('error', Boolean(isError));
  }

  function show(view) {
    for (const name of ['unsupported', 'enroll', 'no-device', 'approvals']) {
      $('view-' + name).hidden = name !== view;
    }
    document.body.dataset.view = view;
  }

  function defaultName() {
    const ua = navigator.userAgent || '';
    const platform = (navigator.userAgentData && navigator.userAgentData.platform) ||
      (/Android/.test(ua) ? 'Android' : /iPhone|iPad/.test(ua) ? 'iOS' : /Mac OS/.test(ua) ? 'macOS' : '');
    return platform ? `Browser on ${platform}` : 'This browser';
  }

  // ---- the service worker and Web Push ----

  const canPush = () => 'serviceWorker' in navigator && 'PushManager' in window && 'Notification' in window;

  /** Registers the worker (scope /approve); resolves once it is active. */
  async function activeWorker() {
    const reg = await navigator.serviceWorker.register(WORKER, { scope: APP_PATH });
    if (reg.active) return reg;
    const worker = reg.installing || reg.waiting;
    if (!worker) throw new Error('the service worker did not start');
    await new Promise((resolve, reject) => {
      const check = () => {
        if (worker.state === 'activated') resolve();
        else if (worker.state === 'redundant') reject(new Error('the service worker failed to start'));
      };
      worker.addEventListener('statechange', check);
      check();
    });
    return reg;
  }

  async function subscribe() {
    if (!canPush() || !vapidKey) throw new Error('this browser cannot receive Web Push');
    const permission = await Notification.requestPermission();
    if (permission !== 'granted') throw new Error('notifications are not allowed for this site');
    const reg = await activeWorker();
    // A subscription made for another key (or an earlier enrollment) goes.
    const old = await reg.pushManager.getSubscription();
    if (old) await old.unsubscribe();
    // A browser that cannot reach its push service may never answer.
    const timeout = sleep(PUSH_TIMEOUT_MS).then(() => {
      throw new Error("the browser's push service did not answer");
    });
    const options = { userVisibleOnly: true, applicationServerKey: fromB64u(vapidKey) };
    return Promise.race([reg.pushManager.subscribe(options), timeout]);
  }

  async function unsubscribe() {
    if (!('serviceWorker' in navigator)) return;
    const reg = await navigator.serviceWorker.getRegistration(APP_PATH);
    const sub = reg && (await reg.pushManager.getSubscription());
    if (sub) await sub.unsubscribe();
  }

  // ---- enrollment ----

  async function showEnroll() {
    show('enroll');
    $('device-name').value = defaultName();
    if (device) {
      $('replace-name').textContent = device.name;
      $('replace-note').hidden = false;
    }
    try {
      const response = await fetch('/api/mfa/vapid-public-key', { credentials: 'omit' });
      if (response.ok) vapidKey = String((await response.json()).key || '') || null;
    } catch (e) {
      vapidKey = null;
    }
    $('push-choice').hidden = !(vapidKey && canPush());
    $('enroll-push').checked = Boolean(vapidKey && canPush());
  }

  async function enroll(event) {
    event.preventDefault();
    const name = $('device-name').value.trim();
    if (!name) {
      setStatus('Give this device a name.', true);
      $('device-name').focus();
      return;
    }
    if (!enrollToken) {
      setStatus('This enrollment link was used already. Make a new one on your account page.', true);
      return;
    }
    const button = $('enroll-button');
    button.disabled = true;
    setStatus('Enrolling…');
    let subscription = null;
    try {
      if (!$('push-choice').hidden && $('enroll-push').checked) {
        try {
          subscription = await subscribe();
        } catch (e) {
          $('enroll-push').checked = false;
          setStatus(`Notifications could not be turned on (${e.message}). Choose “Enroll this browser” again ` +
            'to use it without notifications: requests then show while this page is open.', true);
          return;
        }
      }
      const keys = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, false, ['sign', 'verify']);
      const publicKey = toB64u(await crypto.subtle.exportKey('raw', keys.publicKey));
      const push = subscription ? { kind: 'webpush', address: subscription.toJSON() } : null;
      const response = await fetch('/api/mfa/enroll', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ token: enrollToken, public_key: publicKey, name, push }),
        cache: 'no-store',
        credentials: 'omit',
      });
      const data = await response.json().catch(() => ({}));
      if (response.status !== 201) {
        if (subscription) await subscription.unsubscribe().catch(() => {});
        setStatus(`Enrollment failed: ${data.error || 'HTTP ' + response.status}.`, true);
        return;
      }
      enrollToken = null;
      const record = { deviceId: String(data.device_id), name, privateKey: keys.privateKey, publicKey,
        push: subscription ? 'webpush' : 'none', enrolledAt: Date.now() };
      try {
        await saveDevice(record);
      } catch (e) {
        setStatus(`Enrolled, but this browser could not keep the key (${e.message}). Remove “${name}” on your ` +
          'account page and enroll again.', true);
        return;
      }
      sessionStorage.setItem('portcullis-enrolled', name);
      location.replace(APP_PATH);
    } catch (e) {
      if (subscription) await subscription.unsubscribe().catch(() => {});
      setStatus(`Enrollment failed: ${e.message}`, true);
    } finally {
      button.disabled = false;
    }
  }

  // ---- challenges ----

  function openCount() {
    let n = 0;
    for (const card of cards.values()) if (card.state === 'pending') n++;
    return n;
  }

  function setCardState(card, state, text) {
    card.state = state;
    card.li.dataset.state = state;
    card.li.querySelector('.result').textContent = text || '';
    const pending = state === 'pending';
    for (const b of card.li.querySelectorAll('button')) b.disabled = !pending;
    if (state !== 'pending' && state !== 'sending') {
      setTimeout(() => {
        card.li.remove();
        cards.delete(card.id);
        updateEmpty();
      }, KEEP_ANSWERED_MS);
    }
  }

  function updateEmpty() {
    $('empty').hidden = cards.size > 0;
  }

  function addCard(c) {
    const li = $('challenge-template').content.firstElementChild.cloneNode(true);
    const card = { id: c.id, li, expiresAt: Number(c.expires_at), state: 'pending' };
    li.dataset.challenge = c.id;
    li.dataset.state = 'pending';
    const headingId = 'challenge-' + cards.size + '-' + Date.now();
    const heading = li.querySelector('.what');
    heading.id = headingId;
    heading.textContent = String(c.what || 'Sign-in');
    li.querySelector('article').setAttribute('aria-labelledby', headingId);
    li.querySelector('.source').textContent = c.source ? String(c.source) : 'unknown';
    const created = new Date((Number(c.created_at) - clockOffset) * 1000);
    li.querySelector('.when').textContent = created.toLocaleTimeString();
    const choices = Array.isArray(c.choices) ? c.choices.filter((n) => Number.isInteger(n)) : [];
    if (choices.length > 0) {
      const numbers = li.querySelector('.numbers');
      numbers.hidden = false;
      const label = numbers.querySelector('.numbers-label');
      label.id = headingId + '-numbers';
      const group = numbers.querySelector('.choices');
      group.setAttribute('aria-labelledby', label.id);
      for (const n of choices) {
        const b = document.createElement('button');
        b.type = 'button';
        b.className = 'primary';
        b.dataset.verdict = 'approve';
        b.dataset.number = String(n);
        b.textContent = String(n);
        b.setAttribute('aria-label', `Approve: the sign-in page shows ${n}`);
        group.appendChild(b);
      }
      li.querySelector('.actions [data-verdict=approve]').remove();
    }
    li.addEventListener('click', (event) => {
      const b = event.target.closest('button[data-verdict]');
      if (!b || b.disabled) return;
      const number = b.dataset.number === undefined ? null : Number(b.dataset.number);
      answer(card, b.dataset.verdict, number);
    });
    cards.set(c.id, card);
    tick(card);
    $('challenges').appendChild(li);
    updateEmpty();
  }

  function tick(card) {
    if (card.state !== 'pending') return;
    const left = card.expiresAt - now();
    card.li.querySelector('.left').textContent = left > 0 ? `${left} s` : 'expired';
    if (left <= 0) setCardState(card, 'closed', 'Expired: the sign-in was not approved.');
  }

  function render(list) {
    const seen = new Set();
    for (const c of list) {
      if (typeof c.id !== 'string' || c.state !== 'pending') continue;
      seen.add(c.id);
      if (!cards.has(c.id)) addCard(c);
    }
    for (const card of cards.values()) {
      if (card.state === 'pending' && !seen.has(card.id)) {
        setCardState(card, 'closed', 'No longer waiting: answered elsewhere or expired.');
      }
    }
    updateEmpty();
  }

  async function answer(card, verdict, number) {
    if (card.state !== 'pending') return;
    setCardState(card, 'sending', 'Sending your answer…');
    const path = `/api/mfa/challenges/${encodeURIComponent(card.id)}/answer`;
    const decisionNumber = verdict === 'approve' && number !== null ? number : null;
    try {
      const { status, data } = await api('POST', path, async () => {
        const ts = now();
        const text = `portcullis-decision-v1\n${card.id}\n${verdict}\n${decisionNumber === null ? '-' : decisionNumber}\n${ts}`;
        return JSON.stringify({ verdict, number: decisionNumber, timestamp: ts, signature: await sign(text) });
      });
      if (status === 200 && data.outcome === 'approved') {
        setCardState(card, 'approved', 'Approved. The sign-in goes on.');
      } else if (status === 200) {
        const why = verdict === 'fraud'
          ? 'Denied and reported. No more requests reach you until an administrator clears the report.'
          : decisionNumber !== null ? 'Denied: that number did not match the sign-in page.' : 'Denied.';
        setCardState(card, 'denied', why);
      } else if (status === 409 || status === 404) {
        setCardState(card, 'closed', 'Too late: this request was answered already or has expired.');
      } else if (status === 401 && /unknown device/.test(String(data.error || ''))) {
        setCardState(card, 'failed', 'This device is no longer enrolled.');
        deviceGone();
      } else {
        setCardState(card, 'pending', `Not sent: ${data.error || 'HTTP ' + status}. Try again.`);
      }
    } catch (e) {
      setCardState(card, 'pending', `Not sent: ${e.message}. Try again.`);
    }
  }

  function deviceGone() {
    gone = true;
    setStatus('The server no longer knows this device (it was removed from your account). Forget it here, ' +
      'then enroll again with a new link.', true);
  }

  async function pollLoop() {
    if (polling || !device || gone) return;
    polling = true;
    let failures = 0;
    try {
      while (device && !gone && document.visibilityState === 'visible') {
        try {
          const wait = openCount() > 0 ? 0 : LONG_POLL_SECS;
          const { status, data } = await api('GET', `/api/mfa/challenges?wait=${wait}`);
          if (status === 401 && /unknown device/.test(String(data.error || ''))) {
            deviceGone();
            break;
          }
          if (status !== 200) throw new Error(data.error || 'HTTP ' + status);
          if (failures > 0) setStatus('');
          failures = 0;
          render(Array.isArray(data.challenges) ? data.challenges : []);
          if (openCount() > 0) await sleep(2000);
        } catch (e) {
          failures++;
          setStatus(`Cannot reach the server (${e.message}); trying again…`, true);
          await sleep(Math.min(30000, 1000 * 2 ** failures));
        }
      }
    } finally {
      polling = false;
    }
  }

  function showApprovals() {
    show('approvals');
    $('device-name-shown').textContent = device.name;
    $('device-mode').textContent = device.push === 'webpush'
      ? 'Notifications are on.'
      : 'Notifications are off: requests show while this page is open.';
    $('push-note').hidden = device.push !== 'webpush';
    const enrolled = sessionStorage.getItem('portcullis-enrolled');
    if (enrolled) {
      sessionStorage.removeItem('portcullis-enrolled');
      setStatus(`This browser now approves your sign-ins as “${enrolled}”. Install this page (“Add to Home ` +
        'screen”) to find it again quickly.');
    }
    updateEmpty();
    setInterval(() => cards.forEach(tick), 1000);
    pollLoop();
  }

  async function forget() {
    await unsubscribe().catch(() => {});
    await deleteDevice();
    device = null;
    gone = false;
    cards.clear();
    $('challenges').replaceChildren();
    setStatus('This browser forgot its key. Remove the device on your account page too.');
    show('no-device');
  }

  // ---- start ----

  async function start() {
    if (!window.isSecureContext || !window.crypto || !crypto.subtle || !window.indexedDB) {
      show('unsupported');
      return;
    }
    $('enroll-form').addEventListener('submit', enroll);
    $('forget-button').addEventListener('click', () => {
      forget().catch((e) => setStatus(`Cannot forget the device: ${e.message}`, true));
    });
    document.addEventListener('visibilitychange', () => {
      if (document.visibilityState === 'visible') pollLoop();
    });
    if ('serviceWorker' in navigator) {
      // A push or a click on a notification: look for news now.
      navigator.serviceWorker.addEventListener('message', () => pollLoop());
      navigator.serviceWorker.register(WORKER, { scope: APP_PATH }).catch((e) => {
        console.warn('service worker not registered:', e.message);
      });
    }
    try {
      const record = await loadDevice();
      device = record && record.deviceId && record.privateKey ? record : null;
    } catch (e) {
      device = null;
    }
    if (location.pathname === ENROLL_PATH) {
      const token = location.hash.slice(1);
      // The token must not linger in the address bar or the history.
      history.replaceState(null, '', ENROLL_PATH);
      if (/^[A-Za-z0-9_-]{1,128}$/.test(token)) {
        enrollToken = token;
        await showEnroll();
        return;
      }
      setStatus(device ? '' : 'This enrollment link carries no token, or it was opened already. Make a new ' +
        'one on your account page.', !device);
    }
    if (device) showApprovals();
    else show('no-device');
  }

  start().catch((e) => setStatus(`The approval app failed to start: ${e.message}`, true));
})();
