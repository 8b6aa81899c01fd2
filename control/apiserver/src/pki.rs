//! The cluster's certificates, made in the data dir at first start (k3s'
//! layout, smaller): a server CA that signs the serving certificate, a
//! client CA that signs client certificates (CN = user, O = groups), and the
//! admin's client certificate for `<data-dir>/admin.kubeconfig`. Keys are
//! written 0600. The serving certificate is issued again when it no longer
//! covers the addresses the server answers on, or nears its expiry.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, SanType,
};
use time::OffsetDateTime;

/// A CA's lifetime (k3s: 10 years).
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// A leaf certificate's lifetime (k3s: 1 year).
const LEAF_LIFETIME: Duration = Duration::from_secs(365 * 24 * 3600);
/// A leaf this close to its expiry is issued again (k3s: 90 days).
const RENEW_BEFORE: Duration = Duration::from_secs(90 * 24 * 3600);

/// The admin user of `admin.kubeconfig`.
pub const ADMIN_USER: &str = "system:admin";
pub const MASTERS_GROUP: &str = "system:masters";
/// The API server's user when it calls nodes.
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// A CA: its certificate (PEM) and what signs with it.
pub struct Authority {
    pub cert_pem: String,
    cert: Certificate,
    key: KeyPair,
}

/// A certificate and its key, in PEM.
#[derive(Clone)]
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: String,
}

/// Everything the TLS listener and the admin kubeconfig need.
pub struct Pki {
    pub dir: PathBuf,
    pub server_ca: Authority,
    pub client_ca: Authority,
    pub serving: Issued,
    pub admin: Issued,
    /// What the API server presents to nodes (kube-apiserver's
    /// `--kubelet-client-certificate`).
    pub kubelet_client: Issued,
}

/// What the serving certificate must cover.
#[derive(Clone, Debug, Default)]
pub struct Names {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl Names {
    /// The names every server answers to: loopback, this host, and the
    /// `kubernetes` Service (its ClusterIP and DNS names) for pods.
    pub fn for_server(listen: IpAddr, kubernetes_ip: Option<IpAddr>) -> Names {
        let mut dns: Vec<String> = [
            "localhost",
            "kubernetes",
            "kubernetes.default",
            "kubernetes.default.svc",
            "kubernetes.default.svc.cluster.local",
        ]
        .map(String::from)
        .to_vec();
        if let Ok(h) = std::fs::read_to_string("/proc/sys/kernel/hostname") {
            let h = h.trim();
            if !h.is_empty() && !dns.iter().any(|d| d == h) {
                dns.push(h.to_string());
            }
        }
        let mut ips: Vec<IpAddr> = vec![
            IpAddr::from([127, 0, 0, 1]),
            IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
        ];
        ips.extend(kubernetes_ip);
        if !listen.is_unspecified() && !ips.contains(&listen) {
            ips.push(listen);
        }
        Names { dns, ips }
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

fn err(what: &str, e: impl std::fmt::Display) -> String {
    format!("{what}: {e}")
}

pub(crate) fn write_secret(path: &Path, text: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| err(&format!("write {}", tmp.display()), e))?;
    f.write_all(text.as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| err(&format!("write {}", tmp.display()), e))?;
    std::fs::rename(&tmp, path).map_err(|e| err(&format!("write {}", path.display()), e))
}

fn read(path: &Path) -> Result<Option<String>, String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(err(&format!("read {}", path.display()), e)),
    }
}

fn dn(common_name: &str, orgs: &[&str]) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    for o in orgs {
        dn.push(DnType::OrganizationName, *o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

impl Authority {
    /// Loads `<name>.crt`/`<name>.key` from `dir`, or makes them.
    fn load_or_create(dir: &Path, name: &str) -> Result<Authority, String> {
        let (crt, key_path) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        if let (Some(cert_pem), Some(key_pem)) = (read(&crt)?, read(&key_path)?) {
            let key =
                KeyPair::from_pem(&key_pem).map_err(|e| err(&key_path.display().to_string(), e))?;
            // rcgen signs with parameters, not with a parsed certificate:
            // the same subject and key give the issuer every leaf names.
            let params = CertificateParams::from_ca_cert_pem(&cert_pem)
                .map_err(|e| err(&crt.display().to_string(), e))?;
            let cert = params
                .self_signed(&key)
                .map_err(|e| err(&crt.display().to_string(), e))?;
            return Ok(Authority {
                cert_pem,
                cert,
                key,
            });
        }
        let key = KeyPair::generate().map_err(|e| err("generate a key", e))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(&format!("skiff-{name}@{}", now().unix_timestamp()), &[]);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now() - time::Duration::minutes(5);
        params.not_after = now() + CA_LIFETIME;
        let cert = params
            .self_signed(&key)
            .map_err(|e| err(&format!("make the {name}"), e))?;
        let cert_pem = cert.pem();
        write_secret(&key_path, &key.serialize_pem())?;
        write_secret(&crt, &cert_pem)?;
        Ok(Authority {
            cert_pem,
            cert,
            key,
        })
    }

    /// Issues a leaf: a server certificate for `names`, or a client
    /// certificate for `user` in `groups`.
    pub fn issue(
        &self,
        user: &str,
        groups: &[&str],
        server: Option<&Names>,
    ) -> Result<Issued, String> {
        let key = KeyPair::generate().map_err(|e| err("generate a key", e))?;
        let cert = leaf(user, groups, server)?
            .signed_by(&key, &self.cert, &self.key)
            .map_err(|e| err(&format!("issue a certificate for {user}"), e))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Signs the key of a PEM certificate request (its signature checked)
    /// as a leaf for `user`; whatever else the request asks for is
    /// ignored: the names and usages are the server's choice.
    pub fn sign_request(
        &self,
        csr_pem: &str,
        user: &str,
        groups: &[&str],
        server: Option<&Names>,
    ) -> Result<String, String> {
        let mut csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| {
            err(
                "read the certificate request (PEM PKCS#10, signed by its key)",
                e,
            )
        })?;
        csr.params = leaf(user, groups, server)?;
        let cert = csr
            .signed_by(&self.cert, &self.key)
            .map_err(|e| err(&format!("sign a certificate for {user}"), e))?;
        Ok(cert.pem())
    }
}

/// A leaf's parameters: a server certificate for `names`, or a client
/// certificate; CN = user, O = groups.
fn leaf(user: &str, groups: &[&str], server: Option<&Names>) -> Result<CertificateParams, String> {
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(user, groups);
    params.not_before = now() - time::Duration::minutes(5);
    params.not_after = now() + LEAF_LIFETIME;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    match server {
        Some(names) => {
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            for d in &names.dns {
                params.subject_alt_names.push(SanType::DnsName(
                    d.clone()
                        .try_into()
                        .map_err(|e| err(&format!("DNS name {d}"), e))?,
                ));
            }
            for ip in &names.ips {
                params.subject_alt_names.push(SanType::IpAddress(*ip));
            }
        }
        None => params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth],
    }
    Ok(params)
}

/// A stored leaf that is still good: parses, is not near expiry, and (for
/// a serving certificate) covers every name.
fn still_good(cert_pem: &str, names: Option<&Names>) -> bool {
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    let expires = cert.validity().not_after.timestamp();
    if expires - now().unix_timestamp() < RENEW_BEFORE.as_secs() as i64 {
        return false;
    }
    let Some(names) = names else {
        return true;
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return false;
    };
    use x509_parser::extensions::GeneralName;
    let mut dns = Vec::new();
    let mut ips = Vec::new();
    for n in &san.value.general_names {
        match n {
            GeneralName::DNSName(d) => dns.push(d.to_string()),
            GeneralName::IPAddress(b) => match b.len() {
                4 => ips.push(IpAddr::from(<[u8; 4]>::try_from(*b).expect("4 bytes"))),
                16 => ips.push(IpAddr::from(<[u8; 16]>::try_from(*b).expect("16 bytes"))),
                _ => {}
            },
            _ => {}
        }
    }
    names.dns.iter().all(|d| dns.contains(d)) && names.ips.iter().all(|i| ips.contains(i))
}

fn load_or_issue(
    dir: &Path,
    name: &str,
    ca: &Authority,
    user: &str,
    groups: &[&str],
    server: Option<&Names>,
) -> Result<Issued, String> {
    let (crt, key) = (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    );
    if let (Some(cert_pem), Some(key_pem)) = (read(&crt)?, read(&key)?)
        && still_good(&cert_pem, server)
    {
        return Ok(Issued { cert_pem, key_pem });
    }
    let issued = ca.issue(user, groups, server)?;
    write_secret(&key, &issued.key_pem)?;
    write_secret(&crt, &issued.cert_pem)?;
    tracing::info!("issued {} for {user}", crt.display());
    Ok(issued)
}

/// Makes the two CAs of `<data_dir>/tls` when they are missing.
pub fn ensure_cas(data_dir: &Path) -> Result<(), String> {
    let dir = tls_dir(data_dir)?;
    Authority::load_or_create(&dir, "server-ca")?;
    Authority::load_or_create(&dir, "client-ca")?;
    crate::serviceaccount::ensure_key(&dir)?;
    crate::encryption::ensure_file(&dir)?;
    Ok(())
}

/// `<data_dir>/tls`, made (0700) when missing.
pub(crate) fn tls_dir(data_dir: &Path) -> Result<PathBuf, String> {
    let dir = data_dir.join("tls");
    std::fs::create_dir_all(&dir).map_err(|e| err(&format!("create {}", dir.display()), e))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
        .map_err(|e| err(&format!("chmod {}", dir.display()), e))?;
    Ok(dir)
}

/// The leaves a CA signed, to issue again when the CAs change.
pub const LEAVES: [&str; 3] = ["serving", "admin", "kubelet-client"];

impl Pki {
    /// Loads `<data_dir>/tls`, making what is missing.
    pub fn load_or_create(data_dir: &Path, names: &Names) -> Result<Pki, String> {
        let dir = tls_dir(data_dir)?;
        let server_ca = Authority::load_or_create(&dir, "server-ca")?;
        let client_ca = Authority::load_or_create(&dir, "client-ca")?;
        let serving = load_or_issue(
            &dir,
            "serving",
            &server_ca,
            "kube-apiserver",
            &[],
            Some(names),
        )?;
        let admin = load_or_issue(
            &dir,
            "admin",
            &client_ca,
            ADMIN_USER,
            &[MASTERS_GROUP],
            None,
        )?;
        let kubelet_client = load_or_issue(
            &dir,
            "kubelet-client",
            &client_ca,
            KUBELET_CLIENT_USER,
            &[MASTERS_GROUP],
            None,
        )?;
        Ok(Pki {
            dir,
            server_ca,
            client_ca,
            serving,
            admin,
            kubelet_client,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn certificates_are_made_once_and_reissued_when_names_change() {
        let dir = tempfile::tempdir().unwrap();
        let names = Names::for_server(
            "127.0.0.1".parse().unwrap(),
            Some("10.96.0.1".parse().unwrap()),
        );
        let a = Pki::load_or_create(dir.path(), &names).unwrap();
        let b = Pki::load_or_create(dir.path(), &names).unwrap();
        assert_eq!(a.server_ca.cert_pem, b.server_ca.cert_pem);
        assert_eq!(a.serving.cert_pem, b.serving.cert_pem);
        assert_eq!(a.admin.cert_pem, b.admin.cert_pem);
        assert!(still_good(&a.serving.cert_pem, Some(&names)));
        let mut more = names.clone();
        more.ips.push("192.0.2.7".parse().unwrap());
        assert!(!still_good(&a.serving.cert_pem, Some(&more)));
        let c = Pki::load_or_create(dir.path(), &more).unwrap();
        assert_ne!(c.serving.cert_pem, a.serving.cert_pem);
        assert_eq!(c.server_ca.cert_pem, a.server_ca.cert_pem, "the CA stays");
        use std::os::unix::fs::PermissionsExt;
        for key in ["server-ca.key", "client-ca.key", "serving.key", "admin.key"] {
            let mode = std::fs::metadata(dir.path().join("tls").join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }
}
