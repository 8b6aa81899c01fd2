//! authorization.k8s.io/v1 reviews, which `kubectl auth can-i` and `skiff
//! auth can-i` send: SelfSubjectAccessReview (may I do this?),
//! SelfSubjectRulesReview (what may I do in this namespace?) and, for
//! those allowed to ask about others, SubjectAccessReview.

use std::sync::Arc;

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Value, json};

use super::{Authorizer, Decision, Request, Resource};
use crate::authn::UserInfo;
use crate::error::{ApiError, ApiResult};

const API_VERSION: &str = "authorization.k8s.io/v1";

fn text(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or("").to_string()
}

/// The request a review's `spec` asks about.
pub fn asked(spec: &Value) -> ApiResult<Request> {
    if let Some(r) = spec.get("resourceAttributes").filter(|v| v.is_object()) {
        let verb = text(r, "verb");
        if verb.is_empty() {
            return Err(ApiError::bad_request(
                "spec.resourceAttributes.verb: Required value",
            ));
        }
        return Ok(Request::Resource(Resource {
            verb,
            api_group: text(r, "group"),
            resource: text(r, "resource"),
            subresource: text(r, "subresource"),
            namespace: text(r, "namespace"),
            name: text(r, "name"),
        }));
    }
    if let Some(n) = spec.get("nonResourceAttributes").filter(|v| v.is_object()) {
        return Ok(Request::NonResource {
            verb: text(n, "verb"),
            path: text(n, "path"),
        });
    }
    Err(ApiError::bad_request(
        "spec: Invalid value: exactly one of nonResourceAttributes or resourceAttributes must be specified",
    ))
}

fn parse(body: &[u8], kind: &str) -> ApiResult<Value> {
    // kubectl sends its reviews in Kubernetes' protobuf encoding.
    if body.starts_with(b"k8s\0") {
        return crate::k8s_protobuf::decode_request(API_VERSION, kind, body);
    }
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("malformed {kind}: {e}")))?;
    match (
        v.get("apiVersion").and_then(Value::as_str),
        v.get("kind").and_then(Value::as_str),
    ) {
        (Some(API_VERSION) | None, Some(k)) if k == kind => Ok(v),
        (Some(API_VERSION) | None, None) => Ok(v),
        (a, k) => Err(ApiError::bad_request(format!(
            "the body is a {} {}, but the path is for {API_VERSION} {kind}",
            a.unwrap_or(""),
            k.unwrap_or("")
        ))),
    }
}

fn answer(kind: &str, spec: Value, status: Value) -> Value {
    json!({
        "kind": kind,
        "apiVersion": API_VERSION,
        "metadata": {"creationTimestamp": null},
        "spec": spec,
        "status": status,
    })
}

fn verdict(authz: Option<&Authorizer>, user: &UserInfo, req: &Request) -> Value {
    let Some(authz) = authz else {
        return json!({"allowed": true, "reason": "authorization is off (the server runs with --tls off)"});
    };
    match authz.decide(user, req) {
        Decision::Allow(why) => json!({"allowed": true, "reason": why}),
        Decision::NoOpinion(Some(why)) => json!({"allowed": false, "reason": why}),
        Decision::NoOpinion(None) => json!({"allowed": false}),
    }
}

/// `POST .../selfsubjectaccessreviews`.
pub fn self_access(
    authz: Option<&Authorizer>,
    user: Option<&UserInfo>,
    body: &[u8],
) -> ApiResult<Value> {
    let v = parse(body, "SelfSubjectAccessReview")?;
    let spec = v.get("spec").cloned().unwrap_or(Value::Null);
    let req = asked(&spec)?;
    let anyone = UserInfo::anonymous();
    let status = verdict(authz, user.unwrap_or(&anyone), &req);
    Ok(answer("SelfSubjectAccessReview", spec, status))
}

/// `POST .../subjectaccessreviews`: about the user the spec names.
pub fn access(authz: Option<&Authorizer>, body: &[u8]) -> ApiResult<Value> {
    let v = parse(body, "SubjectAccessReview")?;
    let spec = v.get("spec").cloned().unwrap_or(Value::Null);
    let req = asked(&spec)?;
    let name = text(&spec, "user");
    let groups: Vec<String> = spec
        .get("groups")
        .and_then(Value::as_array)
        .map(|l| {
            l.iter()
                .filter_map(Value::as_str)
                .map(String::from)
                .collect()
        })
        .unwrap_or_default();
    if name.is_empty() && groups.is_empty() {
        return Err(ApiError::bad_request(
            "spec.user: Invalid value: at least one of user or group must be specified",
        ));
    }
    let user = UserInfo { name, groups };
    Ok(answer(
        "SubjectAccessReview",
        spec,
        verdict(authz, &user, &req),
    ))
}

/// `POST .../selfsubjectrulesreviews`: the caller's rules in a namespace.
pub fn self_rules(
    authz: Option<&Authorizer>,
    user: Option<&UserInfo>,
    body: &[u8],
) -> ApiResult<Value> {
    let v = parse(body, "SelfSubjectRulesReview")?;
    let spec = v.get("spec").cloned().unwrap_or(Value::Null);
    let namespace = text(&spec, "namespace");
    let (Some(authz), Some(user)) = (authz, user) else {
        return Ok(answer(
            "SelfSubjectRulesReview",
            spec,
            json!({
                "resourceRules": [{"verbs": ["*"], "apiGroups": ["*"], "resources": ["*"]}],
                "nonResourceRules": [{"verbs": ["*"], "nonResourceURLs": ["*"]}],
                "incomplete": false,
            }),
        ));
    };
    let mut resource = Vec::new();
    let mut non_resource = Vec::new();
    for r in authz.rules_for(user, &namespace) {
        if r.non_resource_urls.is_empty() {
            let mut rule =
                json!({"verbs": r.verbs, "apiGroups": r.api_groups, "resources": r.resources});
            if !r.resource_names.is_empty() {
                rule["resourceNames"] = json!(r.resource_names);
            }
            resource.push(rule);
        } else {
            non_resource.push(json!({"verbs": r.verbs, "nonResourceURLs": r.non_resource_urls}));
        }
    }
    // A node's reads of what its pods use depend on the object; say so.
    let incomplete = super::node::node_name(user).is_some();
    Ok(answer(
        "SelfSubjectRulesReview",
        spec,
        json!({"resourceRules": resource, "nonResourceRules": non_resource, "incomplete": incomplete}),
    ))
}

/// Answers one review (named by its REST resource).
pub fn review(
    review: &str,
    authz: Option<&Authorizer>,
    user: Option<&UserInfo>,
    body: &[u8],
) -> ApiResult<Value> {
    match review {
        "selfsubjectaccessreviews" => self_access(authz, user, body),
        "selfsubjectrulesreviews" => self_rules(authz, user, body),
        "subjectaccessreviews" => access(authz, body),
        "selfsubjectreviews" => user.map(crate::authn::who).ok_or_else(|| {
            ApiError::bad_request("authentication is off (the server runs with --tls off)")
        }),
        other => Err(ApiError::bad_request(format!(
            "no review {other:?} (selfsubjectaccessreviews, selfsubjectrulesreviews, subjectaccessreviews, selfsubjectreviews)"
        ))),
    }
}

/// The route's handler: which review, by the last path segment.
pub(crate) async fn handle(
    axum::extract::State(state): axum::extract::State<Arc<crate::AppState>>,
    user: Option<axum::Extension<Arc<UserInfo>>>,
    axum::extract::Path(which): axum::extract::Path<String>,
    body: axum::body::Bytes,
) -> Response {
    let user = user.map(|axum::Extension(u)| u);
    let authz = state.authorizing.then(|| state.registry.authz.as_ref());
    if which == "selfsubjectreviews" {
        return crate::rest::error_response(&ApiError::bad_request(
            "SelfSubjectReview is authentication.k8s.io's",
        ));
    }
    match review(&which, authz, user.as_deref(), &body) {
        Ok(v) => crate::rest::json_response(StatusCode::CREATED, &v, &[]),
        Err(e) => crate::rest::error_response(&e),
    }
}

/// The gRPC front end of the reviews (`skiff auth ...`).
pub struct Service {
    pub authz: Option<Arc<Authorizer>>,
    pub registry: Arc<crate::registry::Registry>,
    pub signer: Option<Arc<crate::serviceaccount::Signer>>,
}

#[tonic::async_trait]
impl skiff_api::v1::auth_server::Auth for Service {
    async fn review(
        &self,
        req: tonic::Request<skiff_api::v1::ReviewRequest>,
    ) -> Result<tonic::Response<skiff_api::v1::ReviewResponse>, tonic::Status> {
        let user = req.extensions().get::<Arc<UserInfo>>().cloned();
        let r = req.into_inner();
        let group = if r.review == "selfsubjectreviews" {
            "authentication.k8s.io"
        } else {
            "authorization.k8s.io"
        };
        let ask = Request::Resource(Resource {
            verb: "create".into(),
            api_group: group.into(),
            resource: r.review.clone(),
            ..Default::default()
        });
        super::check_grpc(self.authz.as_deref(), user.as_deref(), ask)?;
        let v = review(&r.review, self.authz.as_deref(), user.as_deref(), &r.body)
            .map_err(|e| e.to_grpc())?;
        Ok(tonic::Response::new(skiff_api::v1::ReviewResponse {
            body: v.to_string().into_bytes(),
        }))
    }

    async fn token(
        &self,
        req: tonic::Request<skiff_api::v1::TokenCall>,
    ) -> Result<tonic::Response<skiff_api::v1::ReviewResponse>, tonic::Status> {
        let user = req.extensions().get::<Arc<UserInfo>>().cloned();
        let r = req.into_inner();
        let ask = super::on(
            skiff_api::Kind::ServiceAccount,
            "create",
            "token",
            &r.namespace,
            &r.name,
        );
        super::check_grpc(self.authz.as_deref(), user.as_deref(), ask)?;
        let Some(signer) = &self.signer else {
            return Err(ApiError::bad_request(
                "ServiceAccount tokens need TLS (the server runs with --tls off)",
            )
            .to_grpc());
        };
        let v = crate::serviceaccount::token_request(
            &self.registry,
            signer,
            user.as_deref(),
            &r.namespace,
            &r.name,
            &r.body,
        )
        .await
        .map_err(|e| e.to_grpc())?;
        Ok(tonic::Response::new(skiff_api::v1::ReviewResponse {
            body: v.to_string().into_bytes(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        let r = asked(
            &json!({"resourceAttributes": {"verb": "get", "resource": "pods", "namespace": "a"}}),
        )
        .unwrap();
        assert_eq!(
            r,
            super::super::on(skiff_api::Kind::Pod, "get", "", "a", "")
        );
        let n =
            asked(&json!({"nonResourceAttributes": {"verb": "get", "path": "/metrics"}})).unwrap();
        assert_eq!(
            n,
            Request::NonResource {
                verb: "get".into(),
                path: "/metrics".into()
            }
        );
        assert_eq!(asked(&json!({})).unwrap_err().code, 400);
        assert_eq!(
            asked(&json!({"resourceAttributes": {"resource": "pods"}}))
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            parse(
                br#"{"kind":"Pod","apiVersion":"v1"}"#,
                "SelfSubjectAccessReview"
            )
            .unwrap_err()
            .code,
            400
        );
    }
}
