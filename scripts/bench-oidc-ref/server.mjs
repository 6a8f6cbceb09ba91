// Reference OpenID provider for scripts/bench-oidc: node oidc-provider,
// configured like Portcullis's provider (one confidential client with
// client_secret_basic, code flow with PKCE S256, refresh tokens rotated on
// every use, client_credentials, RS256 (RSA 2048) JWT ID tokens, opaque
// access tokens, the default in-memory adapter) plus the minimal interaction (login) endpoint
// oidc-provider needs: a form, and a POST that verifies an argon2id hash
// (m=19456,t=2,p=1, like Portcullis) before finishing login and consent.
//
// Usage: node server.mjs PORT CERT_PEM KEY_PEM CLIENT_SECRET USER ARGON2_HASH
// Listens over HTTPS on 127.0.0.1:PORT only; prints "listening" when ready.

import crypto from 'node:crypto';
import fs from 'node:fs';
import https from 'node:https';

import argon2 from 'argon2';
import Provider from 'oidc-provider';

const [port, certFile, keyFile, clientSecret, userName, passwordHash] = process.argv.slice(2);
const issuer = `https://127.0.0.1:${port}`;
const RESOURCE = 'urn:bench:api';
const users = new Map([[userName, { id: userName, hash: passwordHash }]]);

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), use: 'sig', alg: 'RS256', kid: 'bench' };

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'bench',
    client_secret: clientSecret,
    redirect_uris: ['https://app.example.org/cb'],
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
  }],
  jwks: { keys: [jwk] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  scopes: ['openid', 'profile', 'email', 'offline_access', 'api'],
  claims: { openid: ['sub'], profile: ['name', 'preferred_username'], email: ['email'] },
  pkce: { required: () => true },
  rotateRefreshToken: true,
  // Portcullis's lifetimes: access tokens 600 s, refresh tokens 30 days,
  // codes 60 s, sessions 8 h.
  ttl: {
    AccessToken: 600,
    ClientCredentials: 600,
    IdToken: 600,
    AuthorizationCode: 60,
    RefreshToken: 30 * 24 * 3600,
    Interaction: 3600,
    Session: 8 * 3600,
    Grant: 30 * 24 * 3600,
  },
  issueRefreshToken: async (ctx, client, code) => client.grantTypeAllowed('refresh_token') && code.scopes.has('offline_access'),
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    introspection: { enabled: true },
    revocation: { enabled: true },
    // Opaque access tokens, as Portcullis issues.
    resourceIndicators: {
      enabled: true,
      defaultResource: () => RESOURCE,
      useGrantedResource: () => true,
      getResourceServerInfo: () => ({
        scope: 'api',
        audience: RESOURCE,
        accessTokenFormat: 'opaque',
      }),
    },
  },
  findAccount: async (ctx, id) => (users.has(id) ? {
    accountId: id,
    claims: async () => ({ sub: id, name: id, preferred_username: id, email: `${id}@example.org` }),
  } : undefined),
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
});
provider.on('server_error', (ctx, err) => console.error('server_error', err));

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
const readBody = (req) => new Promise((resolve, reject) => {
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('end', () => resolve(Buffer.concat(chunks).toString()));
  req.on('error', reject);
});
const html = (res, status, body) => {
  res.writeHead(status, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
  res.end(`<!doctype html><html><head><title>Sign in</title></head><body>${body}</body></html>`);
};
const form = (uid, error) => `${error ? `<p>${esc(error)}</p>` : ''}<form method="post" action="/interaction/${esc(uid)}/login">
<input name="username"><input name="password" type="password"><button type="submit">Sign in</button></form>`;

async function interaction(req, res) {
  const details = await provider.interactionDetails(req, res);
  if (req.method === 'GET') return html(res, 200, form(details.uid));
  const fields = new URLSearchParams(await readBody(req));
  const user = users.get(fields.get('username') ?? '');
  const ok = user ? await argon2.verify(user.hash, fields.get('password') ?? '') : false;
  if (!ok) return html(res, 401, form(details.uid, 'Wrong user name or password'));
  const { params } = details;
  const grant = new provider.Grant({ accountId: user.id, clientId: params.client_id });
  grant.addOIDCScope(params.scope);
  grant.addResourceScope(RESOURCE, 'api');
  const grantId = await grant.save();
  return provider.interactionFinished(req, res, { login: { accountId: user.id }, consent: { grantId } },
    { mergeWithLastSubmission: false });
}

const callback = provider.callback();
https.createServer({ cert: fs.readFileSync(certFile), key: fs.readFileSync(keyFile) }, (req, res) => {
  if (req.url.startsWith('/interaction/')) {
    interaction(req, res).catch((err) => {
      console.error('interaction error', err);
      if (!res.headersSent) html(res, 400, esc(err.message));
    });
    return;
  }
  callback(req, res);
}).listen(Number(port), '127.0.0.1', () => console.log('listening'));
