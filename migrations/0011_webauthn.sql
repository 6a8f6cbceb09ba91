-- WebAuthn second factors (security keys and passkeys) for web sign-in. The
-- credential is webauthn-rs's serialised SecurityKey (credential id, public
-- key, signature counter, backup flags): public data, rewritten after each
-- sign-in that moves its counter. A credential id belongs to one user only.

CREATE TABLE mfa_webauthn (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    -- The authenticator's credential id, base64url without padding.
    credential_id TEXT NOT NULL UNIQUE,
    -- webauthn-rs SecurityKey as JSON.
    credential    TEXT NOT NULL,
    name          TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);
CREATE INDEX mfa_webauthn_user ON mfa_webauthn (user_id);
