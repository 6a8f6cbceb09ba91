-- How each sign-in session, and each code it issued, was authenticated:
-- RFC 8176 `amr` values, space-separated ("pwd", "pwd otp mfa"). Sessions
-- from before second factors count as password-only, so a user who now needs
-- a second factor signs in again.
ALTER TABLE web_sessions ADD COLUMN amr TEXT NOT NULL DEFAULT 'pwd';
ALTER TABLE auth_codes ADD COLUMN amr TEXT;
