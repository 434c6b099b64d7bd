//! TLS to Postgres, with libpq's meaning for the connection string's `sslmode`,
//! `sslrootcert`, `sslcert` and `sslkey`.
//!
//! tokio-postgres knows `sslmode` `disable`, `prefer` and `require` only, and none
//! of the certificate options, so [`split_options`] takes these four options out
//! of the connection string before tokio-postgres parses it, and the grant hands
//! tokio-postgres `disable`, `prefer` or `require` ([`PgTls::wire_mode`]) while
//! the verifier built here ([`PgTls::new`]) does what the mode asks of the
//! server's certificate:
//!
//! | sslmode       | TLS                      | server certificate checked         |
//! |---------------|--------------------------|------------------------------------|
//! | `disable`     | never                    | -                                  |
//! | `prefer`      | if the server offers it  | no                                 |
//! | `require`     | always                   | no (chain only, with `sslrootcert`) |
//! | `verify-ca`   | always                   | chain, against the roots           |
//! | `verify-full` | always                   | chain and host name                |
//!
//! The files are read once, when the configuration is loaded, so `sluice check`
//! and `sluice run` refuse the same things; a renewed file is read on reload.

use std::fmt;
use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use percent_encoding::percent_decode_str;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use sha2::Digest;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// The options this module takes out of a connection string.
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// `sslmode`, as libpq means it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// TLS if the server offers it, its certificate not checked (libpq's default).
    Prefer,
    /// TLS, the certificate not checked (unless `sslrootcert` names roots: then as
    /// `verify-ca`).
    Require,
    /// TLS, the certificate's chain verified against the roots; the name not checked.
    VerifyCa,
    /// TLS, the chain verified and the certificate valid for the host's name.
    VerifyFull,
}

impl SslMode {
    fn parse(value: &str) -> Option<Self> {
        Some(match value {
            "disable" => Self::Disable,
            "prefer" => Self::Prefer,
            "require" => Self::Require,
            "verify-ca" => Self::VerifyCa,
            "verify-full" => Self::VerifyFull,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Disable => "disable",
            Self::Prefer => "prefer",
            Self::Require => "require",
            Self::VerifyCa => "verify-ca",
            Self::VerifyFull => "verify-full",
        }
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the roots that verify the server's certificate come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// `sslrootcert=PATH`: the certificates of a PEM file.
    File(PathBuf),
    /// `sslrootcert=system`, or a verifying mode without `sslrootcert`: the
    /// system's trust store.
    System,
}

/// The TLS options of a connection string, as written (files not read yet).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// `sslmode`, if given (libpq's default is `prefer`).
    pub mode: Option<SslMode>,
    /// `sslrootcert`, if given.
    pub root_cert: Option<RootCerts>,
    /// `sslcert`: the client certificate (PEM), with its chain.
    pub client_cert: Option<PathBuf>,
    /// `sslkey`: the client certificate's private key (PEM, not encrypted).
    pub client_key: Option<PathBuf>,
}

/// A problem with a connection string's TLS options or the files they name.
/// Messages name the option and the file, never anything else of the string (it
/// may hold a password).
#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    /// An `sslmode` libpq does not know.
    #[error(
        "sslmode={0:?} is not a TLS mode; expected disable, prefer, require, verify-ca or verify-full"
    )]
    UnknownMode(String),
    /// An option given with an empty value.
    #[error("{0} is empty; expected the path of a PEM file")]
    Empty(&'static str),
    /// `sslrootcert=system` with a mode that would not use it as libpq requires.
    #[error(
        "sslrootcert=system needs sslmode=verify-full (as in libpq: the system's roots vouch for any name they signed, so the name must be checked)"
    )]
    SystemRootsNeedVerifyFull,
    /// `sslcert` without `sslkey`, or the reverse.
    #[error("{given} needs {missing}: a client certificate is the pair of sslcert and sslkey")]
    HalfClientCert {
        /// The option given.
        given: &'static str,
        /// The option missing.
        missing: &'static str,
    },
    /// A file that cannot be read.
    #[error("{option}: cannot read {}: {source}", path.display())]
    Read {
        /// The option naming the file.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file that holds none of what the option needs, or something unusable.
    #[error("{option}: {}: {why}", path.display())]
    Content {
        /// The option naming the file.
        option: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A verifying mode without `sslrootcert`, and no roots in the system store.
    #[error(
        "sslmode={mode} needs trusted roots to verify the server's certificate: no sslrootcert is given and the system trust store has none ({why}); name the CA file with sslrootcert=PATH"
    )]
    NoSystemRoots {
        /// The mode.
        mode: SslMode,
        /// What loading the system store reported.
        why: String,
    },
    /// rustls refused the assembled configuration.
    #[error("TLS configuration: {0}")]
    Rustls(String),
}

/// Takes the TLS options out of `url` (either form tokio-postgres parses: a
/// `postgres://` URL or `key=value` pairs). Returns the rest, for tokio-postgres,
/// and the options. The last of a repeated option wins, as in libpq.
pub fn split_options(url: &str) -> Result<(String, TlsOptions), TlsConfigError> {
    let mut pairs = Vec::new();
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        split_url_query(url, &mut pairs)
    } else {
        split_key_values(url, &mut pairs)
    };
    let mut options = TlsOptions::default();
    for (key, value) in pairs {
        let path = |option: &'static str| {
            if value.is_empty() {
                Err(TlsConfigError::Empty(option))
            } else {
                Ok(PathBuf::from(&value))
            }
        };
        match key.as_str() {
            "sslmode" => {
                options.mode = Some(
                    SslMode::parse(&value)
                        .ok_or_else(|| TlsConfigError::UnknownMode(value.clone()))?,
                )
            }
            "sslrootcert" if value == "system" => options.root_cert = Some(RootCerts::System),
            "sslrootcert" => options.root_cert = Some(RootCerts::File(path("sslrootcert")?)),
            "sslcert" => options.client_cert = Some(path("sslcert")?),
            "sslkey" => options.client_key = Some(path("sslkey")?),
            _ => unreachable!("only TLS_KEYS are taken out"),
        }
    }
    Ok((rest, options))
}

/// The URL form: options are the `&`-separated, percent-encoded pairs after the
/// `?` that follows the credentials.
fn split_url_query(url: &str, pairs: &mut Vec<(String, String)>) -> String {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    // tokio-postgres ends the credentials at the first `@`; a `?` before it is
    // part of a password.
    let from = url[after_scheme..]
        .find('@')
        .map_or(after_scheme, |at| after_scheme + at + 1);
    let Some(question) = url[from..].find('?').map(|q| from + q) else {
        return url.to_string();
    };
    let (base, query) = (&url[..question], &url[question + 1..]);
    let mut kept = Vec::new();
    for part in query.split('&') {
        let (key, value) = part.split_once('=').unwrap_or((part, ""));
        let key = percent_decode_str(key).decode_utf8_lossy();
        if TLS_KEYS.contains(&&*key) {
            let value = percent_decode_str(value).decode_utf8_lossy().into_owned();
            pairs.push((key.into_owned(), value));
        } else {
            kept.push(part);
        }
    }
    if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// The `key=value` form: pairs separated by white space, a value quoted with `'`
/// or not, `\` escaping the next character. A string that does not tokenize is
/// returned whole (and nothing taken out), for tokio-postgres to report.
fn split_key_values(s: &str, pairs: &mut Vec<(String, String)>) -> String {
    let mut found = Vec::new();
    let mut kept = Vec::new();
    let mut chars = s.char_indices().peekable();
    let end_of = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        chars.peek().map_or(s.len(), |&(i, _)| i)
    };
    loop {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let Some(&(start, _)) = chars.peek() else {
            break;
        };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            return s.to_string();
        }
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if(|(_, c)| *c == '\'').is_some() {
            loop {
                match chars.next() {
                    None => return s.to_string(),
                    Some((_, '\'')) => break,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return s.to_string(),
                    },
                    Some((_, c)) => value.push(c),
                }
            }
        } else {
            while let Some((_, c)) = chars.next_if(|(_, c)| !c.is_whitespace()) {
                if c == '\\' {
                    match chars.next() {
                        Some((_, c)) => value.push(c),
                        None => return s.to_string(),
                    }
                } else {
                    value.push(c);
                }
            }
        }
        let end = end_of(&mut chars);
        if TLS_KEYS.contains(&key.as_str()) {
            found.push((key, value));
        } else {
            kept.push(&s[start..end]);
        }
    }
    pairs.extend(found);
    kept.join(" ")
}

/// How the server's certificate is checked.
enum Verification {
    None,
    Chain(RootCertStore),
    Full(RootCertStore),
}

/// The TLS side of a Postgres grant: tokio-postgres's connector, built once from
/// [`TlsOptions`] (files read then).
///
/// Two are equal when they were built from the same options and the files
/// named held the same certificates and key: a reload restarts the pipelines
/// of a grant whose certificate was renewed under the same file name.
#[derive(Clone)]
pub struct PgTls {
    mode: SslMode,
    verifies: &'static str,
    config: Arc<ClientConfig>,
    options: TlsOptions,
    /// SHA-256 of the certificates and key read from the files `options`
    /// names (the connector itself cannot be compared).
    files: [u8; 32],
}

impl PartialEq for PgTls {
    fn eq(&self, other: &Self) -> bool {
        self.mode == other.mode && self.options == other.options && self.files == other.files
    }
}

impl Eq for PgTls {}

impl fmt::Debug for PgTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgTls")
            .field("sslmode", &self.mode)
            .field("verifies", &self.verifies)
            .finish_non_exhaustive()
    }
}

impl PgTls {
    /// Reads the files `options` name and builds the connector.
    pub fn new(options: &TlsOptions) -> Result<Self, TlsConfigError> {
        let system = options.root_cert == Some(RootCerts::System);
        // libpq: `sslrootcert=system` makes the default mode verify-full and
        // refuses a weaker one.
        let mode = match options.mode {
            None if system => SslMode::VerifyFull,
            None => SslMode::Prefer,
            Some(mode) if system && mode != SslMode::VerifyFull => {
                return Err(TlsConfigError::SystemRootsNeedVerifyFull);
            }
            Some(mode) => mode,
        };
        let mut files = sha2::Sha256::new();
        // A named file is read whatever the mode, so a typo is found at load and
        // not on the day the mode changes.
        let roots = match &options.root_cert {
            Some(RootCerts::File(path)) => {
                let certs = certificates("sslrootcert", path)?;
                certs.iter().for_each(|c| files.update(c));
                Some(roots_from(path, certs)?)
            }
            Some(RootCerts::System) => Some(system_roots(mode)?),
            None if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) => {
                Some(system_roots(mode)?)
            }
            None => None,
        };
        let verification = match (mode, roots) {
            (SslMode::VerifyFull, Some(roots)) => Verification::Full(roots),
            // libpq: `require` with a root file behaves as `verify-ca`.
            (SslMode::VerifyCa | SslMode::Require, Some(roots)) => Verification::Chain(roots),
            _ => Verification::None,
        };
        let verifies = match verification {
            Verification::None => "nothing",
            Verification::Chain(_) => "chain",
            Verification::Full(_) => "chain and host name",
        };
        let client = client_cert(options)?;
        if let Some((chain, key)) = &client {
            chain.iter().for_each(|c| files.update(c));
            files.update(key.secret_der());
        }
        let config = client_config(verification, client)?;
        Ok(Self {
            mode,
            verifies,
            config: Arc::new(config),
            options: options.clone(),
            files: files.finalize().into(),
        })
    }

    /// The mode, as libpq means it.
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// The mode tokio-postgres gets: whether to ask for TLS and insist on it.
    /// What is checked of the certificate is this connector's business.
    pub fn wire_mode(&self) -> tokio_postgres::config::SslMode {
        match self.mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        }
    }
}

fn read(option: &'static str, path: &Path) -> Result<Vec<u8>, TlsConfigError> {
    std::fs::read(path).map_err(|source| TlsConfigError::Read {
        option,
        path: path.to_path_buf(),
        source,
    })
}

fn content(option: &'static str, path: &Path, why: impl Into<String>) -> TlsConfigError {
    TlsConfigError::Content {
        option,
        path: path.to_path_buf(),
        why: why.into(),
    }
}

fn certificates(
    option: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsConfigError> {
    let pem = read(option, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(option, path, format!("not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(content(
            option,
            path,
            "holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)",
        ));
    }
    Ok(certs)
}

/// The roots `certs`, read from `path` (`sslrootcert`).
fn roots_from(
    path: &Path,
    certs: Vec<CertificateDer<'static>>,
) -> Result<RootCertStore, TlsConfigError> {
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            content(
                "sslrootcert",
                path,
                format!("certificate {} is not usable as a root: {e}", i + 1),
            )
        })?;
    }
    Ok(roots)
}

fn system_roots(mode: SslMode) -> Result<RootCertStore, TlsConfigError> {
    let loaded = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    roots.add_parsable_certificates(loaded.certs);
    if roots.is_empty() {
        let why = match loaded.errors.first() {
            Some(e) => e.to_string(),
            None => "no certificate found".to_string(),
        };
        return Err(TlsConfigError::NoSystemRoots { mode, why });
    }
    Ok(roots)
}

type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

fn client_cert(options: &TlsOptions) -> Result<Option<ClientCert>, TlsConfigError> {
    let (cert, key) = match (&options.client_cert, &options.client_key) {
        (None, None) => return Ok(None),
        (Some(_), None) => {
            return Err(TlsConfigError::HalfClientCert {
                given: "sslcert",
                missing: "sslkey",
            });
        }
        (None, Some(_)) => {
            return Err(TlsConfigError::HalfClientCert {
                given: "sslkey",
                missing: "sslcert",
            });
        }
        (Some(cert), Some(key)) => (cert, key),
    };
    let chain = certificates("sslcert", cert)?;
    let pem = read("sslkey", key)?;
    let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        content(
            "sslkey",
            key,
            format!(
                "holds no usable private key ({e}); expected an unencrypted PKCS#8, PKCS#1 or SEC1 PEM key"
            ),
        )
    })?;
    Ok(Some((chain, key)))
}

fn provider() -> Arc<CryptoProvider> {
    // Named rather than the process default: the build links both aws-lc-rs and
    // ring, and rustls then has no default to pick.
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_config(
    verification: Verification,
    client: Option<ClientCert>,
) -> Result<ClientConfig, TlsConfigError> {
    let rustls_error = |e: rustls::Error| TlsConfigError::Rustls(e.to_string());
    let provider = provider();
    let webpki = |roots: RootCertStore| {
        WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| TlsConfigError::Rustls(e.to_string()))
    };
    let verifier: Arc<dyn ServerCertVerifier> = match verification {
        Verification::None => Arc::new(NoVerification(provider.clone())),
        Verification::Chain(roots) => Arc::new(ChainOnly(webpki(roots)?)),
        Verification::Full(roots) => webpki(roots)?,
    };
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(rustls_error)?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match client {
        None => builder.with_no_client_auth(),
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|e| TlsConfigError::Rustls(format!("sslcert/sslkey: {e}")))?,
    };
    // Postgres 17's direct TLS (`sslnegotiation=direct`) requires this ALPN; the
    // classic negotiation ignores it.
    config.alpn_protocols = vec![b"postgresql".to_vec()];
    Ok(config)
}

/// `prefer` and `require` (without roots): the handshake is checked (the
/// server holds the key of the certificate it shows) but not the certificate,
/// as libpq does in these modes.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain is verified against the roots, the name is not. The
/// WebPKI verifier checks the chain first and the name last, so its name error
/// means the chain was good.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A TLS handshake with a Postgres server that failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsHandshakeError {
    /// The handshake itself refused the server (its certificate, its name) or
    /// was refused by it (our client certificate): the same connection fails
    /// the same way until someone changes a certificate or the configuration.
    #[error("TLS with {host} refused: {error}; {hint} (not retried: retrying cannot fix this)")]
    Refused {
        /// The host, as the connection string names it.
        host: String,
        /// rustls's error.
        error: rustls::Error,
        /// What to fix.
        hint: &'static str,
    },
    /// The connection failed during the handshake: a network problem, retriable.
    #[error("TLS with {host}: connection failed during the handshake: {source}")]
    Network {
        /// The host.
        host: String,
        /// The I/O error.
        source: io::Error,
    },
    /// The host is not a name TLS can check.
    #[error("TLS with {0}: not a DNS name or IP address")]
    InvalidHost(String),
}

impl TlsHandshakeError {
    /// Whether retrying the same connection cannot help.
    pub fn is_permanent(&self) -> bool {
        !matches!(self, Self::Network { .. })
    }

    fn from_io(host: String, error: io::Error) -> Self {
        // tokio-rustls reports rustls's errors as the payload of an io::Error.
        let Some(tls) = error
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        else {
            return Self::Network {
                host,
                source: error,
            };
        };
        let hint = match tls {
            rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            ) => {
                "sslmode=verify-full checks the host name: connect by a name the server's certificate holds, or use sslmode=verify-ca"
            }
            rustls::Error::InvalidCertificate(CertificateError::UnknownIssuer) => {
                "the server's certificate is not signed by a root in sslrootcert (or the system trust store): name the CA that signed it with sslrootcert=PATH"
            }
            rustls::Error::InvalidCertificate(
                CertificateError::Expired | CertificateError::ExpiredContext { .. },
            ) => "the server's certificate has expired: renew it",
            rustls::Error::InvalidCertificate(_) => {
                "the server's certificate is refused: check it against sslrootcert and sslmode"
            }
            rustls::Error::AlertReceived(_) => {
                "the server refused the handshake: check sslcert/sslkey (the server may require a client certificate its CA signed) and the server's TLS settings"
            }
            _ => {
                "check the server's TLS settings and the connection's sslmode, sslrootcert, sslcert and sslkey"
            }
        };
        Self::Refused {
            host,
            error: tls.clone(),
            hint,
        }
    }
}

impl<S> MakeTlsConnect<S> for PgTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = TlsHandshakeError;

    fn make_tls_connect(&mut self, host: &str) -> Result<PgTlsConnect, TlsHandshakeError> {
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| TlsHandshakeError::InvalidHost(host.to_string()))?;
        Ok(PgTlsConnect {
            connector: tokio_rustls::TlsConnector::from(self.config.clone()),
            name,
            host: host.to_string(),
        })
    }
}

/// One handshake, for one host.
pub struct PgTlsConnect {
    connector: tokio_rustls::TlsConnector,
    name: ServerName<'static>,
    host: String,
}

impl<S> TlsConnect<S> for PgTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = TlsHandshakeError;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream<S>, TlsHandshakeError>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            self.connector
                .connect(self.name, stream)
                .await
                .map(PgTlsStream)
                .map_err(|e| TlsHandshakeError::from_io(self.host, e))
        })
    }
}

/// A TLS session with a Postgres server.
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for PgTlsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for PgTlsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for PgTlsStream<S> {
    /// `tls-server-end-point` (RFC 5929), so that SCRAM authentication binds to
    /// this TLS session: a man in the middle (possible when the certificate is
    /// not verified) then fails authentication instead of relaying it.
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        match session.peer_certificates().and_then(|certs| certs.first()) {
            Some(cert) => match server_end_point(cert) {
                Some(hash) => ChannelBinding::tls_server_end_point(hash),
                None => ChannelBinding::none(),
            },
            None => ChannelBinding::none(),
        }
    }
}

/// The certificate's hash with its signature's hash function (SHA-256 for MD5
/// and SHA-1), per RFC 5929; `None` for a signature without one named (Ed25519,
/// RSA-PSS), where SCRAM then goes without channel binding, as with libpq.
fn server_end_point(cert: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_algorithm(cert)?;
    // DER of the OIDs: sha{1,256,384,512}WithRSAEncryption, md5WithRSAEncryption,
    // ecdsa-with-SHA{1,256,384,512}.
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    enum Hash {
        Sha256,
        Sha384,
        Sha512,
    }
    let hash = match oid {
        [rest @ .., last] if rest == RSA => match last {
            0x04 | 0x05 | 0x0b => Hash::Sha256,
            0x0c => Hash::Sha384,
            0x0d => Hash::Sha512,
            _ => return None,
        },
        [rest @ .., 0x01] if rest == ECDSA => Hash::Sha256,
        [rest @ .., 0x03, last] if rest == ECDSA => match last {
            0x02 => Hash::Sha256,
            0x03 => Hash::Sha384,
            0x04 => Hash::Sha512,
            _ => return None,
        },
        _ => return None,
    };
    Some(match hash {
        Hash::Sha256 => sha2::Sha256::digest(cert).to_vec(),
        Hash::Sha384 => sha2::Sha384::digest(cert).to_vec(),
        Hash::Sha512 => sha2::Sha512::digest(cert).to_vec(),
    })
}

/// The OID of a certificate's `signatureAlgorithm`: `Certificate ::= SEQUENCE {
/// tbsCertificate, signatureAlgorithm SEQUENCE { algorithm OID, ... }, ... }`.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    /// One DER element at the start of `input`: (tag, contents, rest).
    fn element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
        let (&tag, input) = input.split_first()?;
        let (&first, mut input) = input.split_first()?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 || input.len() < n {
                return None;
            }
            let (bytes, rest) = input.split_at(n);
            input = rest;
            bytes
                .iter()
                .fold(0usize, |len, b| (len << 8) | usize::from(*b))
        };
        if input.len() < len {
            return None;
        }
        let (contents, rest) = input.split_at(len);
        Some((tag, contents, rest))
    }
    const SEQUENCE: u8 = 0x30;
    const OID: u8 = 0x06;
    let (SEQUENCE, certificate, _) = element(cert)? else {
        return None;
    };
    let (SEQUENCE, _, after_tbs) = element(certificate)? else {
        return None;
    };
    let (SEQUENCE, algorithm, _) = element(after_tbs)? else {
        return None;
    };
    let (OID, oid, _) = element(algorithm)? else {
        return None;
    };
    Some(oid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(url: &str) -> (String, TlsOptions) {
        split_options(url).unwrap()
    }

    #[test]
    fn url_options_are_taken_out_and_the_rest_kept_in_order() {
        let (rest, options) = split(
            "postgres://u:p%3Fw@db.example:5432/app?application_name=a&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&connect_timeout=5&sslcert=/c.pem&sslkey=/k.pem",
        );
        assert_eq!(
            rest,
            "postgres://u:p%3Fw@db.example:5432/app?application_name=a&connect_timeout=5"
        );
        assert_eq!(
            options,
            TlsOptions {
                mode: Some(SslMode::VerifyFull),
                root_cert: Some(RootCerts::File("/etc/ca.pem".into())),
                client_cert: Some("/c.pem".into()),
                client_key: Some("/k.pem".into()),
            }
        );
    }

    #[test]
    fn a_url_with_only_tls_options_loses_its_query() {
        let (rest, options) = split("postgresql://u@h/db?sslmode=require");
        assert_eq!(rest, "postgresql://u@h/db");
        assert_eq!(options.mode, Some(SslMode::Require));
        let (rest, options) = split("postgres://u@h/db");
        assert_eq!(rest, "postgres://u@h/db");
        assert_eq!(options, TlsOptions::default());
    }

    #[test]
    fn a_question_mark_in_the_password_is_not_the_query() {
        let (rest, options) = split("postgres://u:a?sslmode=x@h/db?sslmode=disable");
        assert_eq!(rest, "postgres://u:a?sslmode=x@h/db");
        assert_eq!(options.mode, Some(SslMode::Disable));
    }

    #[test]
    fn key_value_options_are_taken_out_with_quotes_and_escapes() {
        let (rest, options) = split(
            r"host=h  sslmode = verify-ca password='a b' sslrootcert='/etc/my certs/ca.pem' user=a\ b",
        );
        assert_eq!(rest, r"host=h password='a b' user=a\ b");
        assert_eq!(options.mode, Some(SslMode::VerifyCa));
        assert_eq!(
            options.root_cert,
            Some(RootCerts::File("/etc/my certs/ca.pem".into()))
        );
        let (rest, _) = split(r"host=h password='a\'b' sslmode=require");
        assert_eq!(rest, r"host=h password='a\'b'");
    }

    #[test]
    fn the_last_of_a_repeated_option_wins() {
        let (_, options) = split("postgres://h/db?sslmode=disable&sslmode=verify-full");
        assert_eq!(options.mode, Some(SslMode::VerifyFull));
    }

    #[test]
    fn an_unknown_mode_is_named() {
        let error = split_options("postgres://u:secret@h/db?sslmode=verify_full").unwrap_err();
        let text = error.to_string();
        assert!(text.contains("sslmode=\"verify_full\""), "{text}");
        assert!(!text.contains("secret"), "{text}");
    }

    #[test]
    fn an_empty_path_is_refused() {
        let error = split_options("postgres://h/db?sslrootcert=").unwrap_err();
        assert_eq!(
            error.to_string(),
            "sslrootcert is empty; expected the path of a PEM file"
        );
    }

    #[test]
    fn system_roots_default_to_verify_full_and_refuse_weaker_modes() {
        let (_, options) = split("postgres://h/db?sslrootcert=system&sslmode=require");
        assert!(matches!(
            PgTls::new(&options),
            Err(TlsConfigError::SystemRootsNeedVerifyFull)
        ));
    }

    #[test]
    fn modes_map_to_what_tokio_postgres_knows() {
        use tokio_postgres::config::SslMode as Wire;
        for (url, mode, wire) in [
            ("postgres://h/db", SslMode::Prefer, Wire::Prefer),
            (
                "postgres://h/db?sslmode=disable",
                SslMode::Disable,
                Wire::Disable,
            ),
            (
                "postgres://h/db?sslmode=prefer",
                SslMode::Prefer,
                Wire::Prefer,
            ),
            (
                "postgres://h/db?sslmode=require",
                SslMode::Require,
                Wire::Require,
            ),
        ] {
            let tls = PgTls::new(&split(url).1).unwrap();
            assert_eq!(tls.mode(), mode, "{url}");
            assert_eq!(tls.wire_mode(), wire, "{url}");
            assert_eq!(tls.verifies, "nothing", "{url}");
        }
    }

    #[test]
    fn require_with_a_root_file_verifies_the_chain_as_libpq() {
        let snakeoil = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
        if !Path::new(snakeoil).exists() {
            return;
        }
        let tls = PgTls::new(
            &split(&format!(
                "postgres://h/db?sslmode=require&sslrootcert={snakeoil}"
            ))
            .1,
        )
        .unwrap();
        assert_eq!(tls.verifies, "chain");
        assert_eq!(tls.wire_mode(), tokio_postgres::config::SslMode::Require);
    }

    #[test]
    fn files_are_read_at_load_and_named_when_missing() {
        let options = split("postgres://h/db?sslmode=verify-ca&sslrootcert=/nonexistent/ca.pem").1;
        let error = PgTls::new(&options).unwrap_err().to_string();
        assert!(
            error.starts_with("sslrootcert: cannot read /nonexistent/ca.pem: "),
            "{error}"
        );
        let options = split("postgres://h/db?sslcert=/c.pem").1;
        assert_eq!(
            PgTls::new(&options).unwrap_err().to_string(),
            "sslcert needs sslkey: a client certificate is the pair of sslcert and sslkey"
        );
    }

    #[test]
    fn a_file_without_certificates_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("empty.pem");
        std::fs::write(&path, "not a certificate\n").unwrap();
        let options = split(&format!(
            "postgres://h/db?sslmode=verify-ca&sslrootcert={}",
            path.display()
        ))
        .1;
        let error = PgTls::new(&options).unwrap_err().to_string();
        assert!(error.contains("holds no certificate"), "{error}");
    }

    #[test]
    fn a_client_certificate_is_a_pair_of_readable_pem_files() {
        let (cert, key) = (
            "/etc/ssl/certs/ssl-cert-snakeoil.pem",
            "/etc/ssl/private/ssl-cert-snakeoil.key",
        );
        if std::fs::read(key).is_err() {
            return;
        }
        let options = split(&format!(
            "postgres://h/db?sslmode=require&sslcert={cert}&sslkey={key}"
        ))
        .1;
        assert!(PgTls::new(&options).is_ok());
        // The certificate where the key belongs.
        let options = split(&format!(
            "postgres://h/db?sslmode=require&sslcert={cert}&sslkey={cert}"
        ))
        .1;
        let error = PgTls::new(&options).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("sslkey: {cert}: holds no usable private key")),
            "{error}"
        );
    }

    #[test]
    fn the_signature_algorithm_picks_the_channel_binding_hash() {
        let snakeoil = "/etc/ssl/certs/ssl-cert-snakeoil.pem";
        let Ok(pem) = std::fs::read(snakeoil) else {
            return;
        };
        let cert = CertificateDer::from_pem_slice(&pem).unwrap();
        // sha256WithRSAEncryption
        assert_eq!(
            signature_algorithm(&cert),
            Some(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b][..])
        );
        assert_eq!(server_end_point(&cert).map(|h| h.len()), Some(32));
        assert_eq!(signature_algorithm(&[0x30, 0x05, 0x01]), None);
    }
}
