//! Authentication, as kube-apiserver does it: a verified client
//! certificate (CN = user, O = groups), else a bearer token from the
//! static token file (`--token-auth-file`, kube-apiserver's CSV:
//! `token,user,uid,"group1,group2"`), else anonymous. A bad token is a 401
//! whatever the path; anonymous callers reach only the health and version
//! endpoints. The user rides in the request's extensions for the
//! authorizer and the audit log.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::tls::Peer;

/// Credentials that prove nothing (an unknown bearer token): a 401.
#[derive(Debug, PartialEq, Eq)]
pub struct Unauthorized;

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UserInfo {
    pub name: String,
    pub groups: Vec<String>,
}

pub const ANONYMOUS: &str = "system:anonymous";

impl UserInfo {
    /// A proven user: Kubernetes adds `system:authenticated`.
    pub fn authenticated(name: String, mut groups: Vec<String>) -> UserInfo {
        if !groups.iter().any(|g| g == "system:authenticated") {
            groups.push("system:authenticated".into());
        }
        UserInfo { name, groups }
    }

    pub fn anonymous() -> UserInfo {
        UserInfo {
            name: ANONYMOUS.into(),
            groups: vec!["system:unauthenticated".into()],
        }
    }

    pub fn is_anonymous(&self) -> bool {
        self.name == ANONYMOUS
    }
}

/// Paths anyone may read (kube-apiserver's `system:public-info-viewer`).
pub(crate) fn public(path: &str) -> bool {
    ["/healthz", "/livez", "/readyz", "/version", "/cacerts"]
        .iter()
        .any(|p| {
            path == *p
                || path
                    .strip_prefix(p)
                    .is_some_and(|rest| rest.starts_with('/'))
        })
}

#[derive(Default)]
pub struct Authenticator {
    tokens: HashMap<String, Arc<UserInfo>>,
    /// Join tokens (`<id>:<secret>`), looked up in the store.
    join: Option<Arc<crate::join::Tokens>>,
    /// Judges impersonation (`Impersonate-User`, `kubectl --as`).
    authz: Option<Arc<crate::authz::Authorizer>>,
    /// ServiceAccount tokens (JWTs this cluster signed).
    service_accounts: Option<crate::serviceaccount::Tokens>,
}

impl Authenticator {
    /// Reads a static token file: one `token,user,uid[,"g1,g2"]` per line;
    /// blank lines and `#` comments are skipped.
    pub fn with_token_file(path: &Path) -> Result<Authenticator, String> {
        let text =
            std::fs::read_to_string(path).map_err(|e| format!("read {}: {e}", path.display()))?;
        Self::parse_tokens(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub(crate) fn parse_tokens(text: &str) -> Result<Authenticator, String> {
        let mut tokens = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let fields = split_csv(line);
            let [token, user, _uid, rest @ ..] = fields.as_slice() else {
                return Err(format!(
                    "line {}: expected token,user,uid[,\"group1,group2\"]",
                    i + 1
                ));
            };
            if token.is_empty() || user.is_empty() {
                return Err(format!("line {}: an empty token or user", i + 1));
            }
            let groups = rest
                .first()
                .map(|g| {
                    g.split(',')
                        .map(str::trim)
                        .filter(|g| !g.is_empty())
                        .map(String::from)
                        .collect()
                })
                .unwrap_or_default();
            let user = Arc::new(UserInfo::authenticated(user.clone(), groups));
            if tokens.insert(token.clone(), user).is_some() {
                return Err(format!("line {}: the token is listed twice", i + 1));
            }
        }
        Ok(Authenticator {
            tokens,
            join: None,
            authz: None,
            service_accounts: None,
        })
    }

    /// Also accepts ServiceAccount tokens.
    pub fn with_service_accounts(mut self, tokens: crate::serviceaccount::Tokens) -> Authenticator {
        self.service_accounts = Some(tokens);
        self
    }

    /// Lets users the authorizer allows act as others.
    pub fn with_impersonation(mut self, authz: Arc<crate::authz::Authorizer>) -> Authenticator {
        self.authz = Some(authz);
        self
    }

    /// Who the request acts as: `Impersonate-User` (and its
    /// `Impersonate-Group`s), when the caller may `impersonate` them, as
    /// kube-apiserver allows; the caller itself otherwise.
    pub fn impersonated(
        &self,
        user: Arc<UserInfo>,
        headers: &axum::http::HeaderMap,
    ) -> Result<Arc<UserInfo>, ApiError> {
        let values = |name: &str| -> Vec<String> {
            headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .map(|v| v.trim().to_string())
                .collect()
        };
        let names = values("impersonate-user");
        let groups = values("impersonate-group");
        if names.is_empty() {
            if !groups.is_empty() {
                return Err(ApiError::bad_request(
                    "requested impersonation of groups without impersonating a user",
                ));
            }
            return Ok(user);
        }
        let [name] = names.as_slice() else {
            return Err(ApiError::bad_request("one Impersonate-User at most"));
        };
        let Some(authz) = &self.authz else {
            return Err(ApiError::forbidden_request("impersonation is off"));
        };
        let ask = |resource: &str, namespace: &str, what: &str| {
            crate::authz::Request::Resource(crate::authz::Resource {
                verb: "impersonate".into(),
                resource: resource.into(),
                namespace: namespace.into(),
                name: what.into(),
                ..Default::default()
            })
        };
        let mut asks = vec![match crate::authz::index::service_account(name) {
            Some((ns, sa)) => ask("serviceaccounts", ns, sa),
            None => ask("users", "", name),
        }];
        asks.extend(groups.iter().map(|g| ask("groups", "", g)));
        for a in &asks {
            authz.authorize(&user, a)?;
        }
        let mut groups = groups;
        if let Some((ns, _)) = crate::authz::index::service_account(name) {
            groups.extend(crate::serviceaccount::groups(ns));
        }
        Ok(Arc::new(UserInfo::authenticated(name.clone(), groups)))
    }

    /// Also accepts the join tokens of the store.
    pub fn with_join_tokens(mut self, join: Arc<crate::join::Tokens>) -> Authenticator {
        self.join = Some(join);
        self
    }

    /// The request's user; a store that cannot answer for a join token is
    /// a 503, not a 401.
    pub async fn user(
        &self,
        peer: Option<&Peer>,
        authorization: Option<&str>,
    ) -> Result<Arc<UserInfo>, Result<Unauthorized, ApiError>> {
        if let Some(user) = peer.and_then(|p| p.certificate.clone()) {
            return Ok(user);
        }
        // A certificate that proves nothing is a 401, whatever else comes.
        if peer.is_some_and(|p| p.rejected.is_some()) {
            return Err(Ok(Unauthorized));
        }
        let Some(token) = authorization.and_then(|a| a.strip_prefix("Bearer ")) else {
            return Ok(Arc::new(UserInfo::anonymous()));
        };
        let token = token.trim();
        if let Some(user) = self.tokens.get(token) {
            return Ok(user.clone());
        }
        if let Some(sa) = &self.service_accounts
            && token.split('.').count() == 3
        {
            match sa.authenticate(token).await {
                Ok(Some(user)) => return Ok(Arc::new(user)),
                Ok(None) => {}
                Err(e) => return Err(Err(e)),
            }
        }
        if let Some(join) = &self.join {
            match join.authenticate(token).await {
                Ok(Some(user)) => return Ok(Arc::new(user)),
                Ok(None) => {}
                Err(e) => return Err(Err(e)),
            }
        }
        Err(Ok(Unauthorized))
    }
}

/// CSV fields with double quotes (a quoted field may hold commas).
fn split_csv(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => out.push(std::mem::take(&mut cur).trim().to_string()),
            c => cur.push(c),
        }
    }
    out.push(cur.trim().to_string());
    out
}

/// Whether a request is a gRPC call (by its content type).
pub(crate) fn is_grpc(req: &Request) -> bool {
    req.headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|c| c.starts_with("application/grpc"))
}

/// A refused request's body is read first when it is small: closing a
/// connection with unread bytes makes the kernel reset it, and the client
/// may lose the 401 on its way. A large body is not worth reading for
/// someone who proved nothing; its connection just closes.
const DRAINED: usize = 64 << 10;

async fn refuse(req: Request) -> Response {
    let response = refusal(&req);
    let small = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .is_some_and(|n| n <= DRAINED);
    if small && !is_grpc(&req) {
        let drain = axum::body::to_bytes(req.into_body(), DRAINED);
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), drain).await;
    }
    response
}

fn refusal(req: &Request) -> Response {
    error_for(req, &ApiError::unauthorized())
}

/// An error as the request's protocol carries it: a gRPC status, or a
/// Status object.
fn error_for(req: &Request, e: &ApiError) -> Response {
    if is_grpc(req) {
        e.to_grpc().into_http::<axum::body::Body>()
    } else {
        crate::rest::error_response(e)
    }
}

/// The middleware: authenticates every request or answers 401.
pub async fn authenticate(
    State(auth): State<Arc<Authenticator>>,
    mut req: Request,
    next: Next,
) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.clone());
    let authorization = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let user = match auth.user(peer.as_ref(), authorization).await {
        Ok(u) => u,
        Err(Ok(Unauthorized)) => return refuse(req).await,
        Err(Err(e)) => {
            return error_for(&req, &e);
        }
    };
    if user.is_anonymous() && !public(req.uri().path()) {
        return refuse(req).await;
    }
    // A join token is good for joining and nothing else.
    if user.groups.iter().any(|g| g == crate::join::BOOTSTRAPPERS)
        && req.uri().path() != JOIN_PATH
        && !public(req.uri().path())
    {
        let e = ApiError::forbidden_request(format!(
            "User {:?} may only join nodes ({JOIN_PATH})",
            user.name
        ));
        return error_for(&req, &e);
    }
    let user = match auth.impersonated(user, req.headers()) {
        Ok(u) => u,
        Err(e) => return error_for(&req, &e),
    };
    req.extensions_mut().insert(user);
    next.run(req).await
}

/// The one call a join token may make.
const JOIN_PATH: &str = "/skiff.v1.Bootstrap/Join";

/// `POST /apis/authentication.k8s.io/v1/selfsubjectreviews` (`kubectl
/// auth whoami`): who the server takes the caller for. Without
/// authentication (plain development mode) nobody is known.
pub async fn self_subject_review(
    user: Option<axum::Extension<Arc<UserInfo>>>,
    // Read whole (bounded by the body limit) though it says nothing: a
    // connection closed with unread bytes is reset, answer and all.
    _body: axum::body::Bytes,
) -> Response {
    let Some(axum::Extension(user)) = user else {
        return (
            axum::http::StatusCode::NOT_FOUND,
            axum::Json(
                ApiError::bad_request("authentication is off (the server runs with --tls off)")
                    .to_status(),
            ),
        )
            .into_response();
    };
    // A create, answered as kube-apiserver answers creates: 201.
    (axum::http::StatusCode::CREATED, axum::Json(who(&user))).into_response()
}

/// The SelfSubjectReview of a user.
pub fn who(user: &UserInfo) -> serde_json::Value {
    let now = time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or_else(|_| time::OffsetDateTime::now_utc())
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default();
    serde_json::json!({
        "kind": "SelfSubjectReview",
        "apiVersion": "authentication.k8s.io/v1",
        "metadata": {"creationTimestamp": now},
        "status": {"userInfo": {"username": user.name, "groups": user.groups}},
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn token_file_and_precedence() {
        let auth =
            Authenticator::parse_tokens("# users\nt1,alice,1\n\nt2, bob ,2,\"dev,ops\"\n").unwrap();
        let alice = auth.user(None, Some("Bearer t1")).await.unwrap();
        assert_eq!(alice.name, "alice");
        assert_eq!(alice.groups, ["system:authenticated"]);
        let bob = auth.user(None, Some("Bearer t2")).await.unwrap();
        assert_eq!((bob.name.as_str(), bob.groups.len()), ("bob", 3));
        assert!(auth.user(None, Some("Bearer nope")).await.is_err());
        assert!(auth.user(None, None).await.unwrap().is_anonymous());
        assert!(
            auth.user(None, Some("Basic abc"))
                .await
                .unwrap()
                .is_anonymous()
        );
        // A certificate wins over a token.
        let peer = Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            certificate: Some(Arc::new(UserInfo::authenticated("carol".into(), vec![]))),
            rejected: None,
        };
        assert_eq!(
            auth.user(Some(&peer), Some("Bearer nope"))
                .await
                .unwrap()
                .name,
            "carol"
        );
        // A certificate that proved nothing is a 401, even with a good token.
        let refused = Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            certificate: None,
            rejected: Some("expired".into()),
        };
        assert!(matches!(
            auth.user(Some(&refused), Some("Bearer t1")).await,
            Err(Ok(Unauthorized))
        ));
        for bad in ["t1,alice", ",alice,1", "t1,a,1\nt1,b,2"] {
            assert!(Authenticator::parse_tokens(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn only_health_and_version_are_public() {
        for p in ["/healthz", "/livez", "/readyz", "/version", "/readyz/ping"] {
            assert!(public(p), "{p}");
        }
        for p in [
            "/api/v1/pods",
            "/metrics",
            "/healthzz",
            "/",
            "/openapi/v3",
            "/apis",
        ] {
            assert!(!public(p), "{p}");
        }
    }
}
