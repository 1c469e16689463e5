//! TLS (the `tls` feature): rustls glue, sans-I/O. [`TlsConfig`] loads the server's
//! certificate chain and key; [`TlsConnector`] holds the client's trust roots; a session
//! turns received ciphertext into plaintext and plaintext into records to send, over byte
//! buffers only, with rustls' unbuffered API (no buffers inside rustls beyond the record being
//! decrypted). The connection core does the I/O.

use std::path::Path;
use std::sync::Arc;

use rustls::client::UnbufferedClientConnection;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncryptError, InsufficientSizeError, UnbufferedStatus,
};

use crate::error::{Error, Result};

mod record;
use record::{Kernel, RecordLayer};

/// The ring crypto provider: it builds with a C compiler alone (no cmake, no Go), so a fresh
/// machine needs nothing beyond what Rust needs.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// ALPN: a WebSocket handshake is HTTP/1.1 (RFC 6455; browsers offer `http/1.1` for wss).
const ALPN: &[u8] = b"http/1.1";

/// The server's TLS settings: certificate chain and key. Cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) server: Arc<rustls::ServerConfig>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig").finish_non_exhaustive()
    }
}

fn tls_error(what: impl std::fmt::Display) -> Error {
    Error::Tls(what.to_string())
}

impl TlsConfig {
    /// Reads a PEM certificate chain (the server's certificate first, then the
    /// intermediates) and a PEM private key (PKCS#8, PKCS#1 RSA or SEC1 EC). TLS 1.2 and 1.3,
    /// ALPN `http/1.1`. Errors name the file and the cause: unreadable, no certificate or key
    /// in it, or a key that does not match the certificate ([`Error::Tls`]).
    pub fn from_pem_files(chain: impl AsRef<Path>, key: impl AsRef<Path>) -> Result<TlsConfig> {
        let (chain, key) = (chain.as_ref(), key.as_ref());
        let read = |p: &Path| {
            std::fs::read(p)
                .map_err(|e| tls_error(format_args!("cannot read {}: {e}", p.display())))
        };
        let (chain_pem, key_pem) = (read(chain)?, read(key)?);
        let named = |p: &Path, why: String| tls_error(format_args!("{}: {why}", p.display()));
        let certs = parse_chain(&chain_pem).map_err(|why| named(chain, why))?;
        let key_der = parse_key(&key_pem).map_err(|why| named(key, why))?;
        Self::build(certs, key_der).map_err(|why| {
            tls_error(format_args!(
                "{why} ({} and {})",
                key.display(),
                chain.display()
            ))
        })
    }

    /// As [`TlsConfig::from_pem_files`], from the PEM text itself.
    pub fn from_pem(chain: &[u8], key: &[u8]) -> Result<TlsConfig> {
        let certs = parse_chain(chain).map_err(tls_error)?;
        let key = parse_key(key).map_err(tls_error)?;
        Self::build(certs, key).map_err(tls_error)
    }

    fn build(
        certs: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
    ) -> std::result::Result<TlsConfig, String> {
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(_) => {
                    "the key does not match the certificate".to_owned()
                }
                e => format!("the key or certificate cannot be used: {e}"),
            })?;
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Self::from_rustls(Arc::new(config)))
    }

    /// A config from a rustls `ServerConfig` of your own (a certificate resolver, client
    /// authentication, ...). Its ALPN list should offer `http/1.1`.
    pub fn from_rustls(config: Arc<rustls::ServerConfig>) -> TlsConfig {
        let mut config = (*config).clone();
        config.cert_resolver = Arc::new(SniRecorder(config.cert_resolver.clone()));
        // The record layer runs in `record` after the handshake; the secrets stay in-process.
        config.enable_secret_extraction = true;
        TlsConfig {
            server: Arc::new(config),
        }
    }
}

thread_local! {
    /// The server name of the last ClientHello this thread resolved a certificate for.
    static SNI: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Records the server name each ClientHello asks for, for the connection's info (the
/// unbuffered server connection does not expose it). The resolver runs inside
/// `process_tls_records`, on the connection's thread, which reads it right after.
#[derive(Debug)]
struct SniRecorder(Arc<dyn rustls::server::ResolvesServerCert>);

impl rustls::server::ResolvesServerCert for SniRecorder {
    fn resolve(
        &self,
        hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        SNI.with(|s| *s.borrow_mut() = hello.server_name().map(str::to_owned));
        self.0.resolve(hello)
    }

    fn only_raw_public_keys(&self) -> bool {
        self.0.only_raw_public_keys()
    }
}

fn parse_chain(pem: &[u8]) -> std::result::Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| format!("the certificate chain is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(
            "no certificate in it (PEM \"BEGIN CERTIFICATE\" blocks expected; \
                    convert DER with `openssl x509 -inform der`)"
                .into(),
        );
    }
    Ok(certs)
}

fn parse_key(pem: &[u8]) -> std::result::Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => "no private key in it (PEM \"BEGIN \
            PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\" expected)"
            .to_owned(),
        e => format!("the private key is not valid PEM: {e}"),
    })
}

/// The client's TLS settings: the roots it trusts (webpki's Mozilla roots, plus any CA
/// added). Cheap to clone.
#[derive(Clone)]
pub struct TlsConnector {
    pub(crate) client: Arc<rustls::ClientConfig>,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector").finish_non_exhaustive()
    }
}

impl Default for TlsConnector {
    fn default() -> Self {
        Self::with_roots(Self::webpki_roots())
    }
}

impl TlsConnector {
    fn webpki_roots() -> rustls::RootCertStore {
        rustls::RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        }
    }

    fn with_roots(roots: rustls::RootCertStore) -> TlsConnector {
        Self::build(roots, Vec::new()).unwrap_or_else(|e| unreachable!("{e}"))
    }

    fn build(
        roots: rustls::RootCertStore,
        pinned: Vec<CertificateDer<'static>>,
    ) -> Result<TlsConnector> {
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider(),
        )
        .build()
        .map_err(tls_error)?;
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(tls_error)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier { webpki, pinned }))
            .with_no_client_auth();
        config.alpn_protocols = vec![ALPN.to_vec()];
        Ok(Self::from_rustls(Arc::new(config)))
    }

    /// Trusts the certificates of the PEM file `ca` besides webpki's roots: a private CA,
    /// or a self-signed server certificate, which is then trusted as it is, for any name
    /// (`openssl req -x509` makes certificates that are their own CA, which webpki would
    /// otherwise refuse as a server's).
    pub fn with_ca_file(ca: impl AsRef<Path>) -> Result<TlsConnector> {
        let ca = ca.as_ref();
        let pem = std::fs::read(ca)
            .map_err(|e| tls_error(format_args!("cannot read {}: {e}", ca.display())))?;
        Self::with_ca_pem(&pem).map_err(|e| match e {
            Error::Tls(why) => tls_error(format_args!("{why} ({})", ca.display())),
            e => e,
        })
    }

    /// As [`TlsConnector::with_ca_file`], from the PEM text.
    pub fn with_ca_pem(pem: &[u8]) -> Result<TlsConnector> {
        let mut roots = Self::webpki_roots();
        let mut pinned = Vec::new();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert =
                cert.map_err(|e| tls_error(format_args!("the CA file is not valid PEM: {e}")))?;
            roots
                .add(cert.clone())
                .map_err(|e| tls_error(format_args!("unusable CA certificate: {e}")))?;
            pinned.push(cert);
        }
        if pinned.is_empty() {
            return Err(tls_error("no certificate in the CA file"));
        }
        Self::build(roots, pinned)
    }

    /// A connector from a rustls `ClientConfig` of your own. Its ALPN list should offer
    /// `http/1.1` (or be empty).
    pub fn from_rustls(config: Arc<rustls::ClientConfig>) -> TlsConnector {
        let mut config = (*config).clone();
        // As for the server: the record layer runs in `record` after the handshake.
        config.enable_secret_extraction = true;
        TlsConnector {
            client: Arc::new(config),
        }
    }
}

/// webpki's verification, except that a server certificate given as a CA of its own
/// (self-signed, often marked as a CA) is accepted as it is.
#[derive(Debug)]
struct Verifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl rustls::client::danger::ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> std::result::Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        match self
            .webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(_)
                if self
                    .pinned
                    .iter()
                    .any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                Ok(rustls::client::danger::ServerCertVerified::assertion())
            }
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> std::result::Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// A TLS error in words a user can act on: above all, why a server's certificate was not
/// accepted.
pub(crate) fn describe(e: &rustls::Error) -> String {
    use rustls::CertificateError as C;
    let cert = match e {
        rustls::Error::InvalidCertificate(c) => c,
        rustls::Error::AlertReceived(a) => {
            return format!("the peer refused the handshake ({a:?})")
        }
        rustls::Error::NoApplicationProtocol => {
            return "the peer speaks no ALPN protocol in common (http/1.1)".into()
        }
        e => return e.to_string(),
    };
    let why = match cert {
        C::Expired | C::ExpiredContext { .. } => "it has expired",
        C::NotValidYet | C::NotValidYetContext { .. } => "it is not valid yet",
        C::UnknownIssuer => "it is not signed by a trusted CA (add the CA: --ca PEM)",
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            "it is not for the name connected to"
        }
        C::Revoked => "it was revoked",
        C::BadSignature => "its signature is invalid",
        C::Other(o) if format!("{o:?}").contains("CaUsedAsEndEntity") => {
            "it is a CA certificate, not a server's (a self-signed one: pass it with --ca PEM)"
        }
        _ => return format!("the server's certificate was refused: {cert:?}"),
    };
    format!("the server's certificate was refused: {why}")
}

/// One side of a TLS connection: rustls during the handshake (and for TLS 1.2 throughout),
/// then, for TLS 1.3, [`RecordLayer`] (with the server name the client asked for).
pub(crate) enum Session {
    /// rustls' connection, the server name, and whether its record layer is handed over
    /// after a TLS 1.3 handshake (its config allows the secrets out).
    Server(UnbufferedServerConnection, Option<String>, bool),
    /// As `Server`, without the name.
    Client(UnbufferedClientConnection, bool),
    Records(Box<RecordLayer>, Option<String>),
    /// The take-over from rustls failed; every operation fails.
    Gone,
}

/// What [`Session::open`] found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Opened {
    /// The handshake is still going on.
    pub(crate) handshaking: bool,
    /// The peer sent close_notify: no more data will come.
    pub(crate) peer_closed: bool,
}

/// Runs `$body` with `$state` bound to the session's next state, for either role.
macro_rules! with_state {
    ($session:expr, $incoming:expr, |$status:ident| $body:expr) => {
        match $session {
            Session::Server(c, ..) => {
                let $status = c.process_tls_records($incoming);
                $body
            }
            Session::Client(c, _) => {
                let $status = c.process_tls_records($incoming);
                $body
            }
            Session::Records(..) | Session::Gone => {
                return Err(rustls::Error::General("no rustls state".into()))
            }
        }
    };
}

/// What one step of the state machine did, with the state's borrows released.
enum Step {
    /// Records were handled; go on.
    Again,
    /// Needs more bytes from the peer (handshaking, or between records).
    Blocked { handshaking: bool },
    /// The peer closed (close_notify); edge.
    PeerClosed,
    /// Both sides closed.
    Closed,
}

impl Session {
    pub(crate) fn server(config: &TlsConfig) -> Result<Session> {
        UnbufferedServerConnection::new(config.server.clone())
            .map(|c| Session::Server(c, None, config.server.enable_secret_extraction))
            .map_err(tls_error)
    }

    pub(crate) fn client(config: &TlsConnector, host: &str) -> Result<Session> {
        let name = ServerName::try_from(host.to_owned())
            .map_err(|e| tls_error(format_args!("{host:?} is not a valid server name: {e}")))?;
        UnbufferedClientConnection::new(config.client.clone(), name)
            .map(|c| Session::Client(c, config.client.enable_secret_extraction))
            .map_err(tls_error)
    }

    /// The server name the client asked for (SNI), on the server side once known.
    pub(crate) fn sni(&self) -> Option<String> {
        match self {
            Session::Server(_, sni, _) | Session::Records(_, sni) => sni.clone(),
            Session::Client(..) | Session::Gone => None,
        }
    }

    /// Handles the records in `incoming`, removing those consumed: application data is
    /// appended to `plain`, records to send (handshake, alerts) to `out`. Stops when it needs
    /// more bytes. An error is fatal for the connection (rustls has queued an alert in `out`
    /// where one is due).
    pub(crate) fn open(
        &mut self,
        incoming: &mut Vec<u8>,
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> std::result::Result<Opened, rustls::Error> {
        let (consumed, opened) = self.open_slice(incoming, plain, out);
        incoming.drain(..consumed);
        opened
    }

    /// As [`Session::open`], over records that lie in `data` (decrypted there): returns how
    /// many bytes of it were consumed (the rest is the start of a record cut by the read).
    pub(crate) fn open_slice(
        &mut self,
        data: &mut [u8],
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
    ) -> (usize, std::result::Result<Opened, rustls::Error>) {
        let mut consumed = 0;
        if let Session::Records(r, _) = self {
            return r.open(data, plain, out);
        }
        let mut opened = Opened::default();
        let hello = matches!(self, Session::Server(c, None, _) if c.is_handshaking());
        if hello {
            SNI.with(|s| s.borrow_mut().take());
        }
        let mut result = self.open_records(data, &mut consumed, plain, out, &mut opened);
        if let (true, Session::Server(_, sni @ None, _)) = (hello, &mut *self) {
            *sni = SNI.with(|s| s.borrow_mut().take());
        }
        if result.is_ok() && !opened.handshaking && !opened.peer_closed {
            result = self.take_over();
            if let (Ok(()), Session::Records(r, _)) = (&result, &mut *self) {
                let (more, records) = r.open(&mut data[consumed..], plain, out);
                consumed += more;
                return (consumed, records);
            }
        }
        (consumed, result.map(|()| opened))
    }

    /// Once a TLS 1.3 handshake is over (rustls has nothing more to send), hands the record
    /// layer over to [`RecordLayer`], and the key schedule to rustls' `KernelConnection`.
    fn take_over(&mut self) -> std::result::Result<(), rustls::Error> {
        let tls13 = |c: &rustls::CommonState| {
            !c.is_handshaking() && c.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3)
        };
        let ready = match self {
            Session::Server(c, _, records) => *records && tls13(c),
            Session::Client(c, records) => *records && tls13(c),
            Session::Records(..) | Session::Gone => false,
        };
        if !ready {
            return Ok(());
        }
        let (kernel, secrets, sni) = match std::mem::replace(self, Session::Gone) {
            Session::Server(c, sni, _) => {
                let (secrets, k) = c.dangerous_into_kernel_connection()?;
                (Kernel::Server(k), secrets, sni)
            }
            Session::Client(c, _) => {
                let (secrets, k) = c.dangerous_into_kernel_connection()?;
                (Kernel::Client(k), secrets, None)
            }
            Session::Records(..) | Session::Gone => unreachable!("checked above"),
        };
        *self = Session::Records(Box::new(RecordLayer::new(kernel, secrets)?), sni);
        Ok(())
    }

    fn open_records(
        &mut self,
        data: &mut [u8],
        consumed: &mut usize,
        plain: &mut Vec<u8>,
        out: &mut Vec<u8>,
        opened: &mut Opened,
    ) -> std::result::Result<(), rustls::Error> {
        loop {
            let (discard, step) = with_state!(self, &mut data[*consumed..], |status| {
                step(status, plain, out)
            });
            *consumed += discard;
            match step? {
                Step::Again => {}
                Step::Blocked { handshaking } => {
                    opened.handshaking = handshaking;
                    return Ok(());
                }
                Step::PeerClosed => opened.peer_closed = true,
                Step::Closed => {
                    opened.peer_closed = true;
                    return Ok(());
                }
            }
        }
    }

    /// Encrypts `plain` (any length: split into records as needed) and appends the records
    /// to `out`, after any record the session had to send first.
    pub(crate) fn seal(
        &mut self,
        plain: &[u8],
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), rustls::Error> {
        // Records carry at most 16 KiB each, with 5 bytes of header and up to 17 of tag and
        // content type (TLS 1.3), or a longer explicit nonce and tag (TLS 1.2).
        if let Session::Records(r, _) = self {
            return r.seal(plain, out);
        }
        let hint = plain.len() + (plain.len() / 16384 + 1) * 64;
        self.write_traffic(out, hint, |w, buf| w.encrypt(plain, buf))
    }

    /// Appends a close_notify alert to `out`.
    pub(crate) fn close_notify(
        &mut self,
        out: &mut Vec<u8>,
    ) -> std::result::Result<(), rustls::Error> {
        if let Session::Records(r, _) = self {
            return r.close_notify(out);
        }
        self.write_traffic(out, 64, |w, buf| w.queue_close_notify(buf))
    }

    /// Drives the session to its write-traffic state (encoding what it must send first) and
    /// runs `write` there into the spare room of `out`, growing it to what rustls asks.
    fn write_traffic(
        &mut self,
        out: &mut Vec<u8>,
        hint: usize,
        mut write: impl FnMut(&mut dyn Encrypt, &mut [u8]) -> std::result::Result<usize, EncryptError>,
    ) -> std::result::Result<(), rustls::Error> {
        for _ in 0..16 {
            let done = with_state!(self, &mut [][..], |status| {
                match status.state? {
                    ConnectionState::WriteTraffic(mut w) => {
                        grow_into(out, hint, |buf| write(&mut w, buf))?;
                        true
                    }
                    ConnectionState::EncodeTlsData(mut e) => {
                        encode_into(out, &mut e)?;
                        false
                    }
                    ConnectionState::TransmitTlsData(t) => {
                        t.done();
                        false
                    }
                    other => {
                        return Err(rustls::Error::General(format!(
                            "cannot send application data now ({other:?})"
                        )))
                    }
                }
            });
            if done {
                return Ok(());
            }
        }
        Err(rustls::Error::General(
            "TLS state machine did not settle".into(),
        ))
    }
}

/// The fuzz target's entry (`fuzz/fuzz_targets/tls_records.rs`); not part of the API.
#[doc(hidden)]
pub mod fuzzing {
    use super::{Session, TlsConfig, TlsConnector};

    /// A client and a server that finished a handshake in memory (a self-signed `cert_pem`
    /// for `localhost`, `key_pem` its key), past rustls, on the record layer.
    fn pair(cert_pem: &[u8], key_pem: &[u8]) -> (Session, Session) {
        let config = TlsConfig::from_pem(cert_pem, key_pem).expect("the fuzz certificate");
        let connector = TlsConnector::with_ca_pem(cert_pem).expect("the fuzz certificate");
        let mut client = Session::client(&connector, "localhost").expect("client");
        let mut server = Session::server(&config).expect("server");
        let (mut to_server, mut to_client, mut plain) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..4 {
            let _ = client.open(&mut to_client, &mut plain, &mut to_server);
            let _ = server.open(&mut to_server, &mut plain, &mut to_client);
        }
        assert!(matches!(server, Session::Records(..)), "no take-over");
        assert!(matches!(client, Session::Records(..)), "no take-over");
        (client, server)
    }

    /// Feeds `data` to a server's record layer after a handshake. First byte even: `data[1..]`
    /// is ciphertext as received (in pieces cut at the values of `data[1..]`). Odd: it is a
    /// list of records (content type, length byte, content) that the client seals with valid
    /// keys, so that what lies behind the decryption (content types, alerts, post-handshake
    /// messages, padding) is reached; then the plaintext opened must be the application data
    /// sealed, up to the first error or close_notify.
    pub fn records(cert_pem: &[u8], key_pem: &[u8], data: &[u8]) {
        let Some((&mode, data)) = data.split_first() else {
            return;
        };
        let (mut client, mut server) = pair(cert_pem, key_pem);
        let (mut plain, mut out) = (Vec::new(), Vec::new());
        if mode % 2 == 0 {
            let mut incoming = Vec::new();
            for (i, &b) in data.iter().enumerate() {
                incoming.push(b);
                let cut = b % 7 == 0 || i + 1 == data.len();
                if cut && server.open(&mut incoming, &mut plain, &mut out).is_err() {
                    return;
                }
            }
            return;
        }
        let Session::Records(sealer, _) = &mut client else {
            return;
        };
        let (mut wire, mut sent, mut rest) = (Vec::new(), Vec::new(), data);
        let mut sent_done = false;
        while let [kind, len, tail @ ..] = rest {
            let len = usize::from(*len).min(tail.len());
            let (content, tail) = tail.split_at(len);
            rest = tail;
            sealer.seal_record(*kind, content, &mut wire).expect("seal");
            // What the server must hand over: the application data, up to the first record
            // of another type. Its type is the last byte that is not zero.
            let mut inner = content.to_vec();
            inner.push(*kind);
            match inner.iter().rposition(|&b| b != 0) {
                Some(end) if inner[end] == 23 && !sent_done => {
                    sent.extend_from_slice(&inner[..end])
                }
                _ => sent_done = true,
            }
        }
        let result = server.open(&mut wire, &mut plain, &mut out);
        assert!(
            plain.starts_with(&sent) || sent.starts_with(&plain),
            "the plaintext differs from what was sealed"
        );
        if result.is_ok() && !sent_done {
            assert_eq!(plain, sent, "application data went missing");
        }
    }
}

/// The write-traffic operations, for either role.
trait Encrypt {
    fn encrypt(&mut self, plain: &[u8], out: &mut [u8])
        -> std::result::Result<usize, EncryptError>;
    fn queue_close_notify(&mut self, out: &mut [u8]) -> std::result::Result<usize, EncryptError>;
}

impl<Data> Encrypt for rustls::unbuffered::WriteTraffic<'_, Data> {
    fn encrypt(
        &mut self,
        plain: &[u8],
        out: &mut [u8],
    ) -> std::result::Result<usize, EncryptError> {
        rustls::unbuffered::WriteTraffic::encrypt(self, plain, out)
    }
    fn queue_close_notify(&mut self, out: &mut [u8]) -> std::result::Result<usize, EncryptError> {
        rustls::unbuffered::WriteTraffic::queue_close_notify(self, out)
    }
}

/// One state of the machine, handled: returns the bytes of `incoming` to discard and what
/// to do next.
fn step<Data>(
    status: UnbufferedStatus<'_, '_, Data>,
    plain: &mut Vec<u8>,
    out: &mut Vec<u8>,
) -> (usize, std::result::Result<Step, rustls::Error>) {
    let UnbufferedStatus { mut discard, state } = status;
    let state = match state {
        Ok(s) => s,
        Err(e) => return (discard, Err(e)),
    };
    let step = match state {
        ConnectionState::ReadTraffic(mut r) => {
            while let Some(record) = r.next_record() {
                match record {
                    Ok(record) => {
                        discard += record.discard;
                        plain.extend_from_slice(record.payload);
                    }
                    Err(e) => return (discard, Err(e)),
                }
            }
            Ok(Step::Again)
        }
        ConnectionState::EncodeTlsData(mut e) => encode_into(out, &mut e).map(|()| Step::Again),
        ConnectionState::TransmitTlsData(t) => {
            // The caller sends `out` before it waits for the peer.
            t.done();
            Ok(Step::Again)
        }
        ConnectionState::BlockedHandshake => Ok(Step::Blocked { handshaking: true }),
        ConnectionState::WriteTraffic(_) => Ok(Step::Blocked { handshaking: false }),
        ConnectionState::PeerClosed => Ok(Step::PeerClosed),
        ConnectionState::Closed => Ok(Step::Closed),
        other => Err(rustls::Error::General(format!(
            "unexpected TLS state {other:?}"
        ))),
    };
    (discard, step)
}

fn encode_into<Data>(
    out: &mut Vec<u8>,
    e: &mut rustls::unbuffered::EncodeTlsData<'_, Data>,
) -> std::result::Result<(), rustls::Error> {
    let start = out.len();
    out.resize(start + 4096, 0);
    let n = match e.encode(&mut out[start..]) {
        Ok(n) => n,
        Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
            out.resize(start + required_size, 0);
            e.encode(&mut out[start..])
                .map_err(|e| rustls::Error::General(e.to_string()))?
        }
        Err(e) => return Err(rustls::Error::General(e.to_string())),
    };
    out.truncate(start + n);
    Ok(())
}

/// Runs `f` on spare room at the end of `out` (at least `hint` bytes, more when it asks), and
/// keeps what it wrote.
fn grow_into(
    out: &mut Vec<u8>,
    hint: usize,
    mut f: impl FnMut(&mut [u8]) -> std::result::Result<usize, EncryptError>,
) -> std::result::Result<(), rustls::Error> {
    let start = out.len();
    out.resize(start + hint, 0);
    let n = match f(&mut out[start..]) {
        Ok(n) => n,
        Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
            out.resize(start + required_size, 0);
            f(&mut out[start..]).map_err(|e| rustls::Error::General(e.to_string()))?
        }
        Err(e) => {
            out.truncate(start);
            return Err(rustls::Error::General(e.to_string()));
        }
    };
    out.truncate(start + n);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (c.cert.pem(), c.signing_key.serialize_pem())
    }

    /// Moves bytes between the two sessions until neither has anything to send; returns the
    /// plaintext each received.
    fn pump(
        client: &mut Session,
        server: &mut Session,
        to_server: &mut Vec<u8>,
        to_client: &mut Vec<u8>,
    ) -> (Vec<u8>, Vec<u8>) {
        let (mut at_client, mut at_server) = (Vec::new(), Vec::new());
        let (mut c_in, mut s_in) = (Vec::new(), Vec::new());
        for _ in 0..20 {
            c_in.append(to_client);
            client.open(&mut c_in, &mut at_client, to_server).unwrap();
            s_in.append(to_server);
            server.open(&mut s_in, &mut at_server, to_client).unwrap();
            if to_server.is_empty() && to_client.is_empty() {
                break;
            }
        }
        (at_client, at_server)
    }

    #[test]
    fn a_session_pair_handshakes_and_carries_data_both_ways() {
        let (cert, key) = identity();
        let server_config = TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        let connector = TlsConnector::with_ca_pem(cert.as_bytes()).unwrap();
        let mut server = Session::server(&server_config).unwrap();
        let mut client = Session::client(&connector, "localhost").unwrap();
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        pump(&mut client, &mut server, &mut to_server, &mut to_client);
        assert_eq!(server.sni().as_deref(), Some("localhost"));

        // A message larger than a record each way, and a small one.
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        client.seal(&big, &mut to_server).unwrap();
        server.seal(b"hello", &mut to_client).unwrap();
        let (at_client, at_server) = pump(&mut client, &mut server, &mut to_server, &mut to_client);
        assert_eq!(at_server, big);
        assert_eq!(at_client, b"hello");

        // Records cut anywhere arrive whole once the rest comes.
        let mut sealed = Vec::new();
        client.seal(b"split across reads", &mut sealed).unwrap();
        let (mut incoming, mut plain, mut out) = (Vec::new(), Vec::new(), Vec::new());
        for b in sealed {
            incoming.push(b);
            server.open(&mut incoming, &mut plain, &mut out).unwrap();
        }
        assert_eq!(plain, b"split across reads");
        assert!(incoming.is_empty());

        // close_notify: the peer sees the end.
        let mut alert = Vec::new();
        client.close_notify(&mut alert).unwrap();
        let opened = server.open(&mut alert, &mut plain, &mut out).unwrap();
        assert!(opened.peer_closed);

        // The tickets the server sent after the handshake reached the client's record layer,
        // which gave them to rustls: the next connection resumes.
        let mut server = Session::server(&server_config).unwrap();
        let mut client = Session::client(&connector, "localhost").unwrap();
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        client
            .open(&mut Vec::new(), &mut Vec::new(), &mut to_server)
            .unwrap();
        server
            .open(&mut to_server, &mut Vec::new(), &mut to_client)
            .unwrap();
        let Session::Server(c, ..) = &server else {
            panic!("the server finished a handshake from one flight")
        };
        assert_eq!(c.handshake_kind(), Some(rustls::HandshakeKind::Resumed));
    }

    #[test]
    fn garbage_and_plain_http_fail_at_once() {
        let (cert, key) = identity();
        let config = TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        for junk in [
            &b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..],
            &[0x16, 3, 1, 0xff, 0xff, 1, 2, 3],
        ] {
            let mut server = Session::server(&config).unwrap();
            let (mut incoming, mut plain, mut out) = (junk.to_vec(), Vec::new(), Vec::new());
            assert!(
                server.open(&mut incoming, &mut plain, &mut out).is_err(),
                "{junk:?}"
            );
        }
    }

    #[test]
    fn unusable_certificates_and_keys_are_named() {
        let (cert, key) = identity();
        let (_, other_key) = identity();
        let err = |r: Result<TlsConfig>| r.unwrap_err().to_string();
        assert!(
            err(TlsConfig::from_pem(cert.as_bytes(), other_key.as_bytes()))
                .contains("does not match")
        );
        assert!(err(TlsConfig::from_pem(b"not pem", key.as_bytes())).contains("no certificate"));
        assert!(err(TlsConfig::from_pem(cert.as_bytes(), b"")).contains("no private key"));
        let missing = TlsConfig::from_pem_files("/nonexistent/chain.pem", "/nonexistent/key.pem");
        assert!(err(missing).contains("/nonexistent/chain.pem"));
        let dir = std::env::temp_dir().join(format!("uringws-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (c, k) = (dir.join("chain.pem"), dir.join("key.pem"));
        std::fs::write(&c, &cert).unwrap();
        std::fs::write(&k, &cert).unwrap(); // a certificate where the key should be
        let e = err(TlsConfig::from_pem_files(&c, &k));
        assert!(e.contains("key.pem: no private key"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_client_refuses_an_untrusted_server() {
        let (cert, key) = identity();
        let (other_ca, _) = identity();
        let config = TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        let connector = TlsConnector::with_ca_pem(other_ca.as_bytes()).unwrap();
        let mut server = Session::server(&config).unwrap();
        let mut client = Session::client(&connector, "localhost").unwrap();
        let (mut c_in, mut s_in, mut plain) = (Vec::new(), Vec::new(), Vec::new());
        let (mut to_server, mut to_client) = (Vec::new(), Vec::new());
        client.open(&mut c_in, &mut plain, &mut to_server).unwrap();
        s_in.append(&mut to_server);
        server.open(&mut s_in, &mut plain, &mut to_client).unwrap();
        c_in.append(&mut to_client);
        let e = client
            .open(&mut c_in, &mut plain, &mut to_server)
            .unwrap_err();
        assert!(e.to_string().contains("certificate"), "{e}");
    }

    /// A session that keeps rustls' own record layer (secret extraction off), to check the
    /// take-over against rustls on the other side.
    fn rustls_only(server: bool, cert: &str, key: &str) -> Session {
        if server {
            let config = TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
            let mut config = (*config.server).clone();
            config.enable_secret_extraction = false;
            let c = UnbufferedServerConnection::new(Arc::new(config)).unwrap();
            Session::Server(c, None, false)
        } else {
            let connector = TlsConnector::with_ca_pem(cert.as_bytes()).unwrap();
            let mut config = (*connector.client).clone();
            config.enable_secret_extraction = false;
            let name = ServerName::try_from("localhost").unwrap();
            Session::Client(
                UnbufferedClientConnection::new(Arc::new(config), name).unwrap(),
                false,
            )
        }
    }

    fn records(s: &mut Session) -> &mut RecordLayer {
        match s {
            Session::Records(r, _) => r,
            _ => panic!("the session kept rustls' record layer"),
        }
    }

    /// Both roles against rustls' record layer on the other side: data both ways across
    /// record boundaries, key updates each way (rustls answers one asked for), close_notify.
    #[test]
    fn the_record_layer_talks_to_rustls_and_updates_keys() {
        let (cert, key) = identity();
        for ours_is_server in [true, false] {
            let mut theirs = rustls_only(!ours_is_server, &cert, &key);
            let mut ours = if ours_is_server {
                Session::server(&TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap())
            } else {
                Session::client(
                    &TlsConnector::with_ca_pem(cert.as_bytes()).unwrap(),
                    "localhost",
                )
            }
            .unwrap();
            let (mut to_ours, mut to_theirs) = (Vec::new(), Vec::new());
            let (client, server) = if ours_is_server {
                (&mut theirs, &mut ours)
            } else {
                (&mut ours, &mut theirs)
            };
            let (c_to_s, s_to_c) = (&mut Vec::new(), &mut Vec::new());
            pump(client, server, c_to_s, s_to_c);
            records(&mut ours);
            assert!(matches!(theirs, Session::Server(..) | Session::Client(..)));

            let big: Vec<u8> = (0..70_000u32).map(|i| (i % 253) as u8).collect();
            for round in 0..3 {
                match round {
                    1 => records(&mut ours).expire_tx_key(),
                    2 => records(&mut ours)
                        .request_key_update(&mut to_theirs)
                        .unwrap(),
                    _ => {}
                }
                ours.seal(&big, &mut to_theirs).unwrap();
                theirs.seal(&big[..1000], &mut to_ours).unwrap();
                let (mut plain_theirs, mut plain_ours) = (Vec::new(), Vec::new());
                for _ in 0..4 {
                    theirs
                        .open(&mut to_theirs, &mut plain_theirs, &mut to_ours)
                        .unwrap();
                    ours.open(&mut to_ours, &mut plain_ours, &mut to_theirs)
                        .unwrap();
                }
                assert_eq!(plain_theirs, big, "round {round}");
                assert_eq!(plain_ours, &big[..1000], "round {round}");
                assert!(to_ours.is_empty() && to_theirs.is_empty(), "round {round}");
            }
            let (mut alert, mut plain, mut out) = (Vec::new(), Vec::new(), Vec::new());
            ours.close_notify(&mut alert).unwrap();
            assert!(
                theirs
                    .open(&mut alert, &mut plain, &mut out)
                    .unwrap()
                    .peer_closed
            );
            theirs.close_notify(&mut alert).unwrap();
            assert!(
                ours.open(&mut alert, &mut plain, &mut out)
                    .unwrap()
                    .peer_closed
            );
        }
    }

    /// A record changed on the way fails with bad_record_mac sent back; records cut anywhere
    /// wait for their rest; an oversized or unencrypted record is refused.
    #[test]
    fn the_record_layer_refuses_what_it_must() {
        let (cert, key) = identity();
        let config = TlsConfig::from_pem(cert.as_bytes(), key.as_bytes()).unwrap();
        let connector = TlsConnector::with_ca_pem(cert.as_bytes()).unwrap();
        let fresh_pair = || {
            let mut server = Session::server(&config).unwrap();
            let mut client = Session::client(&connector, "localhost").unwrap();
            pump(&mut client, &mut server, &mut Vec::new(), &mut Vec::new());
            records(&mut server);
            records(&mut client);
            (client, server)
        };
        let (mut client, mut server) = fresh_pair();
        let mut sealed = Vec::new();
        client.seal(b"cut anywhere", &mut sealed).unwrap();
        let (mut incoming, mut plain, mut out) = (Vec::new(), Vec::new(), Vec::new());
        for b in &sealed {
            incoming.push(*b);
            server.open(&mut incoming, &mut plain, &mut out).unwrap();
        }
        assert_eq!(plain, b"cut anywhere");

        let mut sealed = Vec::new();
        client.seal(b"changed on the way", &mut sealed).unwrap();
        sealed[8] ^= 1;
        let e = server.open(&mut sealed, &mut plain, &mut out).unwrap_err();
        assert_eq!(e, rustls::Error::DecryptError);
        let mut at_client = Vec::new();
        let e = client
            .open(&mut out, &mut at_client, &mut Vec::new())
            .unwrap_err();
        assert_eq!(
            e,
            rustls::Error::AlertReceived(rustls::AlertDescription::BadRecordMac)
        );

        for (record, want) in [
            (
                vec![23, 3, 3, 0x48, 0x01],
                rustls::Error::PeerSentOversizedRecord,
            ),
            (
                vec![21, 3, 3, 0, 2, 1, 0],
                rustls::Error::General("unencrypted TLS record of type 21".into()),
            ),
        ] {
            let (_, mut server) = fresh_pair();
            let mut incoming = record;
            let e = server
                .open(&mut incoming, &mut plain, &mut Vec::new())
                .unwrap_err();
            assert_eq!(e, want);
        }
    }

    /// The fuzz target's oracle on its seeds (fuzz/corpus/tls_records): application data
    /// around padding, close_notify, user_canceled, a key update (whole and cut), a ticket
    /// sent to a server, a record with no content type, raw ciphertext.
    #[test]
    fn the_fuzz_oracle_holds_on_its_seeds() {
        let (cert, key) = identity();
        let seeds: [&[u8]; 8] = [
            b"\x01\x17\x05hello\x17\x03abc",
            b"\x01\x00\x06hi\x17\x00\x00\x00\x17\x02ok",
            b"\x01\x17\x04data\x15\x02\x01\x00\x17\x05after",
            b"\x01\x15\x02\x01\x5a\x17\x03yes",
            b"\x01\x16\x05\x18\x00\x00\x01\x00\x17\x03new",
            b"\x01\x16\x08\x04\x00\x00\x04\x01\x02\x03\x04",
            b"\x01\x00\x04\x00\x00\x00\x00",
            b"\x00\x17\x03\x03\x00\x14\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00",
        ];
        for seed in seeds {
            fuzzing::records(cert.as_bytes(), key.as_bytes(), seed);
        }
    }
}
