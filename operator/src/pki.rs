//! `switchboard-operator dev-pki`: a throwaway CA, a server certificate for the config
//! service and a bearer token, for running the operator and proxies outside a cluster
//! (a laptop, the tests). In a cluster the Helm chart provides these from Secrets.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

/// The files `generate` writes.
#[derive(Debug, Clone)]
pub struct DevPki {
    /// CA certificate proxies trust (`--operator-ca-file`).
    pub ca: PathBuf,
    /// Server certificate and key (`--tls-cert`, `--tls-key`).
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Bearer token (`--token-file` and `--operator-token-file`).
    pub token: PathBuf,
}

/// Writes `ca.pem`, `tls.crt`, `tls.key` and `token` into `dir`; the certificate is
/// valid for `hosts` (DNS names or IP addresses). Key and token are mode 0600.
pub fn generate(dir: &Path, hosts: &[String]) -> anyhow::Result<DevPki> {
    fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "switchboard dev CA");
    let ca_cert = ca_params.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate()?;
    let mut server_params = CertificateParams::new(hosts.to_vec())?;
    server_params
        .distinguished_name
        .push(DnType::CommonName, "switchboard-operator");
    let server_cert = server_params.signed_by(&server_key, &issuer)?;

    let token: String = std::iter::repeat_with(fastrand::alphanumeric)
        .take(48)
        .collect();
    let pki = DevPki {
        ca: dir.join("ca.pem"),
        cert: dir.join("tls.crt"),
        key: dir.join("tls.key"),
        token: dir.join("token"),
    };
    write(&pki.ca, ca_cert.pem().as_bytes(), 0o644)?;
    write(&pki.cert, server_cert.pem().as_bytes(), 0o644)?;
    write(&pki.key, server_key.serialize_pem().as_bytes(), 0o600)?;
    write(&pki.token, token.as_bytes(), 0o600)?;
    Ok(pki)
}

fn write(path: &Path, contents: &[u8], mode: u32) -> anyhow::Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(contents)?;
    Ok(())
}
