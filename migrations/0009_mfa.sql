-- Second factors: approval devices (push / poll), one-time enrollment
-- tokens, TOTP secrets and recovery codes. Secrets are sealed with
-- DATA_DIR/secret.key (TOTP) or stored as SHA-256 hashes (tokens, codes).

CREATE TABLE mfa_devices (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    -- The device's P-256 public key, SEC1 uncompressed, base64url.
    public_key   TEXT NOT NULL,
    -- 'none' (poll mode), 'apns', 'fcm', 'webpush' or 'webhook'.
    push_kind    TEXT NOT NULL DEFAULT 'none',
    -- Sealed push address (token or Web Push subscription JSON).
    push_address TEXT,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT
);
CREATE INDEX mfa_devices_user ON mfa_devices (user_id);

CREATE TABLE mfa_enrollments (
    token_hash TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL
);

CREATE TABLE mfa_totp (
    user_id    TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    secret     TEXT NOT NULL,
    confirmed  BOOLEAN NOT NULL DEFAULT FALSE,
    -- The last 30 s step a code was accepted for: each code works once.
    last_step  BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE mfa_recovery_codes (
    user_id   TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    used_at   BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

-- Users whose pushes are stopped after a "this wasn't me" report, until an
-- admin clears it.
CREATE TABLE mfa_push_locks (
    user_id   TEXT PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    locked_at BIGINT NOT NULL,
    reason    TEXT NOT NULL
);
