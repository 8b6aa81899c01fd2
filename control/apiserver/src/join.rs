//! Nodes joining the cluster, as k3s does it: join tokens
//! (`K10<sha256 of the CA bundle>::<id>:<secret>`), the CA bundle at
//! `/cacerts` for a joining node to check against its token, and the
//! `Bootstrap` service that signs a node's keys: a client certificate
//! `system:node:<name>` (group `system:nodes`) and a serving certificate
//! for its endpoint.
//!
//! Tokens live in the store (`registry/skiff/jointokens/<id>`) as a hash of
//! their secret, so every server on one store accepts them; the secret is
//! shown once, when made. A token authenticates as
//! `system:bootstrap:<id>` in `system:bootstrappers`, which may call Join
//! and nothing else.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use skiff_api::join::{JoinToken, hex, valid_id};
use skiff_api::v1::bootstrap_server::Bootstrap;
use skiff_api::v1::{
    CreateTokenRequest, DeleteTokenRequest, JoinRequest, JoinResponse, JoinToken as WireToken,
    JoinTokens, ListTokensRequest,
};
use skiff_store::{Compare, Op, Store, Txn};
use tonic::{Request, Response, Status};

use crate::authn::UserInfo;
use crate::error::ApiError;
use crate::pki::{MASTERS_GROUP, Names, Pki};

const PREFIX: &str = "registry/skiff/jointokens/";
pub const BOOTSTRAPPERS: &str = "system:bootstrappers";
pub const NODES: &str = "system:nodes";
pub const NODE_USER_PREFIX: &str = "system:node:";
/// The id of the token each server makes for itself (`<data-dir>/token`).
pub const SERVER_TOKEN_ID: &str = "server";

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
struct Record {
    id: String,
    secret_sha256: String,
    #[serde(default)]
    description: String,
    created: i64,
    /// Unix seconds; 0: never.
    #[serde(default)]
    expires: i64,
}

impl Record {
    fn wire(&self) -> WireToken {
        WireToken {
            id: self.id.clone(),
            token: String::new(),
            description: self.description.clone(),
            expires: self.expires,
            created: self.created,
        }
    }
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

fn digest(secret: &str) -> String {
    hex(&Sha256::digest(secret.as_bytes()))
}

/// Random lowercase letters and digits.
fn random_text(n: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::rng();
    (0..n)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The join tokens in the store.
pub struct Tokens {
    store: Arc<dyn Store>,
}

impl Tokens {
    pub fn new(store: Arc<dyn Store>) -> Tokens {
        Tokens { store }
    }

    async fn read(&self, id: &str) -> Result<Option<Record>, ApiError> {
        let Some(kv) = self.store.get(&format!("{PREFIX}{id}")).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&kv.value)
            .map(Some)
            .map_err(|e| ApiError::internal(format!("join token {id}: {e}")))
    }

    /// Makes a token; `Err` when the id is taken.
    async fn create(
        &self,
        id: &str,
        secret: &str,
        ttl_seconds: i64,
        description: &str,
    ) -> Result<Record, ApiError> {
        let created = now();
        let record = Record {
            id: id.to_string(),
            secret_sha256: digest(secret),
            description: description.to_string(),
            created,
            expires: if ttl_seconds > 0 {
                created + ttl_seconds
            } else {
                0
            },
        };
        let key = format!("{PREFIX}{id}");
        let value = serde_json::to_vec(&record).map_err(|e| ApiError::internal(e.to_string()))?;
        let done = self
            .store
            .txn(
                Txn::default()
                    .when(Compare::Absent(key.clone()))
                    .then(Op::Put {
                        key,
                        value,
                        lease: 0,
                    }),
            )
            .await?;
        if !done.succeeded {
            return Err(ApiError::bad_request(format!(
                "a join token with id {id} exists"
            )));
        }
        Ok(record)
    }

    /// The server's own token: stored unless it already is.
    pub async fn ensure(&self, token: &JoinToken, description: &str) -> Result<(), ApiError> {
        if let Some(r) = self.read(&token.id).await?
            && r.secret_sha256 == digest(&token.secret)
        {
            return Ok(());
        }
        self.remove(&token.id).await?;
        self.create(&token.id, &token.secret, 0, description)
            .await
            .map(|_| ())
    }

    async fn list(&self) -> Result<Vec<Record>, ApiError> {
        let all = self.store.list(PREFIX).await?;
        Ok(all
            .kvs
            .iter()
            .filter_map(|kv| serde_json::from_slice(&kv.value).ok())
            .collect())
    }

    async fn remove(&self, id: &str) -> Result<Option<Record>, ApiError> {
        let Some(r) = self.read(id).await? else {
            return Ok(None);
        };
        self.store
            .txn(Txn::default().then(Op::Delete {
                key: format!("{PREFIX}{id}"),
            }))
            .await?;
        Ok(Some(r))
    }

    /// The user of a bearer token of the form `<id>:<secret>`: `None` when
    /// it is not one (or names no live token).
    pub async fn authenticate(&self, bearer: &str) -> Result<Option<UserInfo>, ApiError> {
        let Some((id, secret)) = bearer.split_once(':') else {
            return Ok(None);
        };
        if !valid_id(id) {
            return Ok(None);
        }
        let Some(r) = self.read(id).await? else {
            return Ok(None);
        };
        let good = constant_time_eq(r.secret_sha256.as_bytes(), digest(secret).as_bytes());
        if !good || (r.expires != 0 && r.expires <= now()) {
            return Ok(None);
        }
        Ok(Some(UserInfo::authenticated(
            format!("system:bootstrap:{id}"),
            vec![BOOTSTRAPPERS.to_string()],
        )))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The server's token as `path` holds it (the secret kept across starts;
/// a server joining others is given theirs), or a new one.
pub fn server_secret(path: &std::path::Path) -> Result<JoinToken, String> {
    let existing = match std::fs::read_to_string(path) {
        Ok(t) => JoinToken::parse(&t).ok(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    Ok(match existing {
        Some(t) if t.id == SERVER_TOKEN_ID => t,
        _ => JoinToken {
            ca_hash: None,
            id: SERVER_TOKEN_ID.into(),
            secret: random_text(32),
        },
    })
}

/// The server's token in `path`: its secret, the CA hash that of the
/// current bundle; written (0600) when new or changed.
pub fn server_token(path: &std::path::Path, ca_pem: &str) -> Result<(JoinToken, String), String> {
    let token = server_secret(path)?;
    write_server_token(path, token, ca_pem)
}

pub fn write_server_token(
    path: &std::path::Path,
    token: JoinToken,
    ca_pem: &str,
) -> Result<(JoinToken, String), String> {
    let full = token.format(ca_pem);
    if std::fs::read_to_string(path).ok().as_deref().map(str::trim) != Some(full.as_str()) {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        crate::pki::write_secret(path, &full)?;
    }
    Ok((token, full))
}

pub struct Service {
    pub tokens: Arc<Tokens>,
    pub pki: Arc<Pki>,
}

fn caller<T>(req: &Request<T>) -> Result<Arc<UserInfo>, Status> {
    req.extensions()
        .get::<Arc<UserInfo>>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("Unauthorized"))
}

/// The caller, when it may `what` (admins only).
fn master<T>(req: &Request<T>, what: &str) -> Result<Arc<UserInfo>, Status> {
    let user = caller(req)?;
    if is_master(&user) {
        Ok(user)
    } else {
        Err(forbidden(&user, what))
    }
}

fn is_master(user: &UserInfo) -> bool {
    user.groups.iter().any(|g| g == MASTERS_GROUP)
}

fn forbidden(user: &UserInfo, what: &str) -> Status {
    Status::permission_denied(format!("User \"{}\" cannot {what}", user.name))
}

/// Whether `name` is a DNS subdomain (a Node's name).
fn valid_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        })
}

#[tonic::async_trait]
impl Bootstrap for Service {
    async fn join(&self, req: Request<JoinRequest>) -> Result<Response<JoinResponse>, Status> {
        let user = caller(&req)?;
        let r = req.into_inner();
        if !valid_node_name(&r.node_name) {
            return Err(Status::invalid_argument(format!(
                "node name {:?}: must be a lowercase DNS subdomain",
                r.node_name
            )));
        }
        let node_user = format!("{NODE_USER_PREFIX}{}", r.node_name);
        // A bootstrap token joins any node; a node renews only its own
        // certificates.
        let allowed = user.groups.iter().any(|g| g == BOOTSTRAPPERS)
            || user.name == node_user
            || is_master(&user);
        if !allowed {
            return Err(forbidden(
                &user,
                &format!("obtain certificates for node {}", r.node_name),
            ));
        }
        let mut names = Names {
            dns: vec![r.node_name.clone()],
            ips: Vec::new(),
        };
        for a in &r.addresses {
            match a.parse() {
                Ok(ip) => names.ips.push(ip),
                Err(_) if valid_node_name(a) => names.dns.push(a.clone()),
                Err(_) => {
                    return Err(Status::invalid_argument(format!(
                        "address {a:?}: neither an IP address nor a DNS name"
                    )));
                }
            }
        }
        let client = self
            .pki
            .client_ca
            .sign_request(&r.client_csr, &node_user, &[NODES], None)
            .map_err(Status::invalid_argument)?;
        let serving = self
            .pki
            .server_ca
            .sign_request(&r.serving_csr, &node_user, &[], Some(&names))
            .map_err(Status::invalid_argument)?;
        tracing::info!(node = %r.node_name, by = %user.name, "issued node certificates");
        Ok(Response::new(JoinResponse {
            client_certificate: client,
            serving_certificate: serving,
            server_ca: self.pki.server_ca.cert_pem.clone(),
            client_ca: self.pki.client_ca.cert_pem.clone(),
        }))
    }

    async fn create_token(
        &self,
        req: Request<CreateTokenRequest>,
    ) -> Result<Response<WireToken>, Status> {
        master(&req, "create join tokens")?;
        let r = req.into_inner();
        if r.ttl_seconds < 0 {
            return Err(Status::invalid_argument("ttl: must not be negative"));
        }
        let token = JoinToken {
            ca_hash: None,
            id: random_text(6),
            secret: random_text(16),
        };
        let record = self
            .tokens
            .create(&token.id, &token.secret, r.ttl_seconds, &r.description)
            .await
            .map_err(|e| e.to_grpc())?;
        let mut out = record.wire();
        out.token = token.format(&self.pki.server_ca.cert_pem);
        Ok(Response::new(out))
    }

    async fn list_tokens(
        &self,
        req: Request<ListTokensRequest>,
    ) -> Result<Response<JoinTokens>, Status> {
        master(&req, "list join tokens")?;
        let tokens = self.tokens.list().await.map_err(|e| e.to_grpc())?;
        Ok(Response::new(JoinTokens {
            tokens: tokens.iter().map(Record::wire).collect(),
        }))
    }

    async fn delete_token(
        &self,
        req: Request<DeleteTokenRequest>,
    ) -> Result<Response<WireToken>, Status> {
        master(&req, "delete join tokens")?;
        let id = req.into_inner().id;
        match self.tokens.remove(&id).await.map_err(|e| e.to_grpc())? {
            Some(r) => Ok(Response::new(r.wire())),
            None => Err(Status::not_found(format!("join token {id} not found"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn tokens_authenticate_until_they_expire_or_go() {
        let dir = tempfile::tempdir().unwrap();
        let store = skiff_store::open(None, dir.path()).await.unwrap();
        let tokens = Tokens::new(store);
        tokens
            .create("abc123", "s3cr3ts3cr3ts3cr3t", 0, "d")
            .await
            .unwrap();
        assert!(tokens.create("abc123", "other", 0, "").await.is_err());
        let user = tokens
            .authenticate("abc123:s3cr3ts3cr3ts3cr3t")
            .await
            .unwrap()
            .unwrap();
        assert_eq!(user.name, "system:bootstrap:abc123");
        assert!(user.groups.contains(&BOOTSTRAPPERS.to_string()));
        for bad in [
            "abc123:wrong",
            "nosuch:s3cr3ts3cr3ts3cr3t",
            "abc123",
            "Bad:x",
        ] {
            assert_eq!(tokens.authenticate(bad).await.unwrap(), None, "{bad}");
        }
        // An expired token proves nothing.
        tokens
            .create("old", "s3cr3ts3cr3ts3cr3t", 1, "")
            .await
            .unwrap();
        let mut r = tokens.read("old").await.unwrap().unwrap();
        r.expires = now() - 1;
        let kv = serde_json::to_vec(&r).unwrap();
        tokens
            .store
            .txn(Txn::default().then(Op::Put {
                key: format!("{PREFIX}old"),
                value: kv,
                lease: 0,
            }))
            .await
            .unwrap();
        assert_eq!(
            tokens.authenticate("old:s3cr3ts3cr3ts3cr3t").await.unwrap(),
            None
        );
        // Only the hash is stored.
        let raw = tokens.store.list(PREFIX).await.unwrap();
        assert!(
            raw.kvs
                .iter()
                .all(|kv| !String::from_utf8_lossy(&kv.value).contains("s3cr3t"))
        );
        assert_eq!(tokens.list().await.unwrap().len(), 2);
        assert!(tokens.remove("abc123").await.unwrap().is_some());
        assert_eq!(
            tokens
                .authenticate("abc123:s3cr3ts3cr3ts3cr3t")
                .await
                .unwrap(),
            None
        );
    }

    #[test]
    fn the_server_token_keeps_its_secret_and_follows_the_ca() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        let (t1, full1) = server_token(&path, "ca one").unwrap();
        let (t2, full2) = server_token(&path, "ca one").unwrap();
        assert_eq!((t1.secret.clone(), full1.clone()), (t2.secret, full2));
        let (t3, full3) = server_token(&path, "ca two").unwrap();
        assert_eq!(t3.secret, t1.secret);
        assert_ne!(full3, full1);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), full3);
        // A plain development token is replaced by a join token.
        std::fs::write(&path, "0123abcd").unwrap();
        let (t4, _) = server_token(&path, "ca two").unwrap();
        assert_eq!(t4.id, SERVER_TOKEN_ID);
        assert_ne!(t4.secret, t1.secret);
    }
}
