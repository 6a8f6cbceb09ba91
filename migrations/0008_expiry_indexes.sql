-- Expired sign-in state is pruned periodically (Store::prune_expired); these
-- indexes keep that a range delete instead of a table scan.
CREATE INDEX web_sessions_expiry ON web_sessions (expires_at);
CREATE INDEX auth_codes_expiry ON auth_codes (expires_at);
CREATE INDEX refresh_tokens_expiry ON refresh_tokens (expires_at);
CREATE INDEX revoked_families_age ON revoked_families (revoked_at);
