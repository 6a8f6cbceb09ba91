-- OpenID Connect provider: signing keys and registered clients.

-- Private keys are sealed (AES-256-GCM) with the key in DATA_DIR/secret.key;
-- the public half is kept in the clear for the JWKS.
CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    alg          TEXT NOT NULL,
    private_key  TEXT NOT NULL,
    public_jwk   TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    -- Set when a newer key takes over; the key stays published until
    -- every token it signed has expired.
    retired_at   BIGINT
);

CREATE TABLE oidc_clients (
    id                        TEXT PRIMARY KEY,
    name                      TEXT NOT NULL UNIQUE,
    -- SHA-256 of a 256-bit random secret (hex); NULL for public clients.
    secret_hash               TEXT,
    redirect_uris             TEXT NOT NULL DEFAULT '',
    post_logout_redirect_uris TEXT NOT NULL DEFAULT '',
    allowed_groups            TEXT NOT NULL DEFAULT '',
    created_at                BIGINT NOT NULL,
    updated_at                BIGINT NOT NULL
);
