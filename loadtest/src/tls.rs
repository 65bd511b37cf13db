//! wss:// for the load generator: the rustls client configuration that
//! `--ca`, `--insecure`, `--tls-server-name` and `--tls-kx` describe, and
//! the calls that drive a `ClientConnection` over a non-blocking socket
//! from the client's own mio loop (no thread, no blocking call).
//!
//! Every connection makes a full handshake: resumption is off, so a
//! handshake-rate run measures what a fresh client costs the server
//! (RFC 8446 §2: a full handshake is an ephemeral key exchange plus the
//! server's CertificateVerify signature; resumption would skip the latter).

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{Resumption, WebPkiServerVerifier};
use rustls::crypto::{ring, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{
    CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, ProtocolVersion,
    RootCertStore, SignatureScheme,
};
use serde::{Deserialize, Serialize};

/// The one application protocol a WebSocket client speaks over TLS
/// (RFC 6455 §4.1: the opening handshake is an HTTP/1.1 upgrade), offered
/// with ALPN (RFC 7301).
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

/// How the server's certificate is judged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Trust {
    /// Certificates from this PEM file are the trust anchors: a CA, or the
    /// server's own (self-signed) certificate.
    Ca(PathBuf),
    /// Any certificate; the handshake signatures are still checked.
    Insecure,
}

/// The key exchange groups offered (RFC 8446 §4.2.7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kx {
    /// rustls's preference: X25519 first, then secp256r1 and secp384r1.
    Default,
    /// secp256r1 only.
    P256,
}

impl Kx {
    pub fn parse(s: &str) -> Option<Kx> {
        match s.to_ascii_lowercase().as_str() {
            "default" | "x25519" => Some(Kx::Default),
            "p256" | "p-256" | "secp256r1" => Some(Kx::P256),
            _ => None,
        }
    }

    /// The value `--tls-kx` takes for this choice.
    pub fn flag(self) -> &'static str {
        match self {
            Kx::Default => "x25519",
            Kx::P256 => "p256",
        }
    }
}

/// What the command line says about TLS; present for wss:// only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    pub trust: Trust,
    /// SNI (RFC 6066 §3) and the name the certificate must be valid for.
    pub server_name: String,
    pub kx: Kx,
}

/// A client configuration shared by every connection of the process.
pub struct TlsClient {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    pub opts: TlsOptions,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl TlsClient {
    pub fn new(opts: &TlsOptions) -> Result<TlsClient, String> {
        let name = ServerName::try_from(opts.server_name.clone()).map_err(|_| {
            format!(
                "--tls-server-name {:?} is neither a DNS name nor an IP address",
                opts.server_name
            )
        })?;
        Ok(TlsClient {
            config: Arc::new(client_config(opts)?),
            name,
            opts: opts.clone(),
        })
    }

    /// A new connection, its ClientHello queued.
    pub fn connect(&self) -> Result<ClientConnection, rustls::Error> {
        ClientConnection::new(Arc::clone(&self.config), self.name.clone())
    }
}

fn provider(kx: Kx) -> CryptoProvider {
    let mut p = ring::default_provider();
    if kx == Kx::P256 {
        p.kx_groups = vec![ring::kx_group::SECP256R1];
    }
    p
}

/// TLS 1.3 and 1.2, ALPN http/1.1, no resumption, no client certificate.
pub fn client_config(opts: &TlsOptions) -> Result<ClientConfig, String> {
    let provider = Arc::new(provider(opts.kx));
    let algs = provider.signature_verification_algorithms;
    let chain = match &opts.trust {
        Trust::Insecure => None,
        Trust::Ca(path) => Some(CaOrPinned::new(path, Arc::clone(&provider))?),
    };
    let verifier: Arc<dyn ServerCertVerifier> = Arc::new(Verifier { chain, algs });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS configuration: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
    config.resumption = Resumption::disabled();
    Ok(config)
}

/// Every certificate in a PEM file.
pub fn load_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let shown = path.display();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("--ca {shown}: {e}"))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("--ca {shown}: {e}"))?;
    if certs.is_empty() {
        return Err(format!(
            "--ca {shown}: no certificate in it (expected PEM \"BEGIN CERTIFICATE\" blocks)"
        ));
    }
    Ok(certs)
}

/// `--ca`: the usual web PKI check against the file's certificates as
/// trust anchors; and, failing that, a certificate the server presents
/// that is byte for byte one of the file's is trusted as itself (pinned).
/// The pin is what lets `--ca` name the self-signed certificate
/// `openssl req -x509` makes: it carries CA:TRUE, which the web PKI
/// refuses in an end-entity certificate. Only an unknown issuer or such a
/// role error is overridden by the pin: the name is still checked, and
/// validity dates, checked before the issuer, still fail the handshake.
#[derive(Debug)]
struct CaOrPinned {
    webpki: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl CaOrPinned {
    fn new(path: &Path, provider: Arc<CryptoProvider>) -> Result<CaOrPinned, String> {
        let certs = load_certificates(path)?;
        let mut roots = RootCertStore::empty();
        for (i, c) in certs.iter().enumerate() {
            roots.add(c.clone()).map_err(|e| {
                format!(
                    "--ca {}: certificate {} cannot be a trust anchor: {e}",
                    path.display(),
                    i + 1
                )
            })?;
        }
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
            .build()
            .map_err(|e| format!("--ca {}: {e}", path.display()))?;
        Ok(CaOrPinned {
            webpki,
            pinned: certs,
        })
    }
}

/// The client's certificate check: `--ca` ([`CaOrPinned`]), or with
/// `--insecure` no judgement of the certificate itself (issuer, name,
/// dates). Either way the server must prove it holds the certificate's
/// key: its handshake signature (RFC 8446 §4.4.3 CertificateVerify; in TLS
/// 1.2 the ServerKeyExchange signature) is verified as usual, so the
/// benchmark does all the client work a real client does but the chain.
#[derive(Debug)]
struct Verifier {
    chain: Option<CaOrPinned>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        let err = match chain.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let overridable = matches!(
            err,
            rustls::Error::InvalidCertificate(
                CertificateError::UnknownIssuer | CertificateError::Other(_)
            )
        );
        if !overridable
            || !chain
                .pinned
                .iter()
                .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Err(err);
        }
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_name(&parsed, server_name)?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}

/// What a completed handshake agreed on.
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Negotiated {
    /// "TLS1.3" or "TLS1.2".
    pub version: String,
    /// IANA name, e.g. "TLS13_AES_256_GCM_SHA384".
    pub cipher_suite: String,
    /// e.g. "X25519", "secp256r1".
    pub kx_group: String,
    /// The ALPN protocol the server chose, if it chose one.
    pub alpn: Option<String>,
}

pub fn version_name(v: ProtocolVersion) -> String {
    match v {
        ProtocolVersion::TLSv1_3 => "TLS1.3".into(),
        ProtocolVersion::TLSv1_2 => "TLS1.2".into(),
        other => format!("{other:?}"),
    }
}

impl Negotiated {
    pub fn of(c: &ClientConnection) -> Negotiated {
        Negotiated {
            version: c.protocol_version().map(version_name).unwrap_or_default(),
            cipher_suite: c
                .negotiated_cipher_suite()
                .map(|s| format!("{:?}", s.suite()))
                .unwrap_or_default(),
            kx_group: c
                .negotiated_key_exchange_group()
                .map(|g| format!("{:?}", g.name()))
                .unwrap_or_default(),
            alpn: c
                .alpn_protocol()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
        }
    }
}

/// The rustls error inside an I/O error from [`read`], when that is
/// what it is.
pub fn tls_error(e: &io::Error) -> Option<&rustls::Error> {
    e.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A rustls error as a line a person can act on: what failed and, for the
/// usual causes, which flag to look at.
pub fn explain(e: &rustls::Error, opts: &TlsOptions) -> String {
    let hint = match e {
        rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => match &opts.trust {
            Trust::Ca(p) => format!(
                " (--ca {} neither signed the server's certificate nor is it)",
                p.display()
            ),
            Trust::Insecure => String::new(),
        },
        rustls::Error::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => format!(
            " (the certificate is not for --tls-server-name {})",
            opts.server_name
        ),
        // webpki's error, passed through by rustls only as "other".
        rustls::Error::InvalidCertificate(CertificateError::Other(o))
            if format!("{o:?}").contains("CaUsedAsEndEntity") =>
        {
            " (the server's certificate is a CA certificate, CA:TRUE, as `openssl req \
             -x509` makes them: it is accepted only when --ca names that very certificate)"
                .into()
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            " (does the server speak TLS on this port?)".into()
        }
        rustls::Error::NoApplicationProtocol => {
            " (the server accepts no ALPN protocol the client offers: http/1.1)".into()
        }
        _ => String::new(),
    };
    format!("TLS handshake failed: {e}{hint}")
}

/// Read plaintext into `buf`: what rustls already decrypted, else what
/// the socket has, decrypted. `Ok(0)` is the peer's close_notify
/// (RFC 8446 §6.1) after all data; an EOF without it is
/// `UnexpectedEof`; `WouldBlock` means the socket is drained (the edge
/// of an edge-triggered poll has been consumed). A TLS error is sent to
/// the peer as its alert and returned inside the I/O error ([`tls_error`]).
pub fn read(
    tls: &mut ClientConnection,
    mut sock: impl Read + Write,
    buf: &mut [u8],
) -> io::Result<usize> {
    loop {
        match tls.reader().read(buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            other => return other,
        }
        // Only called with nothing decrypted left over, so rustls's
        // plaintext buffer can never be the one that is full.
        match tls.read_tls(&mut sock) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        if let Err(e) = tls.process_new_packets() {
            // The alert rustls queued for the peer; it is going away.
            let _ = tls.write_tls(&mut sock);
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
    }
}

/// Hand `tx` to rustls and write records until the socket would block or
/// nothing is left. Returns how many bytes of `tx` rustls took: before the
/// handshake completes it holds them (up to its buffer limit) and sends
/// them once it can.
pub fn write(tls: &mut ClientConnection, mut sock: impl Write, tx: &[u8]) -> io::Result<usize> {
    let mut taken = 0;
    loop {
        while taken < tx.len() {
            let n = tls.writer().write(&tx[taken..])?;
            if n == 0 {
                break;
            }
            taken += n;
        }
        let mut wrote = false;
        while tls.wants_write() {
            match tls.write_tls(&mut sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => wrote = true,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(taken),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        // Records out and rustls's buffer free again: more may fit. With
        // nothing written, rustls is holding the rest until the handshake
        // is done.
        if taken == tx.len() || !wrote {
            return Ok(taken);
        }
    }
}

/// RFC 8446 §6.1: a party MUST send close_notify before closing its write
/// side. Best effort: the connection is about to be dropped.
pub fn close_notify(tls: &mut ClientConnection, mut sock: impl Write) {
    tls.send_close_notify();
    while tls.wants_write() {
        match tls.write_tls(&mut sock) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

    use rustls::pki_types::PrivateKeyDer;
    use rustls::server::{ResolvesServerCert, ServerConfig, ServerConnection};
    use rustls::sign::CertifiedKey;
    use rustls::HandshakeKind;

    use super::*;

    const CA: &str = include_str!("../testdata/ca.pem");
    const LEAF: &str = include_str!("../testdata/leaf.pem");
    const LEAF_KEY: &str = include_str!("../testdata/leaf.key");
    const SELF: &str = include_str!("../testdata/self.pem");
    const SELF_KEY: &str = include_str!("../testdata/self.key");
    const OTHER: &str = include_str!("../testdata/other.pem");

    fn testdata(name: &str) -> PathBuf {
        PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/testdata")).join(name)
    }

    fn opts(trust: Trust, name: &str, kx: Kx) -> TlsOptions {
        TlsOptions {
            trust,
            server_name: name.into(),
            kx,
        }
    }

    fn ca(file: &str) -> TlsOptions {
        opts(Trust::Ca(testdata(file)), "localhost", Kx::Default)
    }

    fn server_config(
        cert: &str,
        key: &str,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ServerConfig> {
        let certs = vec![CertificateDer::from_pem_slice(cert.as_bytes()).unwrap()];
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let mut c = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(versions)
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
        c.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        Arc::new(c)
    }

    fn tls13(cert: &str, key: &str) -> Arc<ServerConfig> {
        server_config(cert, key, &[&rustls::version::TLS13])
    }

    /// Move records both ways until neither side has any to send; the
    /// first side's error ends it.
    fn pump(c: &mut ClientConnection, s: &mut ServerConnection) -> Result<(), rustls::Error> {
        loop {
            let mut moved = false;
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                moved = true;
                s.read_tls(&mut rd).unwrap();
                s.process_new_packets()?;
            }
            buf.clear();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                moved = true;
                c.read_tls(&mut rd).unwrap();
                c.process_new_packets()?;
            }
            if !moved {
                return Ok(());
            }
        }
    }

    /// A handshake between a client made from `o` and `server`.
    fn handshake(
        o: &TlsOptions,
        server: &Arc<ServerConfig>,
    ) -> Result<(ClientConnection, ServerConnection), String> {
        let client = TlsClient::new(o)?;
        let mut c = client.connect().map_err(|e| e.to_string())?;
        let mut s = ServerConnection::new(Arc::clone(server)).unwrap();
        match pump(&mut c, &mut s) {
            Ok(()) if !c.is_handshaking() => Ok((c, s)),
            Ok(()) => Err("handshake stalled".into()),
            Err(e) => Err(explain(&e, o)),
        }
    }

    #[test]
    fn the_ca_trusts_what_it_signed_and_nothing_else() {
        let server = tls13(LEAF, LEAF_KEY);
        let (c, _) = handshake(&ca("ca.pem"), &server).unwrap();
        let n = Negotiated::of(&c);
        assert_eq!(n.version, "TLS1.3");
        assert!(n.cipher_suite.starts_with("TLS13_"), "{n:?}");
        assert_eq!(n.kx_group, "X25519");
        assert_eq!(n.alpn.as_deref(), Some("http/1.1"));
        // The leaf itself, pinned.
        handshake(&ca("leaf.pem"), &server).unwrap();
        let e = handshake(&ca("other.pem"), &server).unwrap_err();
        assert!(
            e.contains("UnknownIssuer") && e.contains("other.pem"),
            "{e}"
        );
        // The CA vouches for the name the certificate carries, not another.
        let mut o = ca("ca.pem");
        o.server_name = "127.0.0.1".into();
        handshake(&o, &server).unwrap();
        o.server_name = "elsewhere.example".into();
        let e = handshake(&o, &server).unwrap_err();
        assert!(e.contains("--tls-server-name elsewhere.example"), "{e}");
    }

    #[test]
    fn a_self_signed_ca_certificate_is_trusted_only_as_itself() {
        let server = tls13(SELF, SELF_KEY);
        handshake(&ca("self.pem"), &server).unwrap();
        // Pinned, but still for its own name only.
        let mut o = ca("self.pem");
        o.server_name = "elsewhere.example".into();
        let e = handshake(&o, &server).unwrap_err();
        assert!(e.contains("not valid for name"), "{e}");
        // Another file: refused for being a CA certificate, and said so.
        let e = handshake(&ca("ca.pem"), &server).unwrap_err();
        assert!(
            e.contains("CaUsedAsEndEntity") && e.contains("--ca names"),
            "{e}"
        );
    }

    /// Serves `cert` with a key that is not its own.
    #[derive(Debug)]
    struct WrongKey(Arc<CertifiedKey>);

    impl ResolvesServerCert for WrongKey {
        fn resolve(&self, _: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
            Some(Arc::clone(&self.0))
        }
    }

    #[test]
    fn insecure_takes_any_certificate_but_not_a_forged_signature() {
        let insecure = opts(Trust::Insecure, "elsewhere.example", Kx::Default);
        handshake(&insecure, &tls13(SELF, SELF_KEY)).unwrap();
        handshake(&insecure, &tls13(LEAF, LEAF_KEY)).unwrap();
        // The leaf's certificate, signed for with the self-signed one's key:
        // only the CertificateVerify signature can tell.
        let key = PrivateKeyDer::from_pem_slice(SELF_KEY.as_bytes()).unwrap();
        let signer = ring::default_provider()
            .key_provider
            .load_private_key(key)
            .unwrap();
        let certified = CertifiedKey::new(
            vec![CertificateDer::from_pem_slice(LEAF.as_bytes()).unwrap()],
            signer,
        );
        let mut forged = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(WrongKey(Arc::new(certified))));
        forged.alpn_protocols = vec![ALPN_HTTP11.to_vec()];
        let e = handshake(&insecure, &Arc::new(forged)).unwrap_err();
        assert!(e.contains("BadSignature"), "{e}");
    }

    #[test]
    fn key_exchange_groups_and_versions() {
        let server = tls13(LEAF, LEAF_KEY);
        let mut o = ca("ca.pem");
        o.kx = Kx::P256;
        let (c, _) = handshake(&o, &server).unwrap();
        assert_eq!(Negotiated::of(&c).kx_group, "secp256r1");
        // TLS 1.2 still negotiates, and says so.
        let tls12 = server_config(LEAF, LEAF_KEY, &[&rustls::version::TLS12]);
        let (c, _) = handshake(&ca("ca.pem"), &tls12).unwrap();
        let n = Negotiated::of(&c);
        assert_eq!(n.version, "TLS1.2");
        assert!(n.cipher_suite.starts_with("TLS_ECDHE_ECDSA_"), "{n:?}");
        assert_eq!(Kx::parse("P-256"), Some(Kx::P256));
        assert_eq!(Kx::parse("X25519"), Some(Kx::Default));
        assert_eq!(Kx::parse("x448"), None);
    }

    #[test]
    fn every_handshake_is_a_full_one() {
        // The server offers tickets (rustls's default); the client must
        // not use them.
        let server = tls13(LEAF, LEAF_KEY);
        let client = TlsClient::new(&ca("ca.pem")).unwrap();
        for _ in 0..3 {
            let mut c = client.connect().unwrap();
            let mut s = ServerConnection::new(Arc::clone(&server)).unwrap();
            pump(&mut c, &mut s).unwrap();
            assert_eq!(c.handshake_kind(), Some(HandshakeKind::Full));
        }
        // The same configuration with rustls's default resumption does
        // resume against this server: the check above can fail.
        let mut resuming = client_config(&ca("ca.pem")).unwrap();
        resuming.resumption = Resumption::default();
        let resuming = Arc::new(resuming);
        let kinds: Vec<_> = (0..2)
            .map(|_| {
                let name = ServerName::try_from("localhost").unwrap();
                let mut c = ClientConnection::new(Arc::clone(&resuming), name).unwrap();
                let mut s = ServerConnection::new(Arc::clone(&server)).unwrap();
                pump(&mut c, &mut s).unwrap();
                c.handshake_kind()
            })
            .collect();
        assert_eq!(
            kinds,
            [Some(HandshakeKind::Full), Some(HandshakeKind::Resumed)]
        );
    }

    #[test]
    fn ca_files_must_hold_certificates() {
        let e = load_certificates(&testdata("leaf.key")).unwrap_err();
        assert!(e.contains("no certificate in it"), "{e}");
        let e = load_certificates(&testdata("missing.pem")).unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
        assert_eq!(load_certificates(&testdata("ca.pem")).unwrap().len(), 1);
        let e = TlsClient::new(&opts(Trust::Insecure, "not a name!", Kx::Default)).unwrap_err();
        assert!(e.contains("--tls-server-name"), "{e}");
        // The file's text and the embedded copies agree.
        assert!(std::fs::read_to_string(testdata("other.pem")).unwrap() == OTHER);
        assert!(std::fs::read_to_string(testdata("ca.pem")).unwrap() == CA);
    }

    /// One direction of an in-memory socket: `WouldBlock` when empty, EOF
    /// once closed and drained.
    #[derive(Default)]
    struct Pipe {
        bytes: VecDeque<u8>,
        closed: bool,
    }

    /// The client's end of an in-memory socket pair.
    struct End<'a> {
        rx: &'a mut Pipe,
        tx: &'a mut Pipe,
        /// Bytes the "socket" takes before a write would block.
        room: usize,
    }

    impl Read for End<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.rx.bytes.is_empty() {
                return if self.rx.closed {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(self.rx.bytes.len());
            for (b, v) in buf.iter_mut().zip(self.rx.bytes.drain(..n)) {
                *b = v;
            }
            Ok(n)
        }
    }

    impl Write for End<'_> {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let n = buf.len().min(self.room);
            if n == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            self.room -= n;
            self.tx.bytes.extend(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The server side: take what the client wrote, answer it; the
    /// plaintext it received.
    fn serve(s: &mut ServerConnection, from_client: &mut Pipe, to_client: &mut Pipe) -> Vec<u8> {
        let bytes: Vec<u8> = from_client.bytes.drain(..).collect();
        let mut rd = &bytes[..];
        let mut got = Vec::new();
        while !rd.is_empty() {
            s.read_tls(&mut rd).unwrap();
            s.process_new_packets().unwrap();
            let _ = s.reader().read_to_end(&mut got);
        }
        let mut out = Vec::new();
        while s.wants_write() {
            s.write_tls(&mut out).unwrap();
        }
        to_client.bytes.extend(out);
        got
    }

    #[test]
    fn read_and_write_drive_a_session_over_a_non_blocking_socket() {
        let client = TlsClient::new(&ca("ca.pem")).unwrap();
        let mut c = client.connect().unwrap();
        let mut s = ServerConnection::new(tls13(LEAF, LEAF_KEY)).unwrap();
        let (mut up, mut down) = (Pipe::default(), Pipe::default());
        let request = b"GET / HTTP/1.1\r\n\r\n";
        // Before the handshake rustls holds the request and sends the
        // ClientHello; nothing has come back, so a read would block.
        let mut sock = End {
            rx: &mut down,
            tx: &mut up,
            room: usize::MAX,
        };
        assert_eq!(write(&mut c, &mut sock, request).unwrap(), request.len());
        let mut buf = [0u8; 64];
        let e = read(&mut c, &mut sock, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        assert!(up.bytes.len() > 100, "a ClientHello went out");
        serve(&mut s, &mut up, &mut down);
        // The server's flight arrives: the read finishes the handshake,
        // has no plaintext yet, and the write sends Finished and the
        // request.
        let mut sock = End {
            rx: &mut down,
            tx: &mut up,
            room: usize::MAX,
        };
        assert_eq!(
            read(&mut c, &mut sock, &mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        assert!(!c.is_handshaking());
        assert_eq!(write(&mut c, &mut sock, &[]).unwrap(), 0);
        assert_eq!(serve(&mut s, &mut up, &mut down), request);

        // A large write into a socket that takes little: rustls takes
        // what its buffer holds and the rest waits for the next call.
        let big = vec![7u8; 1 << 20];
        let mut sock = End {
            rx: &mut down,
            tx: &mut up,
            room: 10_000,
        };
        let taken = write(&mut c, &mut sock, &big).unwrap();
        assert!(taken > 0 && taken < big.len(), "{taken}");
        let mut total = taken;
        let mut received = Vec::new();
        while total < big.len() {
            received.extend(serve(&mut s, &mut up, &mut down));
            let mut sock = End {
                rx: &mut down,
                tx: &mut up,
                room: 100_000,
            };
            total += write(&mut c, &mut sock, &big[total..]).unwrap();
        }
        // What rustls still held went out with the last call.
        received.extend(serve(&mut s, &mut up, &mut down));
        assert!(
            received == big,
            "{} of {} bytes arrived",
            received.len(),
            big.len()
        );

        // Server data, then close_notify: the data, then Ok(0).
        s.writer().write_all(b"hello").unwrap();
        s.send_close_notify();
        serve(&mut s, &mut up, &mut down);
        down.closed = true;
        let mut sock = End {
            rx: &mut down,
            tx: &mut up,
            room: usize::MAX,
        };
        assert_eq!(read(&mut c, &mut sock, &mut buf).unwrap(), 5);
        assert_eq!(&buf[..5], b"hello");
        assert_eq!(read(&mut c, &mut sock, &mut buf).unwrap(), 0);
    }

    #[test]
    fn an_eof_without_close_notify_and_garbage_are_errors() {
        // TCP closed after the handshake with no close_notify.
        let client = TlsClient::new(&ca("ca.pem")).unwrap();
        let mut c = client.connect().unwrap();
        let mut s = ServerConnection::new(tls13(LEAF, LEAF_KEY)).unwrap();
        pump(&mut c, &mut s).unwrap();
        let (mut up, mut down) = (Pipe::default(), Pipe::default());
        down.closed = true;
        let mut sock = End {
            rx: &mut down,
            tx: &mut up,
            room: usize::MAX,
        };
        let mut buf = [0u8; 16];
        let e = read(&mut c, &mut sock, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert!(tls_error(&e).is_none());

        // A server that answers a ClientHello with HTTP: the rustls error
        // comes back inside the I/O error, and an alert goes out.
        let mut c = client.connect().unwrap();
        let (mut up, mut down) = (Pipe::default(), Pipe::default());
        down.bytes.extend(b"HTTP/1.1 400 Bad Request\r\n\r\n");
        let mut sock = End {
            rx: &mut down,
            tx: &mut up,
            room: usize::MAX,
        };
        write(&mut c, &mut sock, &[]).unwrap();
        let sent = up.bytes.len();
        let mut sock = End {
            rx: &mut down,
            tx: &mut up,
            room: usize::MAX,
        };
        let e = read(&mut c, &mut sock, &mut buf).unwrap_err();
        let t = tls_error(&e).expect("a rustls error");
        let line = explain(t, &ca("ca.pem"));
        assert!(line.contains("does the server speak TLS"), "{line}");
        assert!(up.bytes.len() > sent, "the alert went out");
    }
}
