//! Password hashing and verification. New hashes are argon2id with OWASP's
//! settings (m=19 MiB, t=2, p=1). Imported hashes in OpenLDAP's formats
//! (`{ARGON2}`, `{SSHA}`, `{SHA}`, `{SSHA256}`, `{SSHA512}`, `{CRYPT}` with
//! sha512/sha256-crypt or bcrypt) verify as they are and report that they
//! should be re-hashed. These functions are CPU-bound: call them off the
//! async runtime (see [`super::Authenticator`]).

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

/// Longest password accepted; longer input is rejected before hashing.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// The outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Wrong password, or a hash we cannot read.
    Mismatch,
    /// Right password; the hash is current.
    Match,
    /// Right password; the hash is of an older scheme and should be replaced.
    MatchNeedsRehash,
}

fn argon2() -> Argon2<'static> {
    // OWASP 2023: m=19456 KiB, t=2, p=1. These constants are valid by construction.
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes a password with argon2id and a random salt, as a PHC string.
///
/// # Errors
/// Only if the password exceeds [`MAX_PASSWORD_LEN`] or argon2 rejects it.
pub fn hash_password(password: &str) -> Result<String, String> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(format!("password longer than {MAX_PASSWORD_LEN} bytes"));
    }
    let salt = SaltString::generate(&mut OsRng);
    argon2()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| format!("cannot hash password: {e}"))
}

/// Checks `password` against `stored` in any supported scheme, in constant
/// time with respect to the password where the scheme allows.
pub fn verify_password(stored: &str, password: &str) -> Verdict {
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return Verdict::Mismatch;
    }
    let (scheme, rest) = split_scheme(stored);
    let ok = match scheme.as_deref() {
        None | Some("ARGON2") => return verify_argon2(rest, password, scheme.is_some()),
        Some("SSHA") => salted_digest::<Sha1>(rest, password, 20),
        Some("SSHA256") => salted_digest::<Sha256>(rest, password, 32),
        Some("SSHA512") => salted_digest::<Sha512>(rest, password, 64),
        Some("SHA") => plain_digest::<Sha1>(rest, password),
        Some("SHA256") => plain_digest::<Sha256>(rest, password),
        Some("SHA512") => plain_digest::<Sha512>(rest, password),
        Some("CRYPT") => verify_crypt(rest, password),
        Some(_) => false,
    };
    if ok { Verdict::MatchNeedsRehash } else { Verdict::Mismatch }
}

/// Whether `stored` is in a scheme this module can verify.
pub fn is_supported_hash(stored: &str) -> bool {
    let (scheme, rest) = split_scheme(stored);
    match scheme.as_deref() {
        None | Some("ARGON2") => PasswordHash::new(rest).is_ok_and(|h| h.algorithm.as_str().starts_with("argon2")),
        Some("SSHA" | "SSHA256" | "SSHA512" | "SHA" | "SHA256" | "SHA512") => STANDARD.decode(rest).is_ok(),
        Some("CRYPT") => ["$6$", "$5$", "$2a$", "$2b$", "$2y$"].iter().any(|p| rest.starts_with(p)),
        Some(_) => false,
    }
}

/// Splits `{SCHEME}rest` into an upper-cased scheme and the rest.
fn split_scheme(stored: &str) -> (Option<String>, &str) {
    if let Some(body) = stored.strip_prefix('{') {
        if let Some(end) = body.find('}') {
            return (Some(body[..end].to_ascii_uppercase()), &body[end + 1..]);
        }
    }
    (None, stored)
}

fn verify_argon2(phc: &str, password: &str, imported: bool) -> Verdict {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return Verdict::Mismatch;
    };
    // Verify with the parameters recorded in the hash itself.
    if Argon2::default().verify_password(password.as_bytes(), &parsed).is_err() {
        return Verdict::Mismatch;
    }
    let current = !imported
        && parsed.algorithm.as_str() == "argon2id"
        && parsed.params.get_decimal("m") == Some(19 * 1024)
        && parsed.params.get_decimal("t") == Some(2)
        && parsed.params.get_decimal("p") == Some(1);
    if current { Verdict::Match } else { Verdict::MatchNeedsRehash }
}

fn salted_digest<D: Digest>(b64: &str, password: &str, digest_len: usize) -> bool {
    let Ok(raw) = STANDARD.decode(b64.trim()) else { return false };
    if raw.len() < digest_len {
        return false;
    }
    let (expected, salt) = raw.split_at(digest_len);
    let mut hasher = D::new();
    hasher.update(password.as_bytes());
    hasher.update(salt);
    hasher.finalize().as_slice().ct_eq(expected).into()
}

fn plain_digest<D: Digest>(b64: &str, password: &str) -> bool {
    let Ok(expected) = STANDARD.decode(b64.trim()) else { return false };
    D::digest(password.as_bytes()).as_slice().ct_eq(&expected).into()
}

fn verify_crypt(hash: &str, password: &str) -> bool {
    if hash.starts_with("$6$") {
        sha_crypt::sha512_check(password, hash).is_ok()
    } else if hash.starts_with("$5$") {
        sha_crypt::sha256_check(password, hash).is_ok()
    } else if hash.starts_with("$2") {
        bcrypt::verify(password, hash).unwrap_or(false)
    } else {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_round_trip() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"));
        assert_eq!(verify_password(&h, "correct horse"), Verdict::Match);
        assert_eq!(verify_password(&h, "wrong"), Verdict::Mismatch);
        assert_eq!(verify_password(&h, ""), Verdict::Mismatch);
        assert_eq!(verify_password(&format!("{{ARGON2}}{h}"), "correct horse"), Verdict::MatchNeedsRehash);
    }

    #[test]
    fn imported_schemes() {
        // slappasswd -h {SSHA} -s secret, with salt "salt"
        let mut d = Sha1::new();
        d.update(b"secret");
        d.update(b"salt");
        let mut raw = d.finalize().to_vec();
        raw.extend_from_slice(b"salt");
        let ssha = format!("{{SSHA}}{}", STANDARD.encode(raw));
        assert!(is_supported_hash(&ssha));
        assert_eq!(verify_password(&ssha, "secret"), Verdict::MatchNeedsRehash);
        assert_eq!(verify_password(&ssha, "Secret"), Verdict::Mismatch);

        let params = sha_crypt::Sha512Params::new(5000).unwrap();
        let crypt = format!("{{CRYPT}}{}", sha_crypt::sha512_simple("secret", &params).unwrap());
        assert!(is_supported_hash(&crypt));
        assert_eq!(verify_password(&crypt, "secret"), Verdict::MatchNeedsRehash);
        assert_eq!(verify_password(&crypt, "nope"), Verdict::Mismatch);

        let bc = format!("{{CRYPT}}{}", bcrypt::hash("secret", 4).unwrap());
        assert_eq!(verify_password(&bc, "secret"), Verdict::MatchNeedsRehash);
        assert_eq!(verify_password(&bc, "nope"), Verdict::Mismatch);

        assert!(!is_supported_hash("{MD5}abc"));
        assert_eq!(verify_password("{MD5}abc", "x"), Verdict::Mismatch);
        assert_eq!(verify_password("garbage", "x"), Verdict::Mismatch);
    }
}
