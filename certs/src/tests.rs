use std::os::unix::fs::symlink;

use rcgen::{CertificateParams, KeyPair};

use super::*;

/// A directory removed on drop.
struct Dir(PathBuf);

impl Dir {
    fn new(label: &str) -> Self {
        let path = std::env::temp_dir().join(format!(
            "sb-certs-{label}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        Self(path)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A self-signed certificate for `name`: (certificate PEM, key PEM, certificate DER).
fn pair(name: &str) -> (String, String, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

fn served(resolver: &ReloadingCert) -> Vec<u8> {
    resolver.current().cert[0].to_vec()
}

#[test]
fn an_unusable_pair_is_refused_at_start_without_naming_the_key() {
    let dir = Dir::new("start");
    let (a_cert, a_key, _) = pair("a");
    let (b_cert, _, _) = pair("b");
    let (cert, key) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));

    std::fs::write(&cert, &b_cert).unwrap();
    std::fs::write(&key, &a_key).unwrap();
    let error = ReloadingCert::load(&cert, &key).unwrap_err().to_string();
    assert!(error.contains("cannot be used together"), "{error}");
    assert!(!error.contains("PRIVATE KEY"), "{error}");

    std::fs::write(&cert, "not a certificate").unwrap();
    let error = ReloadingCert::load(&cert, &key).unwrap_err().to_string();
    assert!(error.contains("holds no certificate"), "{error}");

    std::fs::write(&cert, &a_cert).unwrap();
    std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAAAA\n").unwrap();
    let error = ReloadingCert::load(&cert, &key).unwrap_err().to_string();
    assert!(error.contains("no valid PEM private key"), "{error}");

    let error = ReloadingCert::load(&dir.0.join("missing"), &key)
        .unwrap_err()
        .to_string();
    assert!(error.contains("cannot read"), "{error}");
}

#[test]
fn a_check_takes_a_new_pair_and_refuses_a_bad_one_keeping_the_old() {
    let dir = Dir::new("check");
    let (a_cert, a_key, a_der) = pair("a");
    let (b_cert, b_key, b_der) = pair("b");
    let (cert, key) = (dir.0.join("tls.crt"), dir.0.join("tls.key"));
    std::fs::write(&cert, &a_cert).unwrap();
    std::fs::write(&key, &a_key).unwrap();
    let resolver = ReloadingCert::load(&cert, &key).unwrap();
    assert_eq!(served(&resolver), a_der);
    assert_eq!(resolver.check(), Checked::Unchanged);

    // A new certificate with the old key: refused once, the old pair stays.
    std::fs::write(&cert, &b_cert).unwrap();
    assert!(matches!(resolver.check(), Checked::Refused(_)));
    assert_eq!(
        resolver.check(),
        Checked::Unchanged,
        "refused once per content"
    );
    assert_eq!(served(&resolver), a_der);

    // Garbage: refused, the old pair stays.
    std::fs::write(&cert, "garbage").unwrap();
    assert!(matches!(resolver.check(), Checked::Refused(_)));
    assert_eq!(served(&resolver), a_der);

    // A missing file: refused once.
    std::fs::remove_file(&cert).unwrap();
    assert!(matches!(resolver.check(), Checked::Refused(_)));
    assert_eq!(resolver.check(), Checked::Unchanged);
    assert_eq!(served(&resolver), a_der);
    assert_eq!(resolver.refused(), 3);

    // The whole new pair: served.
    std::fs::write(&cert, &b_cert).unwrap();
    std::fs::write(&key, &b_key).unwrap();
    assert_eq!(resolver.check(), Checked::Loaded);
    assert_eq!(served(&resolver), b_der);
    assert_eq!(resolver.loaded(), 1);
}

#[test]
fn a_kubernetes_style_symlink_swap_is_seen() {
    // The kubelet writes a Secret volume as tls.crt -> ..data/tls.crt, ..data -> a
    // timestamped directory, and renews by pointing ..data at a new directory.
    let dir = Dir::new("symlink");
    let (a_cert, a_key, a_der) = pair("a");
    let (b_cert, b_key, b_der) = pair("b");
    for (version, cert, key) in [("v1", &a_cert, &a_key), ("v2", &b_cert, &b_key)] {
        std::fs::create_dir(dir.0.join(version)).unwrap();
        std::fs::write(dir.0.join(version).join("tls.crt"), cert).unwrap();
        std::fs::write(dir.0.join(version).join("tls.key"), key).unwrap();
    }
    symlink("v1", dir.0.join("..data")).unwrap();
    symlink("..data/tls.crt", dir.0.join("tls.crt")).unwrap();
    symlink("..data/tls.key", dir.0.join("tls.key")).unwrap();
    let resolver = ReloadingCert::load(&dir.0.join("tls.crt"), &dir.0.join("tls.key")).unwrap();
    assert_eq!(served(&resolver), a_der);

    symlink("v2", dir.0.join("..data_tmp")).unwrap();
    std::fs::rename(dir.0.join("..data_tmp"), dir.0.join("..data")).unwrap();
    assert_eq!(resolver.check(), Checked::Loaded);
    assert_eq!(served(&resolver), b_der);
}

#[test]
fn a_watched_file_reports_changes_only() {
    let dir = Dir::new("watched");
    let path = dir.0.join("ca.pem");
    std::fs::write(&path, "one").unwrap();
    let mut file = WatchedFile::new(&path);
    assert_eq!(file.changed().unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(file.changed().unwrap(), None);
    std::fs::write(&path, "two").unwrap();
    assert_eq!(file.changed().unwrap().as_deref(), Some(&b"two"[..]));

    let big = vec![b'x'; MAX_FILE_BYTES as usize + 1];
    std::fs::write(&path, big).unwrap();
    assert!(matches!(file.changed(), Err(Error::TooLarge { .. })));
}
