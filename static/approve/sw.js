// Portcullis: the approval app's service worker, served as /approve/sw.js
// with scope /approve (Service-Worker-Allowed: /approve).
//
// - push: a push carries only {"challenge": ID, "title": …}; it shows a
//   generic notification (no user, host or address: those are fetched by
//   the page with a signed request when it opens).
// - notificationclick: focuses an open approval page or opens /approve.
// - fetch: the app's own files, network first, so an installed app still
//   opens (and says it is offline) without a connection. API calls are
//   never cached.
'use strict';

const SHELL_CACHE = 'portcullis-approve-v1';
const SHELL = ['/approve', '/approve/app.js', '/approve/app.css', '/approve/icon.svg', '/approve/manifest.webmanifest'];

self.addEventListener('install', (event) => {
  // Caching is a convenience: a failure must not stop the worker (pushes).
  event.waitUntil(
    caches.open(SHELL_CACHE).then((cache) => cache.addAll(SHELL)).catch(() => {}).then(() => self.skipWaiting()),
  );
});

self.addEventListener('activate', (event) => {
  event.waitUntil(
    caches.keys()
      .then((names) => Promise.all(names.filter((n) => n !== SHELL_CACHE).map((n) => caches.delete(n))))
      .then(() => self.clients.claim()),
  );
});

self.addEventListener('fetch', (event) => {
  const url = new URL(event.request.url);
  if (event.request.method !== 'GET' || url.origin !== self.location.origin || !SHELL.includes(url.pathname)) {
    return;
  }
  event.respondWith(
    fetch(event.request)
      .then((response) => {
        if (response.ok) {
          const copy = response.clone();
          caches.open(SHELL_CACHE).then((cache) => cache.put(url.pathname, copy)).catch(() => {});
        }
        return response;
      })
      .catch(() => caches.match(url.pathname).then((cached) => cached || Response.error())),
  );
});

self.addEventListener('push', (event) => {
  let id = '';
  let title = 'Sign-in request';
  try {
    const payload = event.data ? event.data.json() : {};
    if (typeof payload.challenge === 'string' && /^[A-Za-z0-9_-]{1,64}$/.test(payload.challenge)) {
      id = payload.challenge;
    }
    if (typeof payload.title === 'string' && payload.title.length > 0) title = payload.title.slice(0, 80);
  } catch (e) {
    // Not JSON: still tell the user to look (a push must show something).
  }
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    for (const w of windows) w.postMessage({ type: 'challenge', id });
    await self.registration.showNotification(title, {
      body: 'Someone is signing in to your account. Open to see who and where, then approve or deny.',
      icon: '/approve/icon.svg',
      tag: id ? 'challenge-' + id : 'challenge',
      data: { id },
      requireInteraction: true,
    });
  })());
});

self.addEventListener('notificationclick', (event) => {
  event.notification.close();
  event.waitUntil((async () => {
    const windows = await self.clients.matchAll({ type: 'window', includeUncontrolled: true });
    for (const w of windows) {
      if (new URL(w.url).pathname === '/approve') {
        w.postMessage({ type: 'challenge', id: (event.notification.data || {}).id || '' });
        return w.focus();
      }
    }
    return self.clients.openWindow('/approve');
  })());
});
