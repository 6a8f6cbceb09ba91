//! Authentication core: password verification off the async runtime behind
//! a semaphore (so a bind storm cannot starve searches), plus lockout.
//!
//! **Architecture Invariant:** passwords never reach a log line or an error
//! message; every failure looks the same to the client.

pub mod lockout;
pub mod password;

use std::sync::Arc;

use tokio::sync::Semaphore;

pub use lockout::{Lockout, LockoutPolicy};
pub use password::Verdict;

/// Runs password hashing and verification on the blocking pool, at most
/// `concurrency` at a time.
#[derive(Debug, Clone)]
pub struct Hasher {
    permits: Arc<Semaphore>,
}

impl Hasher {
    /// A hasher that runs `concurrency` hashes at once (0 = one per core).
    pub fn new(concurrency: usize) -> Self {
        let n = if concurrency == 0 {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        } else {
            concurrency
        };
        Self { permits: Arc::new(Semaphore::new(n)) }
    }

    /// Checks a password against a stored hash.
    pub async fn verify(&self, stored: String, password: String) -> Verdict {
        let Ok(_permit) = self.permits.acquire().await else {
            return Verdict::Mismatch;
        };
        tokio::task::spawn_blocking(move || password::verify_password(&stored, &password))
            .await
            .unwrap_or(Verdict::Mismatch)
    }

    /// Hashes a password with argon2id.
    ///
    /// # Errors
    /// The password is too long, or the worker failed.
    pub async fn hash(&self, password: String) -> Result<String, String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        tokio::task::spawn_blocking(move || password::hash_password(&password))
            .await
            .map_err(|e| format!("hash worker failed: {e}"))?
    }
}
