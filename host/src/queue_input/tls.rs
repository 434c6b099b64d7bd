//! TLS to RabbitMQ beyond the system trust store: the certificates of a private
//! CA, and a client certificate for mutual TLS. The files are read and checked
//! when the configuration loads, so `sluice check` and `run` refuse the same
//! things, and a connect (the first, or any reconnect) reads nothing from disk.
//!
//! lapin's rustls backend takes them as PEM text: the CA certificates are added
//! to the platform verifier's roots (trusted in addition to the system store,
//! not instead of it); the client certificate and key are offered when the
//! broker asks for one.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};

/// An amqp connection's TLS settings (its `tls` table), with the contents of
/// the files they name.
///
/// `Debug` names the files and leaves their contents out (the key is a secret),
/// but for a digest of them. `==` compares the contents too: a reload restarts
/// a pipeline whose settings differ, so a renewed certificate or key, even
/// under the same file name, restarts the pipeline's connection with it.
#[derive(Clone, PartialEq, Eq)]
pub struct AmqpTls {
    /// `ca_file`: the CA certificates, PEM, trusted besides the system store.
    ca: Option<PemFile>,
    /// `cert_file` and `key_file`: the client's certificate chain and key, PEM.
    client: Option<(PemFile, PemFile)>,
}

#[derive(Clone, PartialEq, Eq)]
struct PemFile {
    path: PathBuf,
    pem: Vec<u8>,
}

/// What is wrong with a connection's TLS settings; [`AmqpTlsError::key`] names
/// the setting.
#[derive(Debug, thiserror::Error)]
pub enum AmqpTlsError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The setting.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// A file was read but does not hold what the setting needs.
    #[error("{}: {why}", path.display())]
    Content {
        /// The setting.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A client certificate without its key, or the reverse.
    #[error(
        "is set but `{missing}` is not; a client certificate needs both its certificate and its private key"
    )]
    HalfClientCert {
        /// The setting given.
        key: &'static str,
        /// The one missing.
        missing: &'static str,
    },
}

impl AmqpTlsError {
    /// The setting at fault (`ca_file`, `cert_file` or `key_file`).
    pub fn key(&self) -> &'static str {
        match self {
            AmqpTlsError::Read { key, .. }
            | AmqpTlsError::Content { key, .. }
            | AmqpTlsError::HalfClientCert { key, .. } => key,
        }
    }
}

impl AmqpTls {
    /// Reads and checks the files: the CA file must hold certificates usable as
    /// roots, the certificate file a certificate chain, the key file the
    /// unencrypted private key of that certificate. Every problem is returned.
    pub fn read(
        ca_file: Option<&Path>,
        cert_file: Option<&Path>,
        key_file: Option<&Path>,
    ) -> Result<Self, Vec<AmqpTlsError>> {
        let mut problems = Vec::new();
        let ca = match ca_file.map(|path| (path, read_roots(path))) {
            None => None,
            Some((path, Ok(pem))) => Some(PemFile {
                path: path.to_path_buf(),
                pem,
            }),
            Some((_, Err(e))) => {
                problems.push(e);
                None
            }
        };
        let client = match (cert_file, key_file) {
            (None, None) => None,
            (Some(_), None) => {
                problems.push(AmqpTlsError::HalfClientCert {
                    key: "cert_file",
                    missing: "key_file",
                });
                None
            }
            (None, Some(_)) => {
                problems.push(AmqpTlsError::HalfClientCert {
                    key: "key_file",
                    missing: "cert_file",
                });
                None
            }
            (Some(cert), Some(key)) => match read_client_cert(cert, key) {
                Ok(files) => Some(files),
                Err(mut found) => {
                    problems.append(&mut found);
                    None
                }
            },
        };
        if problems.is_empty() {
            Ok(Self { ca, client })
        } else {
            Err(problems)
        }
    }

    /// What lapin takes to connect with these settings.
    pub fn lapin_config(&self) -> OwnedTLSConfig {
        OwnedTLSConfig {
            // Checked as PEM at load; PEM is ASCII, so nothing is lost.
            cert_chain: self
                .ca
                .as_ref()
                .map(|ca| String::from_utf8_lossy(&ca.pem).into_owned()),
            // `PKCS8` is tcp-stream's name for "PEM certificate and key"; with
            // rustls it reads PKCS#8, PKCS#1 and SEC1 keys alike.
            identity: self
                .client
                .as_ref()
                .map(|(cert, key)| OwnedIdentity::PKCS8 {
                    pem: cert.pem.clone(),
                    key: key.pem.clone(),
                }),
        }
    }

    /// For messages: what is trusted and presented, by file name.
    pub fn describe(&self) -> String {
        let ca = match &self.ca {
            Some(ca) => format!("trusts {} and the system CAs", ca.path.display()),
            None => "trusts the system CAs".to_string(),
        };
        match &self.client {
            Some((cert, _)) => format!("{ca}, presents {}", cert.path.display()),
            None => format!("{ca}, presents no client certificate"),
        }
    }
}

impl AmqpTls {
    /// The first 8 bytes of the SHA-256 of the files' contents, in hex.
    fn digest(&self) -> String {
        use sha2::{Digest, Sha256};
        let mut hash = Sha256::new();
        let client = self.client.iter().flat_map(|(cert, key)| [cert, key]);
        for file in self.ca.iter().chain(client) {
            hash.update((file.pem.len() as u64).to_le_bytes());
            hash.update(&file.pem);
        }
        hex::encode(&hash.finalize()[..8])
    }
}

/// What to do about a connect that failed on TLS, when `error` is a TLS
/// failure this can explain: the rustls error lapin's I/O error carries.
pub fn hint(error: &lapin::Error) -> Option<&'static str> {
    use rustls::{AlertDescription as Alert, CertificateError as Cert, Error};
    let lapin::ErrorKind::IOError(io) = error.kind() else {
        return None;
    };
    let tls = io.get_ref()?.downcast_ref::<Error>()?;
    Some(match tls {
        Error::InvalidCertificate(Cert::UnknownIssuer) => {
            "no trusted CA signed the broker's certificate: name the CA that signed it in the connection's tls.ca_file"
        }
        Error::InvalidCertificate(Cert::NotValidForName | Cert::NotValidForNameContext { .. }) => {
            "the URL's host is not in the broker's certificate: connect by a name or IP address the certificate holds"
        }
        Error::InvalidCertificate(Cert::Expired | Cert::ExpiredContext { .. }) => {
            "the broker's certificate has expired"
        }
        Error::AlertReceived(Alert::CertificateRequired) => {
            "the broker requires a client certificate: set the connection's tls.cert_file and tls.key_file"
        }
        Error::AlertReceived(
            Alert::BadCertificate | Alert::UnknownCA | Alert::CertificateUnknown,
        ) => {
            "the broker refused the client certificate: the CA that signed it must be in the broker's ssl_options.cacertfile"
        }
        _ => return None,
    })
}

impl fmt::Debug for AmqpTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AmqpTls")
            .field("ca_file", &self.ca.as_ref().map(|ca| &ca.path))
            .field(
                "cert_file",
                &self.client.as_ref().map(|(cert, _)| &cert.path),
            )
            .field("key_file", &self.client.as_ref().map(|(_, key)| &key.path))
            .field("contents_sha256", &self.digest())
            .finish()
    }
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, AmqpTlsError> {
    std::fs::read(path).map_err(|source| AmqpTlsError::Read {
        key,
        path: path.to_path_buf(),
        source,
    })
}

fn content(key: &'static str, path: &Path, why: impl Into<String>) -> AmqpTlsError {
    AmqpTlsError::Content {
        key,
        path: path.to_path_buf(),
        why: why.into(),
    }
}

/// The file's bytes and the certificates in it (at least one).
fn certificates(
    key: &'static str,
    path: &Path,
) -> Result<(Vec<u8>, Vec<CertificateDer<'static>>), AmqpTlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| content(key, path, format!("not a PEM file: {e}")))?;
    if certs.is_empty() {
        return Err(content(
            key,
            path,
            "holds no certificate (expected PEM `BEGIN CERTIFICATE` blocks)",
        ));
    }
    Ok((pem, certs))
}

fn read_roots(path: &Path) -> Result<Vec<u8>, AmqpTlsError> {
    let (pem, certs) = certificates("ca_file", path)?;
    let mut roots = RootCertStore::empty();
    for (i, cert) in certs.into_iter().enumerate() {
        // The platform verifier refuses every connection for one root it
        // cannot parse: find it now, named.
        roots.add(cert).map_err(|e| {
            content(
                "ca_file",
                path,
                format!("certificate {} is not usable as a CA: {e}", i + 1),
            )
        })?;
    }
    Ok(pem)
}

fn read_client_cert(
    cert_path: &Path,
    key_path: &Path,
) -> Result<(PemFile, PemFile), Vec<AmqpTlsError>> {
    let chain = certificates("cert_file", cert_path);
    let key = read("key_file", key_path).and_then(|pem| {
        let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
            content(
                "key_file",
                key_path,
                format!(
                    "holds no usable private key ({e}); expected an unencrypted PKCS#8, PKCS#1 or SEC1 PEM key"
                ),
            )
        })?;
        Ok((pem, key))
    });
    let ((cert_pem, chain), (key_pem, key)) = match (chain, key) {
        (Ok(chain), Ok(key)) => (chain, key),
        (chain, key) => return Err(chain.err().into_iter().chain(key.err()).collect()),
    };
    // What a connect builds, built now: rustls checks that it can sign with
    // the key and that the key belongs to the certificate.
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|builder| {
            builder
                .with_root_certificates(RootCertStore::empty())
                .with_client_auth_cert(chain, key)
        })
        .map_err(|e| {
            vec![content(
                "key_file",
                key_path,
                format!("cannot be used with {}: {e}", cert_path.display()),
            )]
        })?;
    Ok((
        PemFile {
            path: cert_path.to_path_buf(),
            pem: cert_pem,
        },
        PemFile {
            path: key_path.to_path_buf(),
            pem: key_pem,
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A CA, and a client certificate it signed, made with `openssl` in a
    /// fresh folder (removed when dropped).
    fn files() -> tempfile::TempDir {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let run = |command: &str| {
            let out = std::process::Command::new("openssl")
                .args(command.split_whitespace())
                .current_dir(dir)
                .output()
                .expect("openssl");
            assert!(out.status.success(), "openssl {command}: {out:?}");
        };
        let ec = "-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes";
        run(&format!(
            "req -x509 {ec} -keyout ca.key -out ca.pem -days 2 -subj /CN=test-ca"
        ));
        run(&format!(
            "req {ec} -keyout client.key -out client.csr -subj /CN=client"
        ));
        // Extensions make it an X.509 v3 certificate: webpki refuses v1 ones.
        std::fs::write(dir.join("client.ext"), "extendedKeyUsage = clientAuth\n").unwrap();
        run(
            "x509 -req -in client.csr -CA ca.pem -CAkey ca.key -CAcreateserial \
             -out client.pem -days 2 -extfile client.ext",
        );
        tmp
    }

    #[test]
    fn reads_a_ca_and_a_client_certificate_for_lapin() {
        let tmp = files();
        let dir = tmp.path();
        let tls = AmqpTls::read(
            Some(&dir.join("ca.pem")),
            Some(&dir.join("client.pem")),
            Some(&dir.join("client.key")),
        )
        .unwrap();
        let config = tls.lapin_config();
        assert!(config.cert_chain.unwrap().contains("BEGIN CERTIFICATE"));
        assert!(matches!(config.identity, Some(OwnedIdentity::PKCS8 { .. })));
        let debug = format!("{tls:?}");
        assert!(
            debug.contains("client.key") && !debug.contains("PRIVATE"),
            "{debug}"
        );
        // A renewed file under the same name makes other settings, which a
        // reload compares, and shows in `Debug`.
        std::fs::copy(dir.join("client.pem"), dir.join("ca.pem")).unwrap();
        let renewed = AmqpTls::read(
            Some(&dir.join("ca.pem")),
            Some(&dir.join("client.pem")),
            Some(&dir.join("client.key")),
        )
        .unwrap();
        assert_ne!(renewed, tls);
        assert_ne!(format!("{renewed:?}"), debug);
    }

    #[test]
    fn refuses_what_a_connect_could_not_use_naming_the_setting() {
        let tmp = files();
        let dir = tmp.path();
        let keys = |result: Result<AmqpTls, Vec<AmqpTlsError>>| -> Vec<&'static str> {
            result.unwrap_err().iter().map(AmqpTlsError::key).collect()
        };
        // Missing, not PEM, a key for a certificate file.
        std::fs::write(dir.join("junk.pem"), "not a certificate").unwrap();
        assert_eq!(
            keys(AmqpTls::read(Some(&dir.join("nope.pem")), None, None)),
            ["ca_file"]
        );
        assert_eq!(
            keys(AmqpTls::read(Some(&dir.join("junk.pem")), None, None)),
            ["ca_file"]
        );
        assert_eq!(
            keys(AmqpTls::read(
                None,
                Some(&dir.join("client.key")),
                Some(&dir.join("client.key"))
            )),
            ["cert_file"]
        );
        // Half a client certificate.
        assert_eq!(
            keys(AmqpTls::read(None, Some(&dir.join("client.pem")), None)),
            ["cert_file"]
        );
        assert_eq!(
            keys(AmqpTls::read(None, None, Some(&dir.join("client.key")))),
            ["key_file"]
        );
        // The CA's key with the client's certificate.
        let err = AmqpTls::read(
            None,
            Some(&dir.join("client.pem")),
            Some(&dir.join("ca.key")),
        )
        .unwrap_err();
        assert_eq!(err[0].key(), "key_file");
        assert!(
            err[0].to_string().contains("cannot be used with"),
            "{}",
            err[0]
        );
    }
}
