//! The node's identity on a TLS cluster, as k3s' agent gets it: with a
//! join token (`K10<CA hash>::<id>:<secret>`) the node fetches the server's
//! CA bundle, checks it against the token's hash, and asks the server to
//! sign two keys it made itself: a client certificate (`system:node:<name>`,
//! group `system:nodes`) for the API, and a serving certificate for its
//! endpoint. They are kept in `<data-dir>/pki` (keys 0600) and renewed at
//! start when they near their expiry or no longer cover the node's address,
//! with the old certificate as the proof (no token needed).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use skiff_api::v1::JoinRequest;
use skiff_client::join::{FetchError, JoinToken, ca_hash, fetch_ca};
use skiff_client::{Client, Credentials};

/// A certificate this close to its expiry is renewed (k3s: 90 days).
const RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 3600);

/// The node's certificates and the CAs that check its peers.
#[derive(Clone)]
pub struct Certs {
    /// Checks the API server (and is what signs node serving certificates).
    pub server_ca: String,
    /// Checks the API server's client certificate on the node endpoint.
    pub client_ca: String,
    pub client_cert: String,
    pub client_key: String,
    pub serving_cert: String,
    pub serving_key: String,
}

/// The files, `client.crt` last: every file is written aside first, then
/// renamed into place in this order, so a `client.crt` of the new set
/// means the others are there.
const FILES: [&str; 6] = [
    "server-ca.crt",
    "client-ca.crt",
    "serving.crt",
    "serving.key",
    "client.key",
    "client.crt",
];

impl Certs {
    fn load(dir: &Path) -> Result<Option<Certs>> {
        let mut texts = Vec::new();
        for f in FILES {
            match std::fs::read_to_string(dir.join(f)) {
                Ok(t) => texts.push(t),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => {
                    return Err(e).with_context(|| format!("reading {}", dir.join(f).display()));
                }
            }
        }
        let [
            server_ca,
            client_ca,
            serving_cert,
            serving_key,
            client_key,
            client_cert,
        ] = <[String; 6]>::try_from(texts).expect("six files");
        Ok(Some(Certs {
            server_ca,
            client_ca,
            client_cert,
            client_key,
            serving_cert,
            serving_key,
        }))
    }

    fn save(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        }
        let texts = [
            &self.server_ca,
            &self.client_ca,
            &self.serving_cert,
            &self.serving_key,
            &self.client_key,
            &self.client_cert,
        ];
        for (f, text) in FILES.iter().zip(texts) {
            write_aside(&dir.join(f), text)?;
        }
        for f in FILES {
            let path = dir.join(f);
            std::fs::rename(aside(&path), &path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// The credentials for the API server.
    pub fn credentials(&self, server: &str) -> Credentials {
        Credentials {
            server: server.to_string(),
            ca_pem: Some(self.server_ca.clone()),
            cert_pem: Some(self.client_cert.clone()),
            key_pem: Some(self.client_key.clone()),
            ..Credentials::default()
        }
    }
}

/// Writes `text` (0600, synced) next to `path`, as `<path>.new`.
fn write_aside(path: &Path, text: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = aside(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("writing {}", tmp.display()))?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    Ok(())
}

/// `<path>.new`
fn aside(path: &Path) -> PathBuf {
    PathBuf::from(format!("{}.new", path.display()))
}

/// What a certificate says of itself.
#[derive(Debug, PartialEq, Eq)]
pub struct CertFacts {
    /// The subject's common name (the user).
    pub common_name: String,
    /// Seconds left until it expires (negative: expired).
    pub seconds_left: i64,
    pub ips: Vec<std::net::IpAddr>,
}

pub fn facts(cert_pem: &str) -> Result<CertFacts> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
        .map_err(|e| anyhow::anyhow!("not a PEM certificate: {e}"))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("not an X.509 certificate: {e}"))?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let mut ips = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::IPAddress(b) = n {
                match b.len() {
                    4 => ips.push(std::net::IpAddr::from(<[u8; 4]>::try_from(*b)?)),
                    16 => ips.push(std::net::IpAddr::from(<[u8; 16]>::try_from(*b)?)),
                    _ => {}
                }
            }
        }
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|c| c.as_str().ok())
        .unwrap_or_default()
        .to_string();
    Ok(CertFacts {
        common_name,
        seconds_left: cert.validity().not_after.timestamp() - now,
        ips,
    })
}

/// Why stored certificates are not used as they are.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    Good,
    /// Still valid: renewed with the client certificate as proof.
    Renew(&'static str),
    /// Unusable: joining again needs the token.
    Join(&'static str),
}

fn judge(certs: &Certs, name: &str, node_ip: Ipv4Addr) -> Verdict {
    let (Ok(client), Ok(serving)) = (facts(&certs.client_cert), facts(&certs.serving_cert)) else {
        return Verdict::Join("unreadable certificates");
    };
    if client.common_name != format!("system:node:{name}") {
        return Verdict::Join("certificates of another node name");
    }
    if client.seconds_left <= 0 {
        return Verdict::Join("an expired client certificate");
    }
    if client.seconds_left < RENEW_BEFORE.as_secs() as i64
        || serving.seconds_left < RENEW_BEFORE.as_secs() as i64
    {
        return Verdict::Renew("certificates near their expiry");
    }
    if !serving.ips.contains(&node_ip.into()) {
        return Verdict::Renew("a serving certificate without the node's address");
    }
    Verdict::Good
}

/// A key and a certificate request for it (PEM each).
fn key_and_request(cn: &str) -> Result<(String, String)> {
    let key = rcgen::KeyPair::generate().context("generating a key")?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, cn.to_string());
    let csr = params
        .serialize_request(&key)
        .context("making a certificate request")?;
    Ok((key.serialize_pem(), csr.pem()?))
}

fn pki_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// The node's certificates: the stored ones when still good, else new ones
/// from the server (renewed with the old client certificate, or joined with
/// `token`). Retries while the server cannot be reached; a token whose CA
/// hash does not match the server's is an error at once.
pub async fn certificates(
    server: &str,
    token: Option<&str>,
    data_dir: &Path,
    name: &str,
    node_ip: Ipv4Addr,
) -> Result<Certs> {
    let dir = pki_dir(data_dir);
    let stored = Certs::load(&dir)?;
    // A token naming another CA than the stored certificates' means the
    // node is joining another cluster: those certificates are of no use.
    let token_ca = token
        .and_then(|t| JoinToken::parse(t).ok())
        .and_then(|t| t.ca_hash);
    let verdict = match &stored {
        None => Verdict::Join("no certificates yet"),
        Some(c)
            if token_ca
                .as_ref()
                .is_some_and(|h| *h != ca_hash(&c.server_ca)) =>
        {
            Verdict::Join("certificates of another cluster than the token's")
        }
        Some(c) => judge(c, name, node_ip),
    };
    let (creds, why) = match (stored, verdict) {
        (Some(c), Verdict::Good) => return Ok(c),
        (Some(c), Verdict::Renew(why)) => (c.credentials(server), why),
        (_, v) => {
            let why = match v {
                Verdict::Join(why) | Verdict::Renew(why) => why,
                Verdict::Good => "no certificates yet",
            };
            let Some(token) = token else {
                bail!(
                    "this node has {why} and no join token: pass --token K10... (`skiff token create` on the server, or its <data-dir>/token)"
                );
            };
            let token = JoinToken::parse(token).map_err(anyhow::Error::msg)?;
            if token.ca_hash.is_none() {
                tracing::warn!(
                    "the join token carries no CA hash: trusting whatever CA {server} presents"
                );
            }
            let ca = retry("fetching the CA bundle", || fetch_ca(server, &token)).await?;
            let creds = Credentials {
                server: server.to_string(),
                ca_pem: Some(ca),
                token: Some(token.bearer()),
                ..Credentials::default()
            };
            (creds, why)
        }
    };
    tracing::info!(node = name, "obtaining node certificates: {why}");
    let (client_key, client_csr) = key_and_request(&format!("system:node:{name}"))?;
    let (serving_key, serving_csr) = key_and_request(&format!("system:node:{name}"))?;
    let req = JoinRequest {
        node_name: name.to_string(),
        client_csr,
        serving_csr,
        addresses: vec![node_ip.to_string()],
    };
    let answer = retry("joining", || {
        let (creds, req) = (creds.clone(), req.clone());
        async move {
            let client = Client::connect_with(&creds)
                .await
                .map_err(|e| Failure::Retry(e.to_string()))?;
            client
                .bootstrap()
                .join(req)
                .await
                .map(|r| r.into_inner())
                .map_err(|s| match s.code() {
                    tonic::Code::Unavailable | tonic::Code::Unknown => {
                        Failure::Retry(s.message().to_string())
                    }
                    _ => Failure::Fatal(format!(
                        "the server refused to join this node: {}",
                        s.message()
                    )),
                })
        }
    })
    .await?;
    let certs = Certs {
        server_ca: answer.server_ca,
        client_ca: answer.client_ca,
        client_cert: answer.client_certificate,
        client_key,
        serving_cert: answer.serving_certificate,
        serving_key,
    };
    certs.save(&dir)?;
    tracing::info!(node = name, dir = %dir.display(), "node certificates stored");
    Ok(certs)
}

enum Failure {
    Retry(String),
    Fatal(String),
}

impl From<FetchError> for Failure {
    fn from(e: FetchError) -> Failure {
        match e {
            FetchError::Refused(m) => Failure::Fatal(m),
            FetchError::Failed(m) => Failure::Retry(m),
        }
    }
}

/// Retries `f` with back-off while it fails in a way that may pass.
async fn retry<T, E, F, Fut>(what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
    E: Into<Failure>,
{
    let mut delay = Duration::from_millis(200);
    loop {
        match f().await.map_err(Into::into) {
            Ok(v) => return Ok(v),
            Err(Failure::Fatal(e)) => bail!("{e}"),
            Err(Failure::Retry(e)) => tracing::warn!("{what}: {e}; retrying in {delay:?}"),
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn self_signed(cn: &str, days: i64, ip: Ipv4Addr) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.subject_alt_names
            .push(rcgen::SanType::IpAddress(std::net::IpAddr::V4(ip)));
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(1);
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        (p.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn certs(client_days: i64, serving_ip: Ipv4Addr, cn: &str) -> Certs {
        let (client_cert, client_key) = self_signed(cn, client_days, serving_ip);
        let (serving_cert, serving_key) = self_signed(cn, 365, serving_ip);
        Certs {
            server_ca: "ca".into(),
            client_ca: "ca".into(),
            client_cert,
            client_key,
            serving_cert,
            serving_key,
        }
    }

    #[test]
    fn stored_certificates_are_kept_renewed_or_replaced() {
        let ip = Ipv4Addr::new(10, 1, 2, 3);
        let other = Ipv4Addr::new(10, 9, 9, 9);
        let me = "system:node:n1";
        assert_eq!(judge(&certs(365, ip, me), "n1", ip), Verdict::Good);
        assert!(matches!(
            judge(&certs(30, ip, me), "n1", ip),
            Verdict::Renew(_)
        ));
        assert!(matches!(
            judge(&certs(365, other, me), "n1", ip),
            Verdict::Renew(_)
        ));
        assert!(matches!(
            judge(&certs(-1, ip, me), "n1", ip),
            Verdict::Join(_)
        ));
        assert!(matches!(
            judge(&certs(365, ip, "system:node:n2"), "n1", ip),
            Verdict::Join(_)
        ));
        assert!(matches!(
            judge(&certs(365, ip, "system:node:n10"), "n1", ip),
            Verdict::Join(_)
        ));
        let mut broken = certs(365, ip, me);
        broken.client_cert = "junk".into();
        assert!(matches!(judge(&broken, "n1", ip), Verdict::Join(_)));

        let dir = tempfile::tempdir().unwrap();
        let c = certs(365, ip, me);
        c.save(&dir.path().join("pki")).unwrap();
        let back = Certs::load(&dir.path().join("pki")).unwrap().unwrap();
        assert_eq!(back.client_cert, c.client_cert);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("pki/client.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
