-- Per-client MFA policy: a client registered with --require-mfa demands a
-- second factor of everyone who signs in to it, whatever their groups.
ALTER TABLE oidc_clients ADD COLUMN mfa_required BOOLEAN NOT NULL DEFAULT FALSE;
