//! HTTPS for the streaming server: a configured certificate and key (PEM), or a
//! self-signed certificate made at start for the listen address and `localhost`.

use std::{path::Path, sync::Arc};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use tokio_rustls::TlsAcceptor;

use super::Error;

/// The acceptor for `files` (certificate chain, key), or for a new self-signed pair.
pub fn acceptor(files: Option<(&Path, &Path)>, address: &str) -> Result<TlsAcceptor, Error> {
    let (chain, key) = match files {
        Some((cert, key)) => read_pair(cert, key)?,
        None => self_signed(address)?,
    };
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
        .map_err(|e| Error::Tls(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

fn read_pair(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| Error::Tls(format!("{}: {e}", cert.display())))?;
    if chain.is_empty() {
        return Err(Error::Tls(format!(
            "{}: no certificate in it",
            cert.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| Error::Tls(format!("{}: {e}", key.display())))?;
    Ok((chain, key))
}

fn self_signed(
    address: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), Error> {
    let mut names = vec!["localhost".to_string()];
    if address != "localhost" {
        names.push(address.to_string());
    }
    let made = rcgen::generate_simple_self_signed(names).map_err(|e| Error::Tls(e.to_string()))?;
    let key = PrivatePkcs8KeyDer::from(made.signing_key.serialize_der());
    Ok((vec![made.cert.der().clone()], key.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_pair_and_pem_files_make_acceptors_and_bad_files_are_named() {
        acceptor(None, "127.0.0.1").expect("self-signed");
        let dir = tempfile::tempdir().unwrap();
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, made.cert.pem()).unwrap();
        std::fs::write(&key, made.signing_key.serialize_pem()).unwrap();
        acceptor(Some((&cert, &key)), "0.0.0.0").expect("from files");
        // A key file given as the certificate: no certificate in it.
        let e = acceptor(Some((&key, &key)), "0.0.0.0")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("k.pem"), "{e}");
        let missing = dir.path().join("missing.pem");
        let e = acceptor(Some((&cert, &missing)), "0.0.0.0")
            .err()
            .unwrap()
            .to_string();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
