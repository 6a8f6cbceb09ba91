-- Consent: third-party clients must be approved by each user once per scope set.
ALTER TABLE oidc_clients ADD COLUMN consent_required BOOLEAN NOT NULL DEFAULT FALSE;

CREATE TABLE consents (
    user_id     TEXT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    client_name TEXT NOT NULL,
    scope       TEXT NOT NULL,
    granted_at  BIGINT NOT NULL,
    PRIMARY KEY (user_id, client_name)
);
