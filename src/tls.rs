//! TLS material: the configured certificate, or a private CA and server
//! certificate generated on first start in `DATA_DIR/tls/` (clients trust
//! `ca.pem`). One crypto provider (aws-lc-rs) serves TLS and key generation.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use rustls::ServerConfig;

use crate::config::Config;

/// Paths of the generated files.
#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub ca_cert: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TlsPaths {
    /// Where generated material lives under `data_dir`.
    pub fn generated(data_dir: &Path) -> Self {
        let dir = data_dir.join("tls");
        Self { ca_cert: dir.join("ca.pem"), cert: dir.join("server.pem"), key: dir.join("server-key.pem") }
    }
}

/// Builds the rustls server configuration, generating certificates if needed.
///
/// # Errors
/// Unreadable or invalid certificate files, or a failed generation.
pub fn server_config(config: &Config) -> anyhow::Result<Arc<ServerConfig>> {
    let (cert_path, key_path) = match (&config.tls.cert_file, &config.tls.key_file) {
        (Some(c), Some(k)) => (c.clone(), k.clone()),
        _ => {
            let paths = TlsPaths::generated(&config.data_dir);
            if !paths.cert.exists() || !paths.key.exists() {
                generate(&paths, &hostnames(config))?;
                tracing::info!(ca = %paths.ca_cert.display(), "generated a private CA and server certificate");
            }
            (paths.cert, paths.key)
        }
    };
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(
        std::fs::File::open(&cert_path).with_context(|| format!("cannot open {}", cert_path.display()))?,
    ))
    .collect::<Result<Vec<_>, _>>()
    .with_context(|| format!("invalid certificate file {}", cert_path.display()))?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(
        std::fs::File::open(&key_path).with_context(|| format!("cannot open {}", key_path.display()))?,
    ))
    .with_context(|| format!("invalid key file {}", key_path.display()))?
    .with_context(|| format!("no private key in {}", key_path.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("certificate and key do not match")?;
    Ok(Arc::new(server))
}

fn hostnames(config: &Config) -> Vec<String> {
    if !config.tls.hostnames.is_empty() {
        return config.tls.hostnames.clone();
    }
    let mut names = vec!["localhost".to_string(), "127.0.0.1".to_string(), "::1".to_string()];
    if let Ok(h) = std::fs::read_to_string("/etc/hostname") {
        let h = h.trim();
        if !h.is_empty() && !names.iter().any(|n| n == h) {
            names.push(h.to_string());
        }
    }
    names
}

fn generate(paths: &TlsPaths, names: &[String]) -> anyhow::Result<()> {
    let dir = paths.cert.parent().context("certificate path has no directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name.push(DnType::CommonName, "Portcullis private CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let ca_cert = ca.self_signed(&ca_key)?;

    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(DnType::CommonName, names.first().map_or("localhost", String::as_str));
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;

    write_private(&dir.join("ca-key.pem"), &ca_key.serialize_pem())?;
    write_private(&paths.key, &key.serialize_pem())?;
    std::fs::write(&paths.ca_cert, ca_cert.pem())?;
    std::fs::write(&paths.cert, format!("{}{}", cert.pem(), ca_cert.pem()))?;
    Ok(())
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.write_all(contents.as_bytes())?;
    Ok(())
}
