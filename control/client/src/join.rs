//! Join tokens in k3s' form, `K10<sha256 of the CA bundle>::<id>:<secret>`,
//! and the first step of joining: fetching the server's CA bundle from
//! `/cacerts` before anything can be verified, then checking it against the
//! hash the token carries. Only then is the CA trusted, and the token's
//! `<id>:<secret>` sent (as a bearer token, over TLS checked against it).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use skiff_api::join::{JoinToken, ca_hash, hex, valid_id};

/// The largest CA bundle taken from a server.
const MAX_BUNDLE: usize = 1 << 20;

/// Why no CA bundle came.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchError {
    /// Trying again cannot help: not an https server, or a bundle of another
    /// cluster than the token's.
    Refused(String),
    /// The server could not be reached or answered badly: worth a retry.
    Failed(String),
}

impl std::fmt::Display for FetchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FetchError::Refused(m) | FetchError::Failed(m) => f.write_str(m),
        }
    }
}

/// Fetches `https://host:port/cacerts` without verifying the server (there
/// is nothing to verify it with yet) and checks the bundle against the
/// token's hash; a mismatch is an error naming both hashes.
pub async fn fetch_ca(server: &str, token: &JoinToken) -> Result<String, FetchError> {
    let authority = server
        .strip_prefix("https://")
        .ok_or_else(|| FetchError::Refused(format!("{server}: joining needs an https:// server")))?
        .trim_end_matches('/');
    let host = match authority.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']'),
        None => authority,
    };
    let addr = if authority.contains(':') {
        authority.to_string()
    } else {
        format!("{authority}:443")
    };
    let fetch = async {
        let tcp = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(|e| format!("connect to {addr}: {e}"))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unverified(provider)))
            .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from(host.to_string())
            .map_err(|e| format!("{host}: {e}"))?;
        let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS with {addr}: {e}"))?;
        let req =
            format!("GET /cacerts HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
        tls.write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let mut resp = Vec::new();
        (&mut tls)
            .take(MAX_BUNDLE as u64 + 4096)
            .read_to_end(&mut resp)
            .await
            .map_err(|e| format!("reading /cacerts: {e}"))?;
        parse_response(&resp)
    };
    let bundle = tokio::time::timeout(Duration::from_secs(10), fetch)
        .await
        .map_err(|_| format!("{server}/cacerts: no answer in 10 s"))
        .and_then(|r| r)
        .map_err(FetchError::Failed)?;
    if let Some(want) = &token.ca_hash {
        let got = ca_hash(&bundle);
        if &got != want {
            return Err(FetchError::Refused(format!(
                "the server's CA bundle has hash {got}, the join token says {want}: refusing to join (wrong server, or a token from another cluster)"
            )));
        }
    }
    Ok(bundle)
}

/// The body of a `200` answer (with `Content-Length`) as text.
fn parse_response(resp: &[u8]) -> Result<String, String> {
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("/cacerts: an answer without headers")?;
    let head = std::str::from_utf8(&resp[..split]).map_err(|_| "/cacerts: headers not text")?;
    let body = &resp[split + 4..];
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or("");
    if status.split(' ').nth(1) != Some("200") {
        return Err(format!("/cacerts answered {status:?}"));
    }
    let length = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.trim().parse::<usize>().ok())
        .ok_or("/cacerts: no Content-Length")?;
    if length > MAX_BUNDLE || body.len() < length {
        return Err(format!(
            "/cacerts: a body of {} bytes, {length} announced",
            body.len()
        ));
    }
    String::from_utf8(body[..length].to_vec()).map_err(|_| "/cacerts: not text".to_string())
}

/// Accepts any certificate (the signatures of the handshake are still
/// checked): only for fetching the bundle that is checked by hash after.
#[derive(Debug)]
struct Unverified(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cacerts_answers_are_read_by_their_length() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello";
        assert_eq!(parse_response(ok).unwrap(), "hello");
        assert!(parse_response(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\ncontent-length: 9\r\n\r\nshort").is_err());
        assert!(parse_response(b"HTTP/1.1 200 OK\r\n\r\nbody").is_err());
    }
}
