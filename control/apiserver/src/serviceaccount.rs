//! ServiceAccount tokens, as kube-apiserver's bound tokens: ES256 JWTs
//! signed by `<data-dir>/tls/service-account.key` (shared by the servers of
//! one etcd with the CAs), naming the account (and the pod they are bound
//! to), with an audience and an expiry. A token authenticates only while
//! its account — and its pod, when bound to one — still exists with the
//! uid it names. TokenRequest (`POST .../serviceaccounts/NAME/token`,
//! `kubectl create token`) makes them; nodes ask for their pods' tokens.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use skiff_api::Resource;
use skiff_api::v1::{Pod, ServiceAccount};

use crate::authn::UserInfo;
use crate::error::{ApiError, ApiResult};
use crate::registry::Registry;

/// The issuer and default audience (kube-apiserver's default
/// `--service-account-issuer` on kubeadm clusters).
pub const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
pub const KEY_FILE: &str = "service-account.key";
/// kube-apiserver's bounds on a requested expiry.
pub const MIN_SECONDS: i64 = 600;
pub const MAX_SECONDS: i64 = 48 * 3600;
pub const DEFAULT_SECONDS: i64 = 3600;

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::URL_SAFE_NO_PAD
}

/// Signs and verifies tokens.
pub struct Signer {
    key: EcdsaKeyPair,
    kid: String,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("kid", &self.kid).finish()
    }
}

/// Makes the signing key of `<data_dir>/tls` when it is missing.
pub fn ensure_key(dir: &Path) -> Result<(), String> {
    let path = dir.join(KEY_FILE);
    if path.exists() {
        return Ok(());
    }
    let key = rcgen::KeyPair::generate().map_err(|e| format!("service account key: {e}"))?;
    crate::pki::write_secret(&path, &key.serialize_pem())
}

impl Signer {
    /// Loads `<dir>/service-account.key`, making it when missing.
    pub fn load_or_create(dir: &Path) -> Result<Signer, String> {
        ensure_key(dir)?;
        let path = dir.join(KEY_FILE);
        let pem = std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let der = rcgen::KeyPair::from_pem(&pem)
            .map_err(|e| format!("{}: {e}", path.display()))?
            .serialize_der();
        Signer::from_pkcs8(&der).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn from_pkcs8(der: &[u8]) -> Result<Signer, String> {
        let key = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            der,
            &SystemRandom::new(),
        )
        .map_err(|e| format!("not a P-256 PKCS#8 key: {e}"))?;
        let digest = ring::digest::digest(&ring::digest::SHA256, key.public_key().as_ref());
        let kid = b64().encode(&digest.as_ref()[..16]);
        Ok(Signer { key, kid })
    }

    /// A signed JWT of `claims`.
    pub fn sign(&self, claims: &Value) -> ApiResult<String> {
        let header = json!({"alg": "ES256", "kid": self.kid});
        let input = format!(
            "{}.{}",
            b64().encode(header.to_string()),
            b64().encode(claims.to_string())
        );
        let sig = self
            .key
            .sign(&SystemRandom::new(), input.as_bytes())
            .map_err(|_| ApiError::internal("signing a token failed"))?;
        Ok(format!("{input}.{}", b64().encode(sig.as_ref())))
    }

    /// The claims of a token this signer made, still valid at `now`
    /// (seconds), for `audience`; `None` if it is not one.
    pub fn verify(&self, token: &str, now: i64, audience: &str) -> Option<Value> {
        let mut parts = token.split('.');
        let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
        if parts.next().is_some() {
            return None;
        }
        let header: Value = serde_json::from_slice(&b64().decode(h).ok()?).ok()?;
        if header["alg"] != "ES256" {
            return None;
        }
        let sig = b64().decode(s).ok()?;
        let public = signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        );
        public.verify(format!("{h}.{c}").as_bytes(), &sig).ok()?;
        let claims: Value = serde_json::from_slice(&b64().decode(c).ok()?).ok()?;
        let exp = claims["exp"].as_i64()?;
        let nbf = claims["nbf"].as_i64().unwrap_or(0);
        let audiences = claims["aud"].as_array()?;
        let ok = claims["iss"] == ISSUER
            && now < exp
            && now + 60 >= nbf
            && audiences.iter().any(|a| a == audience);
        ok.then_some(claims)
    }
}

/// What a token is bound to besides its account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Bound {
    pub pod: String,
    pub pod_uid: String,
}

/// The claims of a token for `sa` (in `namespace`, with its `uid`), good
/// from `now` for `seconds`.
pub fn claims(
    namespace: &str,
    sa: &str,
    uid: &str,
    bound: Option<&Bound>,
    audiences: &[String],
    now: i64,
    seconds: i64,
) -> Value {
    let mut k8s = json!({
        "namespace": namespace,
        "serviceaccount": {"name": sa, "uid": uid},
    });
    if let Some(b) = bound {
        k8s["pod"] = json!({"name": b.pod, "uid": b.pod_uid});
    }
    json!({
        "iss": ISSUER,
        "sub": format!("system:serviceaccount:{namespace}:{sa}"),
        "aud": audiences,
        "iat": now,
        "nbf": now,
        "exp": now + seconds,
        "kubernetes.io": k8s,
    })
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// The user a token's claims stand for, if its account (and pod) are
/// still the ones it names.
pub async fn user(registry: &Registry, claims: &Value) -> ApiResult<Option<UserInfo>> {
    let k = &claims["kubernetes.io"];
    let (Some(ns), Some(name), Some(uid)) = (
        k["namespace"].as_str(),
        k["serviceaccount"]["name"].as_str(),
        k["serviceaccount"]["uid"].as_str(),
    ) else {
        return Ok(None);
    };
    match registry.get::<ServiceAccount>(ns, name).await {
        Ok(sa) if sa.meta().uid == uid && sa.meta().deletion_timestamp.is_none() => {}
        Ok(_) => return Ok(None),
        Err(e) if e.code == 404 => return Ok(None),
        Err(e) => return Err(e),
    }
    if let (Some(pod), Some(pod_uid)) = (k["pod"]["name"].as_str(), k["pod"]["uid"].as_str()) {
        match registry.get::<Pod>(ns, pod).await {
            Ok(p) if p.meta().uid == pod_uid && p.meta().deletion_timestamp.is_none() => {}
            Ok(_) => return Ok(None),
            Err(e) if e.code == 404 => return Ok(None),
            Err(e) => return Err(e),
        }
    }
    Ok(Some(UserInfo::authenticated(
        format!("system:serviceaccount:{ns}:{name}"),
        groups(ns),
    )))
}

/// The groups every ServiceAccount of `namespace` is in.
pub fn groups(namespace: &str) -> Vec<String> {
    vec![
        "system:serviceaccounts".into(),
        format!("system:serviceaccounts:{namespace}"),
    ]
}

/// Verifies tokens for the authenticator.
pub struct Tokens {
    pub signer: Arc<Signer>,
    pub registry: Arc<Registry>,
}

impl Tokens {
    /// `Ok(None)`: not a service account token of this cluster (or no
    /// longer good).
    pub async fn authenticate(&self, token: &str) -> ApiResult<Option<UserInfo>> {
        let Some(claims) = self.signer.verify(token, now(), ISSUER) else {
            return Ok(None);
        };
        user(&self.registry, &claims).await
    }
}

/// `POST /api/v1/namespaces/NS/serviceaccounts/NAME/token`: a TokenRequest
/// (authentication.k8s.io/v1) in, the same with its token out.
pub async fn token_request(
    registry: &Registry,
    signer: &Signer,
    user: Option<&UserInfo>,
    namespace: &str,
    name: &str,
    body: &[u8],
) -> ApiResult<Value> {
    let req: Value = if body.is_empty() {
        json!({})
    } else if body.starts_with(b"k8s\0") {
        crate::k8s_protobuf::decode_request("authentication.k8s.io/v1", "TokenRequest", body)?
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("malformed TokenRequest: {e}")))?
    };
    let spec = &req["spec"];
    let seconds = match spec["expirationSeconds"].as_i64() {
        None => DEFAULT_SECONDS,
        Some(s) if s < MIN_SECONDS => {
            return Err(ApiError::bad_request(format!(
                "spec.expirationSeconds: Invalid value: {s}: may not specify a duration less than {MIN_SECONDS} seconds"
            )));
        }
        Some(s) => s.min(MAX_SECONDS),
    };
    let audiences: Vec<String> = match spec["audiences"].as_array() {
        Some(a) if !a.is_empty() => a
            .iter()
            .filter_map(Value::as_str)
            .map(String::from)
            .collect(),
        _ => vec![ISSUER.to_string()],
    };
    let sa = registry.get::<ServiceAccount>(namespace, name).await?;
    let node = user.and_then(crate::authz::node::node_name);
    let bound = match spec.get("boundObjectRef").filter(|b| b.is_object()) {
        // NodeRestriction: a node's tokens are for its pods only.
        None if node.is_some() => {
            return Err(ApiError::forbidden(
                skiff_api::Kind::ServiceAccount,
                name,
                "a node may only request tokens bound to its pods",
            ));
        }
        None => None,
        Some(b) => {
            if b["kind"] != "Pod" {
                return Err(ApiError::bad_request(format!(
                    "spec.boundObjectRef.kind: Unsupported value: {}: supported values: \"Pod\"",
                    b["kind"]
                )));
            }
            let pod_name = b["name"].as_str().unwrap_or("");
            let pod = registry.get::<Pod>(namespace, pod_name).await?;
            if let Some(uid) = b["uid"].as_str().filter(|u| !u.is_empty())
                && uid != pod.meta().uid
            {
                return Err(ApiError::conflict(skiff_api::Kind::Pod, pod_name));
            }
            let account = pod
                .spec
                .as_ref()
                .map(|s| s.service_account_name.as_str())
                .unwrap_or("");
            let on = pod
                .spec
                .as_ref()
                .map(|s| s.node_name.as_str())
                .unwrap_or("");
            if let Some(me) = node
                && on != me
            {
                return Err(ApiError::forbidden(
                    skiff_api::Kind::ServiceAccount,
                    name,
                    format!("node {me:?} may only request tokens for pods bound to it"),
                ));
            }
            if account != name {
                return Err(ApiError::bad_request(format!(
                    "pod {pod_name:?} runs as service account {account:?}, not {name:?}"
                )));
            }
            Some(Bound {
                pod: pod_name.to_string(),
                pod_uid: pod.meta().uid.clone(),
            })
        }
    };
    let issued = now();
    let token = signer.sign(&claims(
        namespace,
        name,
        &sa.meta().uid,
        bound.as_ref(),
        &audiences,
        issued,
        seconds,
    ))?;
    let expires = skiff_api::v1::Time {
        seconds: issued + seconds,
        nanos: 0,
    }
    .to_rfc3339();
    let mut spec = spec.clone();
    if !spec.is_object() {
        spec = json!({});
    }
    spec["audiences"] = json!(audiences);
    spec["expirationSeconds"] = json!(seconds);
    Ok(json!({
        "kind": "TokenRequest",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": null},
        "spec": spec,
        "status": {"token": token, "expirationTimestamp": expires},
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        let key = rcgen::KeyPair::generate().unwrap();
        Signer::from_pkcs8(&key.serialize_der()).unwrap()
    }

    #[test]
    fn tokens_verify_only_when_whole_current_and_meant_for_us() {
        let s = signer();
        let c = claims("a", "bot", "u1", None, &[ISSUER.to_string()], 1000, 600);
        let t = s.sign(&c).unwrap();
        assert_eq!(
            s.verify(&t, 1001, ISSUER).unwrap()["sub"],
            "system:serviceaccount:a:bot"
        );
        assert!(s.verify(&t, 1600, ISSUER).is_none(), "expired");
        assert!(
            s.verify(&t, 1001, "https://elsewhere").is_none(),
            "another audience"
        );
        // Any change to the claims breaks the signature.
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        let mut forged = c.clone();
        forged["sub"] = json!("system:serviceaccount:kube-system:admin");
        parts[1] = b64().encode(forged.to_string());
        assert!(s.verify(&parts.join("."), 1001, ISSUER).is_none());
        // Another cluster's key.
        assert!(signer().verify(&t, 1001, ISSUER).is_none());
        for junk in ["", "a.b", "a.b.c", "a.b.c.d", "..."] {
            assert!(s.verify(junk, 1001, ISSUER).is_none(), "{junk}");
        }
        let bound = Bound {
            pod: "p".into(),
            pod_uid: "u2".into(),
        };
        let c = claims(
            "a",
            "bot",
            "u1",
            Some(&bound),
            &[ISSUER.to_string()],
            1000,
            600,
        );
        assert_eq!(c["kubernetes.io"]["pod"]["uid"], "u2");
    }
}
