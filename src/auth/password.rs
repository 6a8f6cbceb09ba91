//! Password hashing and verification. New hashes are argon2id with OWASP's
//! settings (m=19 MiB, t=2, p=1). Imported hashes in OpenLDAP's formats
//! (`{ARGON2}`, `{SSHA}`, `{SHA}`, `{SSHA256}`, `{SSHA512}`, `{CRYPT}` with
//! sha512/sha256-crypt or bcrypt) verify as they are and report that they
//! should be re-hashed. These functions are CPU-bound: call them off the
//! async runtime (see [`super::Authenticator`]).

use argon2::password_hash::PasswordHash;
use argon2::password_hash::rand_core::{OsRng, RngCore};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD};
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

/// OWASP 2023 argon2id settings: m=19456 KiB, t=2, p=1, 32-byte output.
const M_COST: u32 = 19 * 1024;
const T_COST: u32 = 2;
const P_COST: u32 = 1;
const OUTPUT_LEN: usize = 32;
/// Largest memory cost accepted from an imported hash (256 MiB).
const MAX_M_COST: u32 = 256 * 1024;

/// Working memory for argon2, kept by a hashing worker between hashes so
/// each hash does not fault in 19 MiB of fresh pages.
pub type Memory = Option<Vec<Block>>;

/// Runs argon2 into `out`, reusing `memory` when it has the right size.
fn argon2_into(
    alg: Algorithm,
    version: Version,
    params: Params,
    password: &[u8],
    salt: &[u8],
    out: &mut [u8],
    memory: &mut Memory,
) -> bool {
    let need = params.block_count();
    let blocks = memory.get_or_insert_with(Vec::new);
    if blocks.len() != need {
        *blocks = vec![Block::default(); need];
    }
    Argon2::new(alg, version, params).hash_password_into_with_memory(password, salt, out, blocks.as_mut_slice()).is_ok()
}

/// Hashes a password with argon2id and a random salt, as a PHC string.
///
/// # Errors
/// Only if the password exceeds [`MAX_PASSWORD_LEN`] or argon2 rejects it.
pub fn hash_password(password: &str) -> Result<String, String> {
    hash_password_with(password, &mut None)
}

/// [`hash_password`] with reusable working memory.
///
/// # Errors
/// As [`hash_password`].
pub fn hash_password_with(password: &str, memory: &mut Memory) -> Result<String, String> {
    if password.len() > MAX_PASSWORD_LEN {
        return Err(format!("password longer than {MAX_PASSWORD_LEN} bytes"));
    }
    let mut salt = [0u8; 16];
    OsRng.fill_bytes(&mut salt);
    let params = Params::new(M_COST, T_COST, P_COST, Some(OUTPUT_LEN)).map_err(|e| e.to_string())?;
    let mut out = [0u8; OUTPUT_LEN];
    if !argon2_into(Algorithm::Argon2id, Version::V0x13, params, password.as_bytes(), &salt, &mut out, memory) {
        return Err("cannot hash password".into());
    }
    Ok(format!(
        "$argon2id$v=19$m={M_COST},t={T_COST},p={P_COST}${}${}",
        STANDARD_NO_PAD.encode(salt),
        STANDARD_NO_PAD.encode(out)
    ))
}

/// Checks `password` against `stored` in any supported scheme, in constant
/// time with respect to the password where the scheme allows.
pub fn verify_password(stored: &str, password: &str) -> Verdict {
    verify_password_with(stored, password, &mut None)
}

/// [`verify_password`] with reusable working memory.
pub fn verify_password_with(stored: &str, password: &str, memory: &mut Memory) -> Verdict {
    if password.is_empty() || password.len() > MAX_PASSWORD_LEN {
        return Verdict::Mismatch;
    }
    let (scheme, rest) = split_scheme(stored);
    let ok = match scheme.as_deref() {
        None | Some("ARGON2") => return verify_argon2(rest, password, memory),
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

fn verify_argon2(phc: &str, password: &str, memory: &mut Memory) -> Verdict {
    let Some((ok, current)) = check_argon2(phc, password, memory) else {
        return Verdict::Mismatch;
    };
    match (ok, current) {
        (false, _) => Verdict::Mismatch,
        (true, true) => Verdict::Match,
        (true, false) => Verdict::MatchNeedsRehash,
    }
}

/// Recomputes a PHC argon2 hash with its own parameters: (matches, is at current settings).
fn check_argon2(phc: &str, password: &str, memory: &mut Memory) -> Option<(bool, bool)> {
    let parsed = PasswordHash::new(phc).ok()?;
    let alg = Algorithm::try_from(parsed.algorithm).ok()?;
    let version = match parsed.version {
        Some(v) => Version::try_from(v).ok()?,
        None => Version::V0x10,
    };
    let decimal = |name: &str| parsed.params.get_decimal(name);
    let (m, t, p) = (decimal("m")?, decimal("t")?, decimal("p")?);
    if m > MAX_M_COST {
        return None;
    }
    let expected = parsed.hash?;
    let expected = expected.as_bytes();
    let mut salt_buf = [0u8; 64];
    let salt = parsed.salt?.decode_b64(&mut salt_buf).ok()?;
    let params = Params::new(m, t, p, Some(expected.len())).ok()?;
    let mut out = vec![0u8; expected.len()];
    if !argon2_into(alg, version, params, password.as_bytes(), salt, &mut out, memory) {
        return None;
    }
    let ok = bool::from(out.as_slice().ct_eq(expected));
    let current = alg == Algorithm::Argon2id && version == Version::V0x13 && (m, t, p) == (M_COST, T_COST, P_COST);
    Some((ok, current))
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
        // OpenLDAP's {ARGON2} prefix around current parameters needs no re-hash.
        assert_eq!(verify_password(&format!("{{ARGON2}}{h}"), "correct horse"), Verdict::Match);
        // The reference implementation accepts our PHC strings, and we accept its.
        use argon2::password_hash::{PasswordHasher, PasswordVerifier, SaltString};
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(Argon2::default().verify_password(b"correct horse", &parsed).is_ok());
        let theirs =
            Argon2::default().hash_password(b"pw-theirs", &SaltString::generate(&mut OsRng)).unwrap().to_string();
        assert_eq!(verify_password(&theirs, "pw-theirs"), Verdict::Match);
        // Other parameters verify, and ask to be upgraded.
        let weak = Argon2::new(Algorithm::Argon2i, Version::V0x13, Params::new(4096, 1, 1, None).unwrap())
            .hash_password(b"pw-weak", &SaltString::generate(&mut OsRng))
            .unwrap()
            .to_string();
        let mut memory = None;
        assert_eq!(verify_password_with(&weak, "pw-weak", &mut memory), Verdict::MatchNeedsRehash);
        assert_eq!(verify_password_with(&h, "correct horse", &mut memory), Verdict::Match, "memory is resized");
        assert_eq!(verify_password_with(&weak, "wrong", &mut memory), Verdict::Mismatch);
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
