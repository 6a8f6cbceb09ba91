//! LDIF import (placeholder signature; being implemented).

use std::path::Path;

use crate::config::Config;
use crate::model::Actor;
use crate::store::Store;

/// Imports `file`.
///
/// # Errors
/// Always, until implemented.
pub async fn import_file(_config: &Config, _store: &Store, file: &Path, _dry_run: bool, _actor: &Actor) -> anyhow::Result<String> {
    anyhow::bail!("LDIF import of {} is not available yet", file.display())
}
