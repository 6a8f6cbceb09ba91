-- Per-client ID-token signing algorithm (OpenID Connect Dynamic Client
-- Registration's id_token_signed_response_alg). Existing clients keep RS256.
-- Signing keys already carry their alg; one key per alg is active at a time.
ALTER TABLE oidc_clients ADD COLUMN id_token_signed_response_alg TEXT NOT NULL DEFAULT 'RS256'
    CHECK (id_token_signed_response_alg IN ('RS256', 'ES256', 'EdDSA'));
