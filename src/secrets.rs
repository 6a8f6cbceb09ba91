//! Secrets at rest: a 256-bit key in `DATA_DIR/secret.key` (mode 0600,
//! created on first use) seals values with AES-256-GCM before they reach the
//! database, so a copy of the database alone reveals no private key.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::Context;
use aws_lc_rs::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;

/// Seals and opens values with the data directory's secret key.
pub struct Sealer {
    key: LessSafeKey,
    /// HKDF-SHA256 pseudo-random key for purpose-bound subkeys.
    prk: aws_lc_rs::hkdf::Prk,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(..)")
    }
}

impl Sealer {
    /// Loads `DATA_DIR/secret.key`, creating it if absent.
    ///
    /// # Errors
    /// The file cannot be read or written, or has the wrong length.
    pub fn load_or_create(data_dir: &Path) -> anyhow::Result<Self> {
        let path = data_dir.join("secret.key");
        if !path.exists() {
            std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
            let mut key = [0u8; 32];
            SystemRandom::new().fill(&mut key).map_err(|_| anyhow::anyhow!("no randomness"))?;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            f.write_all(&key)?;
        }
        let bytes = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes)
            .map_err(|_| anyhow::anyhow!("{} must hold exactly 32 bytes", path.display()))?;
        let prk = aws_lc_rs::hkdf::Salt::new(aws_lc_rs::hkdf::HKDF_SHA256, b"portcullis secret.key").extract(&bytes);
        Ok(Self { key: LessSafeKey::new(key), prk })
    }

    /// A 256-bit key for one purpose (`label`), derived with HKDF-SHA256 from
    /// `secret.key`, so one file backs several independent keys.
    ///
    /// # Errors
    /// Never in practice (HKDF output length is fixed and valid).
    pub fn derive_key(&self, label: &str) -> anyhow::Result<[u8; 32]> {
        let info = [label.as_bytes()];
        let okm = self.prk.expand(&info, aws_lc_rs::hkdf::HKDF_SHA256).map_err(|_| anyhow::anyhow!("HKDF failed"))?;
        let mut out = [0u8; 32];
        okm.fill(&mut out).map_err(|_| anyhow::anyhow!("HKDF failed"))?;
        Ok(out)
    }

    /// Encrypts `plain`; the result is base64 of nonce ‖ ciphertext ‖ tag.
    ///
    /// # Errors
    /// Only if the system has no randomness.
    pub fn seal(&self, plain: &[u8]) -> anyhow::Result<String> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new().fill(&mut nonce).map_err(|_| anyhow::anyhow!("no randomness"))?;
        let mut buf = plain.to_vec();
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut buf)
            .map_err(|_| anyhow::anyhow!("sealing failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&buf);
        Ok(STANDARD.encode(out))
    }

    /// Decrypts a value from [`Sealer::seal`].
    ///
    /// # Errors
    /// Malformed input, or a value sealed with another key.
    pub fn open(&self, sealed: &str) -> anyhow::Result<Vec<u8>> {
        let raw = STANDARD.decode(sealed).context("sealed value is not base64")?;
        if raw.len() < NONCE_LEN {
            anyhow::bail!("sealed value is too short");
        }
        let (nonce, body) = raw.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| anyhow::anyhow!("bad nonce"))?;
        let mut body = body.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut body)
            .map_err(|_| anyhow::anyhow!("cannot open a sealed value: wrong secret.key?"))?;
        Ok(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_round_trip_and_wrong_key() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let sa = Sealer::load_or_create(a.path()).unwrap();
        let sealed = sa.seal(b"private key").unwrap();
        assert_ne!(sealed.as_bytes(), b"private key");
        assert_eq!(Sealer::load_or_create(a.path()).unwrap().open(&sealed).unwrap(), b"private key");
        assert!(Sealer::load_or_create(b.path()).unwrap().open(&sealed).is_err());
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(a.path().join("secret.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let derived = sa.derive_key("access tokens").unwrap();
        assert_eq!(derived, Sealer::load_or_create(a.path()).unwrap().derive_key("access tokens").unwrap());
        assert_ne!(derived, sa.derive_key("other").unwrap());
        assert_ne!(derived, Sealer::load_or_create(b.path()).unwrap().derive_key("access tokens").unwrap());
    }
}
