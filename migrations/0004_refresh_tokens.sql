-- Refresh tokens (rotated on every use) and revoked token families. A
-- family is every token descended from one authorization code; reusing a
-- code or a spent refresh token revokes the whole family.

CREATE TABLE refresh_tokens (
    token_hash  TEXT PRIMARY KEY,
    family_id   TEXT NOT NULL,
    client_name TEXT NOT NULL,
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    scope       TEXT NOT NULL,
    auth_time   BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    used        BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE revoked_families (
    family_id  TEXT PRIMARY KEY,
    revoked_at BIGINT NOT NULL
);

ALTER TABLE auth_codes ADD COLUMN family_id TEXT;
