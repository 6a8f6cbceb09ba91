// Portcullis: the browser side of security keys and passkeys (WebAuthn).
// Served as /static/webauthn.js and allowed by the pages' CSP
// (script-src 'self'; connect-src 'self'); no inline script, no handlers in
// the markup. Pages work without it for every other factor.
//
// A form with data-webauthn="create" (account page: add a key) or "get"
// (sign-in: use a key) and data-options="URL": on submit, POST the form's
// CSRF token to URL for the options, run the browser's ceremony
// (navigator.credentials.create / .get), put the answer in the form's
// "credential" field as JSON (binary fields base64url) and submit the form.
'use strict';
(function () {
  function fromB64u(s) {
    const pad = '='.repeat((4 - (s.length % 4)) % 4);
    const bin = atob(s.replace(/-/g, '+').replace(/_/g, '/') + pad);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return out.buffer;
  }

  function toB64u(buf) {
    const bytes = new Uint8Array(buf);
    let bin = '';
    for (let i = 0; i < bytes.length; i++) bin += String.fromCharCode(bytes[i]);
    return btoa(bin).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
  }

  // Drops null members: WebIDL dictionaries take absent members, not null.
  function clean(value) {
    if (Array.isArray(value)) return value.map(clean);
    if (value && typeof value === 'object') {
      const out = {};
      for (const [k, v] of Object.entries(value)) if (v !== null && v !== undefined) out[k] = clean(v);
      return out;
    }
    return value;
  }

  function withIds(list) {
    return (list || []).map(function (c) { return Object.assign({}, c, { id: fromB64u(c.id) }); });
  }

  function creationOptions(o) {
    const pk = clean(o.publicKey);
    pk.challenge = fromB64u(pk.challenge);
    pk.user = Object.assign({}, pk.user, { id: fromB64u(pk.user.id) });
    pk.excludeCredentials = withIds(pk.excludeCredentials);
    return { publicKey: pk };
  }

  function requestOptions(o) {
    const pk = clean(o.publicKey);
    pk.challenge = fromB64u(pk.challenge);
    pk.allowCredentials = withIds(pk.allowCredentials);
    return { publicKey: pk };
  }

  function registration(cred) {
    const r = cred.response;
    return {
      id: cred.id,
      rawId: toB64u(cred.rawId),
      type: cred.type,
      response: {
        attestationObject: toB64u(r.attestationObject),
        clientDataJSON: toB64u(r.clientDataJSON),
        transports: typeof r.getTransports === 'function' ? r.getTransports() : undefined,
      },
      extensions: cred.getClientExtensionResults(),
    };
  }

  function assertion(cred) {
    const r = cred.response;
    return {
      id: cred.id,
      rawId: toB64u(cred.rawId),
      type: cred.type,
      response: {
        authenticatorData: toB64u(r.authenticatorData),
        clientDataJSON: toB64u(r.clientDataJSON),
        signature: toB64u(r.signature),
        userHandle: r.userHandle ? toB64u(r.userHandle) : null,
      },
      extensions: cred.getClientExtensionResults(),
    };
  }

  function attach(form) {
    const status = form.querySelector('.webauthn-status');
    const say = function (message) { if (status) status.textContent = message; };
    const create = form.dataset.webauthn === 'create';
    form.addEventListener('submit', async function (event) {
      event.preventDefault();
      if (!window.PublicKeyCredential || !navigator.credentials) {
        say('This browser cannot use security keys or passkeys.');
        return;
      }
      say('Follow your browser\u2019s prompt.');
      try {
        const body = new URLSearchParams();
        body.set('csrf', form.elements.namedItem('csrf').value);
        const res = await fetch(form.dataset.options, {
          method: 'POST',
          body: body,
          credentials: 'same-origin',
          headers: { accept: 'application/json' },
        });
        const options = await res.json();
        if (!res.ok) throw new Error(options.error || 'The server refused.');
        const cred = create
          ? await navigator.credentials.create(creationOptions(options))
          : await navigator.credentials.get(requestOptions(options));
        if (!cred) throw new Error('No security key answered.');
        form.elements.namedItem('credential').value = JSON.stringify(create ? registration(cred) : assertion(cred));
        // submit() fires no submit event: the form goes to the server once.
        form.submit();
      } catch (e) {
        if (e && e.name === 'NotAllowedError') say('Cancelled or timed out. Try again.');
        else if (e && e.name === 'InvalidStateError') say('This security key is already registered.');
        else say('The security key could not be used: ' + (e && e.message ? e.message : e));
      }
    });
  }

  document.querySelectorAll('form[data-webauthn]').forEach(attach);
})();
