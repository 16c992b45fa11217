//! TLS to PostgreSQL, configured as libpq is: `sslmode` and `sslrootcert` in the database URL.
//!
//! | `sslmode`             | encrypted                      | server certificate checked         |
//! |-----------------------|--------------------------------|------------------------------------|
//! | `disable`             | no                             | –                                  |
//! | `prefer` (default)    | if the server offers it        | no                                 |
//! | `require`             | yes                            | no (as `verify-ca` with a root)    |
//! | `verify-ca`           | yes                            | chain to the root                  |
//! | `verify-full`         | yes                            | chain to the root, and host name   |
//!
//! `sslrootcert` is a PEM file of trusted roots (e.g. a CloudNativePG cluster's CA, mounted from
//! its Secret), or `system` for the system's roots, which the `verify-*` modes use without it.
//! tokio-postgres knows only the first three modes and no `sslrootcert`: both are taken out of
//! the URL here and become the TLS configuration.

use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::store::StoreError;

/// How the connection is secured.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// The connection settings of `url`, and the TLS connector its `sslmode` and `sslrootcert` ask for.
pub(super) fn parse(url: &str) -> Result<(tokio_postgres::Config, MakeRustlsConnect), StoreError> {
    let (url, mode, root) = take_tls_options(url)?;
    let config: tokio_postgres::Config = url.parse().map_err(StoreError::DatabaseUrl)?;
    let mode = mode.unwrap_or(Mode::Prefer);
    // libpq: `require` with a root certificate checks the chain, as `verify-ca` does.
    let mode = if mode == Mode::Require && root.is_some() { Mode::VerifyCa } else { mode };
    let roots = match mode {
        Mode::VerifyCa | Mode::VerifyFull => Some(roots(root.as_deref())?),
        _ => None,
    };
    Ok((config, connector(roots, mode == Mode::VerifyFull)?))
}

/// `url` with `sslrootcert` set to the PEM file `path` (`--database-ca-file`, e.g. mounted from
/// the Secret of the database's CA), unless the URL names one itself; without an `sslmode` in the
/// URL, the server's certificate must then also name the host (`verify-full`).
pub fn with_ca_file(url: &str, path: &str) -> Result<String, StoreError> {
    let mut parsed = url::Url::parse(url)
        .ok()
        .filter(|u| matches!(u.scheme(), "postgres" | "postgresql"))
        .ok_or_else(|| StoreError::DatabaseTls("a CA file needs the URL form (postgres://…)".into()))?;
    let has = |key: &str| parsed.query_pairs().any(|(k, _)| k == key);
    let (root, mode) = (has("sslrootcert"), has("sslmode"));
    let mut query = parsed.query_pairs_mut();
    if !root {
        query.append_pair("sslrootcert", path);
    }
    if !mode {
        query.append_pair("sslmode", "verify-full");
    }
    drop(query);
    Ok(parsed.into())
}

/// `url` without the options tokio-postgres does not know (`sslmode` becomes one it does), the
/// mode and the root certificate option. Connection strings in `key=value` form go through as
/// they are (tokio-postgres reads their `sslmode`; it refuses an `sslrootcert`).
fn take_tls_options(url: &str) -> Result<(String, Option<Mode>, Option<String>), StoreError> {
    let invalid = |problem: String| StoreError::DatabaseTls(problem);
    let Ok(mut parsed) = url::Url::parse(url) else { return Ok((url.to_string(), None, None)) };
    if !matches!(parsed.scheme(), "postgres" | "postgresql") {
        return Ok((url.to_string(), None, None));
    }
    let (mut mode, mut root, mut kept) = (None, None, Vec::new());
    for (key, value) in parsed.query_pairs() {
        match &*key {
            "sslmode" => {
                mode = Some(match &*value {
                    "disable" => Mode::Disable,
                    "prefer" => Mode::Prefer,
                    "require" => Mode::Require,
                    "verify-ca" => Mode::VerifyCa,
                    "verify-full" => Mode::VerifyFull,
                    other => {
                        return Err(invalid(format!(
                            "sslmode {other:?} is not one of disable, prefer, require, verify-ca, verify-full"
                        )));
                    }
                })
            }
            "sslrootcert" => root = Some(value.into_owned()),
            _ => kept.push((key.into_owned(), value.into_owned())),
        }
    }
    // What tokio-postgres should do: encrypt or not; checking the certificate is the connector's.
    let pg_mode = match mode {
        Some(Mode::Disable) => "disable",
        None | Some(Mode::Prefer) => "prefer",
        Some(_) => "require",
    };
    kept.push(("sslmode".into(), pg_mode.into()));
    parsed.query_pairs_mut().clear().extend_pairs(kept);
    Ok((parsed.into(), mode, root))
}

/// The trusted roots: those in the PEM file `path`, or the system's (`system`, or no file).
fn roots(path: Option<&str>) -> Result<RootCertStore, StoreError> {
    let mut roots = RootCertStore::empty();
    match path {
        None | Some("system") => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = roots.add_parsable_certificates(found.certs);
            if added == 0 {
                return Err(StoreError::DatabaseTls(
                    "no system root certificates found; set sslrootcert to a PEM file".into(),
                ));
            }
        }
        Some(path) => {
            let problem = |problem: String| StoreError::DatabaseTls(format!("sslrootcert {path}: {problem}"));
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| problem(e.to_string()))?;
            if certs.is_empty() {
                return Err(problem("holds no certificate".into()));
            }
            for cert in certs {
                roots.add(cert).map_err(|e| problem(e.to_string()))?;
            }
        }
    }
    Ok(roots)
}

fn connector(roots: Option<RootCertStore>, check_name: bool) -> Result<MakeRustlsConnect, StoreError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls_error = |e: &dyn std::fmt::Display| StoreError::DatabaseTls(e.to_string());
    let chain = match roots {
        None => None,
        Some(roots) => Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| tls_error(&e))?,
        ),
    };
    let verifier = Verifier { chain, check_name, algorithms: provider.signature_verification_algorithms };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_error(&e))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

/// Checks the server's certificate as the mode asks: not at all (`prefer`, `require`: libpq's
/// encryption without authentication), its chain (`verify-ca`), or its chain and name
/// (`verify-full`). The handshake's signatures are always checked.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_name: bool,
    algorithms: WebPkiSupportedAlgorithms,
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
        let Some(chain) = &self.chain else { return Ok(ServerCertVerified::assertion()) };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            result => result,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_options_leave_the_url_and_the_rest_stays() {
        let (url, mode, root) = take_tls_options(
            "postgres://app:s3cret@db:5432/hookline?sslmode=verify-full&sslrootcert=/etc/ca.crt&application_name=x",
        )
        .expect("valid");
        assert_eq!(url, "postgres://app:s3cret@db:5432/hookline?application_name=x&sslmode=require");
        assert_eq!((mode, root.as_deref()), (Some(Mode::VerifyFull), Some("/etc/ca.crt")));
        let (url, mode, _) = take_tls_options("postgres://db/hookline").expect("valid");
        assert_eq!((url.as_str(), mode), ("postgres://db/hookline?sslmode=prefer", None));
        let (url, ..) = take_tls_options("host=db sslmode=require").expect("key=value form");
        assert_eq!(url, "host=db sslmode=require");
    }

    #[test]
    fn a_ca_file_asks_for_verify_full_unless_the_url_says_otherwise() {
        let url = with_ca_file("postgres://app:pw@db-rw.shop:5432/app", "/ca/ca.crt").expect("URL form");
        assert_eq!(
            url,
            "postgres://app:pw@db-rw.shop:5432/app?sslrootcert=%2Fca%2Fca.crt&sslmode=verify-full"
        );
        let url = with_ca_file("postgres://db/app?sslmode=verify-ca&sslrootcert=/mine.crt", "/ca/ca.crt")
            .expect("URL form");
        assert_eq!(url, "postgres://db/app?sslmode=verify-ca&sslrootcert=/mine.crt");
        assert!(with_ca_file("host=db dbname=app", "/ca/ca.crt").is_err());
    }

    #[test]
    fn bad_tls_options_are_named_without_the_password() {
        let e = parse("postgres://app:s3cret@db/h?sslmode=verify").err().expect("unknown mode");
        assert!(e.to_string().contains("\"verify\" is not one of"), "{e}");
        let e = parse("postgres://app:s3cret@db/h?sslmode=verify-ca&sslrootcert=/nonexistent/ca.crt")
            .err()
            .expect("missing file");
        let text = crate::report::Chain(&e).to_string();
        assert!(text.contains("/nonexistent/ca.crt") && !text.contains("s3cret"), "{text}");
    }
}
