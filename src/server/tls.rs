//! wss:// set-up: the certificate and key from PEM files, with an error a
//! person can act on for every way they can be wrong, and the slot that
//! SIGHUP reloads them into. The TLS itself runs in the engine
//! (`ringecho_proto::tls`); a shell only picks the configuration in the
//! slot when it accepts.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

/// Where the certificate chain and key come from, and the configuration
/// built from them now.
#[derive(Debug)]
pub struct TlsSlot {
    pub cert: PathBuf,
    pub key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

impl TlsSlot {
    /// Load the files; the error says which file and what is wrong.
    pub fn load(cert: &Path, key: &Path) -> Result<TlsSlot, String> {
        Ok(TlsSlot {
            current: RwLock::new(server_config(cert, key)?),
            cert: cert.to_owned(),
            key: key.to_owned(),
        })
    }

    /// The configuration a connection accepted now uses.
    pub fn current(&self) -> Arc<ServerConfig> {
        match self.current.read() {
            Ok(c) => c.clone(),
            // A reload never panics while holding the lock; if one did,
            // the configuration inside is still whole.
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Read the files again (SIGHUP). New connections get the new
    /// certificate; open ones keep the session they have. On error the
    /// old configuration stays.
    pub fn reload(&self) -> Result<(), String> {
        let fresh = server_config(&self.cert, &self.key)?;
        match self.current.write() {
            Ok(mut c) => *c = fresh,
            Err(poisoned) => *poisoned.into_inner() = fresh,
        }
        Ok(())
    }
}

/// TLS 1.2 and 1.3 with rustls's safe defaults and the ring provider, ALPN
/// `http/1.1` (a WebSocket handshake is HTTP/1.1, RFC 6455 §4.1).
fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let chain = read_chain(cert)?;
    let key_der = read_key(key)?;
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?
            .with_no_client_auth()
            .with_single_cert(chain, key_der)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => format!(
                    "--tls-key {}: this key does not belong to the certificate in {}",
                    key.display(),
                    cert.display()
                ),
                e => format!(
                    "--tls-cert {} / --tls-key {}: {e}",
                    cert.display(),
                    key.display()
                ),
            })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    // Kernel TLS needs the traffic keys out of rustls once the handshake
    // is done; they are in this process's memory either way.
    config.enable_secret_extraction = true;
    let config = Arc::new(config);
    // Every connection will make one of these; find out now if it cannot.
    rustls::ServerConnection::new(config.clone()).map_err(|e| format!("TLS: {e}"))?;
    Ok(config)
}

fn read(flag: &str, path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| {
        let why = match e.kind() {
            std::io::ErrorKind::NotFound => "no such file".to_owned(),
            std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
            _ => e.to_string(),
        };
        format!("{flag} {}: cannot read it: {why}", path.display())
    })
}

/// The certificate and any chain after it, leaf first (RFC 8446 §4.4.2).
fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read("--tls-cert", path)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--tls-cert {}: not valid PEM: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "--tls-cert {}: no certificate in it (expected -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read("--tls-key", path)?;
    // An encrypted key (PKCS #8 "ENCRYPTED PRIVATE KEY", or OpenSSL's
    // legacy "Proc-Type: 4,ENCRYPTED") is a section rustls does not take:
    // say what it is rather than that no key was found.
    if pem.windows(9).any(|w| w == b"ENCRYPTED") {
        return Err(format!(
            "--tls-key {}: the key is encrypted; give ringecho an unencrypted key \
             (openssl pkey -in {} -out key.pem) readable only by its user",
            path.display(),
            path.display()
        ));
    }
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        pem::Error::NoItemsFound => format!(
            "--tls-key {}: no private key in it (expected -----BEGIN PRIVATE KEY-----, \
             RSA PRIVATE KEY or EC PRIVATE KEY)",
            path.display()
        ),
        e => format!("--tls-key {}: not a usable key: {e}", path.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/data/tls")
            .join(name)
    }

    #[test]
    fn a_certificate_chain_and_its_key_load() {
        for cert in ["cert.pem", "chain.pem"] {
            let slot = TlsSlot::load(&data(cert), &data("key.pem")).unwrap();
            assert_eq!(slot.current().alpn_protocols, vec![b"http/1.1".to_vec()]);
        }
    }

    #[test]
    fn each_wrong_file_gets_an_error_naming_it_and_what_is_wrong() {
        let err = |cert: &str, key: &str| TlsSlot::load(&data(cert), &data(key)).unwrap_err();
        let e = err("missing.pem", "key.pem");
        assert!(
            e.contains("--tls-cert") && e.contains("no such file"),
            "{e}"
        );
        let e = err("cert.pem", "missing.pem");
        assert!(e.contains("--tls-key") && e.contains("no such file"), "{e}");
        let e = err("cert.pem", "other-key.pem");
        assert!(e.contains("does not belong to the certificate"), "{e}");
        let e = err("cert.pem", "encrypted-key.pem");
        assert!(e.contains("the key is encrypted"), "{e}");
        let e = err("key.pem", "key.pem");
        assert!(e.contains("no certificate in it"), "{e}");
        let e = err("cert.pem", "cert.pem");
        assert!(e.contains("no private key in it"), "{e}");
    }

    #[test]
    fn a_reload_that_fails_keeps_the_configuration_it_had() {
        let dir = std::env::temp_dir().join(format!("ringecho-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::copy(data("cert.pem"), &cert).unwrap();
        std::fs::copy(data("key.pem"), &key).unwrap();
        let slot = TlsSlot::load(&cert, &key).unwrap();
        let before = slot.current();
        std::fs::copy(data("other-key.pem"), &key).unwrap();
        assert!(slot.reload().is_err());
        assert!(Arc::ptr_eq(&before, &slot.current()));
        std::fs::copy(data("key.pem"), &key).unwrap();
        slot.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &slot.current()));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
