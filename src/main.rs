//! The `portcullis` binary: parses the command line and runs it.

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> std::process::ExitCode {
    release_large_allocations();
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Makes glibc serve large blocks (argon2id's 19 MiB per hash) with mmap and
/// return them on free. By default glibc raises its mmap threshold after the
/// first such free and then keeps 19 MiB per thread arena resident for ever:
/// a few concurrent binds left the server at ~170 MB RSS instead of ~15 MB.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn release_large_allocations() {
    // SAFETY: mallopt only adjusts allocator tunables; it is called once,
    // before any other thread exists, with a valid parameter and value.
    #[allow(unsafe_code, reason = "one allocator tunable, set before threads start")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
    portcullis::identity::set_release_memory_hook(trim_heap);
}

/// Returns free heap pages to the OS after a directory snapshot is replaced
/// (the old snapshot's many small blocks otherwise stay resident).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // SAFETY: malloc_trim only releases free memory; it is thread-safe.
    #[allow(unsafe_code, reason = "glibc's malloc_trim has no safe wrapper")]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn release_large_allocations() {}

async fn run() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("PORTCULLIS_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .with_writer(std::io::stderr)
        .init();
    let cli = portcullis::cli::Cli::parse();
    match portcullis::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
