-- OpenID Connect Back-Channel Logout 1.0: where each client wants to be
-- told that a sign-in session ended, the session id (`sid`) that ID tokens
-- and logout tokens carry, and which clients each session signed in to.

-- An absolute http(s) URL without a fragment; NULL = no back-channel logout.
ALTER TABLE oidc_clients ADD COLUMN backchannel_logout_uri TEXT;

-- The session's public identifier: random, not derived from the cookie (a
-- bearer secret), and kept when the same user signs in again in the same
-- browser (the cookie rotates, the session goes on). Sessions from before
-- this migration have none; they last at most 8 hours, so they end here and
-- their users sign in once more.
DELETE FROM web_sessions;
ALTER TABLE web_sessions ADD COLUMN sid TEXT NOT NULL DEFAULT '';

-- Codes and refresh tokens remember their session, so every ID token
-- issued from them (first or refreshed) carries the same sid.
ALTER TABLE auth_codes ADD COLUMN sid TEXT;
ALTER TABLE refresh_tokens ADD COLUMN sid TEXT;

-- The clients a session issued authorization codes to. Rows go with their
-- session (sign-out, revocation, user deletion) and with their client.
CREATE TABLE session_clients (
    session_hash TEXT NOT NULL REFERENCES web_sessions(id_hash) ON DELETE CASCADE,
    client_name  TEXT NOT NULL REFERENCES oidc_clients(name) ON DELETE CASCADE,
    PRIMARY KEY (session_hash, client_name)
);
CREATE INDEX session_clients_client ON session_clients (client_name);
