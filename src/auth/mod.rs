//! Authentication core: password verification off the async runtime behind
//! a semaphore (so a bind storm cannot starve searches), plus lockout.
//!
//! **Architecture Invariant:** passwords never reach a log line or an error
//! message; every failure looks the same to the client.

pub mod lockout;
pub mod password;

use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Semaphore, oneshot};

pub use lockout::{Lockout, LockoutPolicy};
pub use password::Verdict;

/// A hashing worker frees its 19 MiB of argon2 memory after this long
/// without work. Workers take turns waiting on the queue, so all of them
/// have freed theirs after at most (workers × this).
const IDLE_RELEASE: Duration = Duration::from_secs(1);

enum Job {
    Verify { stored: String, password: String, reply: oneshot::Sender<Verdict> },
    Hash { password: String, reply: oneshot::Sender<Result<String, String>> },
}

/// Runs password hashing and verification on a few dedicated threads, never
/// on the async runtime. Each thread keeps its argon2 working memory between
/// jobs (fresh 19 MiB blocks cost as much in page faults as the hash itself)
/// and frees it when idle, so a quiet server stays small.
#[derive(Debug, Clone)]
pub struct Hasher {
    jobs: mpsc::Sender<Job>,
    /// One permit per worker: callers wait here, asynchronously, for a free worker.
    permits: Arc<Semaphore>,
}

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Job::Verify { .. } => "Job::Verify",
            Job::Hash { .. } => "Job::Hash",
        })
    }
}

impl Hasher {
    /// A hasher with `concurrency` worker threads (0 = one per core).
    pub fn new(concurrency: usize) -> Self {
        let n = if concurrency == 0 {
            std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get)
        } else {
            concurrency
        };
        let (jobs, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..n {
            let rx = Arc::clone(&rx);
            let spawned = std::thread::Builder::new().name(format!("argon2-{i}")).spawn(move || worker(&rx));
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Self { jobs, permits: Arc::new(Semaphore::new(n)) }
    }

    /// Checks a password against a stored hash.
    pub async fn verify(&self, stored: String, password: String) -> Verdict {
        let Ok(_permit) = self.permits.acquire().await else { return Verdict::Mismatch };
        let (reply, answer) = oneshot::channel();
        if self.jobs.send(Job::Verify { stored, password, reply }).is_err() {
            return Verdict::Mismatch;
        }
        answer.await.unwrap_or(Verdict::Mismatch)
    }

    /// Hashes a password with argon2id.
    ///
    /// # Errors
    /// The password is too long, or the workers are gone.
    pub async fn hash(&self, password: String) -> Result<String, String> {
        let _permit = self.permits.acquire().await.map_err(|e| e.to_string())?;
        let (reply, answer) = oneshot::channel();
        self.jobs.send(Job::Hash { password, reply }).map_err(|_| "password hashing is unavailable".to_string())?;
        answer.await.map_err(|_| "password hashing failed".to_string())?
    }
}

/// One hashing thread: runs jobs until every [`Hasher`] handle is dropped.
fn worker(rx: &Mutex<mpsc::Receiver<Job>>) {
    let mut memory: password::Memory = None;
    loop {
        let next = match rx.lock() {
            Ok(rx) => rx.recv_timeout(IDLE_RELEASE),
            Err(_) => return,
        };
        match next {
            Ok(Job::Verify { stored, password, reply }) => {
                let _ = reply.send(password::verify_password_with(&stored, &password, &mut memory));
            }
            Ok(Job::Hash { password, reply }) => {
                let _ = reply.send(password::hash_password_with(&password, &mut memory));
            }
            Err(RecvTimeoutError::Timeout) => memory = None,
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}
