//! TOTP (RFC 6238): SHA-1, 6 digits, 30 s steps, one step of skew either
//! way. The caller stores the secret sealed and claims the matched step in
//! the store, so each code is accepted at most once.

use totp_rs::{Algorithm, TOTP};

/// Seconds per step.
pub const STEP_SECS: u64 = 30;
const DIGITS: usize = 6;
const SKEW: u8 = 1;

/// A fresh 160-bit secret (RFC 4226's recommended length).
pub fn new_secret() -> Vec<u8> {
    use rand::RngCore;
    let mut secret = vec![0u8; 20];
    rand::thread_rng().fill_bytes(&mut secret);
    secret
}

fn totp(secret: &[u8], issuer: &str, account: &str) -> Option<TOTP> {
    TOTP::new(Algorithm::SHA1, DIGITS, SKEW, STEP_SECS, secret.to_vec(), Some(issuer.to_string()), account.into()).ok()
}

/// The `otpauth://` URL authenticator apps scan.
pub fn otpauth_url(secret: &[u8], issuer: &str, account: &str) -> Option<String> {
    Some(totp(secret, issuer, account)?.get_url())
}

/// The secret in base32, for typing into an app by hand.
pub fn secret_base32(secret: &[u8]) -> String {
    totp_rs::Secret::Raw(secret.to_vec()).to_encoded().to_string()
}

/// The code for unix time `now` (for tests and the reference device).
pub fn code_at(secret: &[u8], now: i64) -> Option<String> {
    Some(totp(secret, "portcullis", "user")?.generate(u64::try_from(now).ok()?))
}

/// The step `code` is valid for at `now` (current, previous or next), if
/// any; compared in constant time.
pub fn matching_step(secret: &[u8], code: &str, now: i64) -> Option<i64> {
    use subtle::ConstantTimeEq;
    let code = code.trim();
    if code.len() != DIGITS || !code.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let t = totp(secret, "portcullis", "user")?;
    let step = now.checked_div(STEP_SECS as i64)?;
    let mut found = None;
    for s in [step - 1, step, step + 1] {
        let Ok(at) = u64::try_from(s * STEP_SECS as i64) else { continue };
        if bool::from(t.generate(at).as_bytes().ct_eq(code.as_bytes())) {
            found = Some(s);
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_vector_and_skew() {
        // RFC 6238 Appendix B, SHA-1 secret "12345678901234567890", T = 59 s:
        // 94287082 (8 digits); 6-digit form is the last six.
        let secret = b"12345678901234567890";
        assert_eq!(code_at(secret, 59).unwrap(), "287082");
        assert_eq!(code_at(secret, 1_111_111_109).unwrap(), "081804");
        let now = 1_111_111_109;
        let step = now / 30;
        assert_eq!(matching_step(secret, "081804", now), Some(step));
        assert_eq!(matching_step(secret, &code_at(secret, now - 30).unwrap(), now), Some(step - 1));
        assert_eq!(matching_step(secret, &code_at(secret, now + 30).unwrap(), now), Some(step + 1));
        assert_eq!(matching_step(secret, &code_at(secret, now - 90).unwrap(), now), None, "two steps old");
        assert_eq!(matching_step(secret, "12345", now), None);
        assert_eq!(matching_step(secret, "abcdef", now), None);
        let url = otpauth_url(secret, "Portcullis", "alice").unwrap();
        assert!(url.starts_with("otpauth://totp/Portcullis:alice?"), "{url}");
        assert!(url.contains(&format!("secret={}", secret_base32(secret))), "{url}");
    }
}
