//! API errors: one type that renders as a Kubernetes `Status` object over
//! REST and as a gRPC status with the matching code.

use serde_json::{Value, json};
use skiff_api::Kind;
use skiff_api::validation::FieldError;
use skiff_store::StoreError;

#[derive(Debug, Clone)]
pub struct ApiError {
    /// HTTP status code.
    pub code: u16,
    /// Kubernetes `reason` (NotFound, AlreadyExists, Conflict, Invalid, ...).
    pub reason: &'static str,
    pub message: String,
    pub kind: Option<Kind>,
    pub name: String,
    pub causes: Vec<FieldError>,
    /// Causes that are not field validation errors (server-side apply's
    /// `FieldManagerConflict`s), as Status causes.
    pub other_causes: Vec<Value>,
}

pub type ApiResult<T> = Result<T, ApiError>;

impl ApiError {
    fn new(code: u16, reason: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            reason,
            message: message.into(),
            kind: None,
            name: String::new(),
            causes: Vec::new(),
            other_causes: Vec::new(),
        }
    }

    fn about(mut self, kind: Kind, name: &str) -> ApiError {
        self.kind = Some(kind);
        self.name = name.to_string();
        self
    }

    pub fn not_found(kind: Kind, name: &str) -> ApiError {
        Self::new(
            404,
            "NotFound",
            format!("{} {name:?} not found", kind.plural()),
        )
        .about(kind, name)
    }

    pub fn namespace_not_found(ns: &str) -> ApiError {
        Self::new(404, "NotFound", format!("namespaces {ns:?} not found"))
            .about(Kind::Namespace, ns)
    }

    pub fn already_exists(kind: Kind, name: &str) -> ApiError {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} {name:?} already exists", kind.plural()),
        )
        .about(kind, name)
    }

    pub fn conflict(kind: Kind, name: &str) -> ApiError {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} {name:?}: the object has been modified; please apply your changes to the latest version and try again",
                kind.plural()
            ),
        )
        .about(kind, name)
    }

    pub fn invalid(kind: Kind, name: &str, causes: Vec<FieldError>) -> ApiError {
        let list: Vec<String> = causes.iter().map(ToString::to_string).collect();
        let message = if list.len() == 1 {
            format!("{kind} {name:?} is invalid: {}", list[0])
        } else {
            format!("{kind} {name:?} is invalid: [{}]", list.join(", "))
        };
        let mut e = Self::new(422, "Invalid", message).about(kind, name);
        e.causes = causes;
        e
    }

    /// A server-side apply that would change fields other managers own.
    pub fn apply_conflicts(
        kind: Kind,
        name: &str,
        conflicts: &skiff_api::patch::fields::Conflicts,
    ) -> ApiError {
        let mut e = Self::new(409, "Conflict", conflicts.to_string()).about(kind, name);
        e.other_causes = conflicts
            .0
            .iter()
            .map(|c| {
                json!({
                    "reason": "FieldManagerConflict",
                    "message": format!("conflict with {}", c.label),
                    "field": skiff_api::patch::fields::render(&c.path),
                })
            })
            .collect();
        e
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(400, "BadRequest", message)
    }

    /// A well-formed request that cannot be carried out (a JSON patch
    /// `test` that fails, a parameter this server does not implement).
    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        Self::new(422, "Invalid", message)
    }

    pub fn forbidden(kind: Kind, name: &str, message: impl Into<String>) -> ApiError {
        let message = format!(
            "{} {name:?} is forbidden: {}",
            kind.plural(),
            message.into()
        );
        Self::new(403, "Forbidden", message).about(kind, name)
    }

    /// 403 for a request as a whole (no object named).
    pub fn forbidden_request(message: impl Into<String>) -> ApiError {
        Self::new(403, "Forbidden", message)
    }

    pub fn too_large(message: impl Into<String>) -> ApiError {
        Self::new(413, "RequestEntityTooLarge", message)
    }

    pub fn unsupported_media(message: impl Into<String>) -> ApiError {
        Self::new(415, "UnsupportedMediaType", message)
    }

    /// A node's (or another server's) gRPC error, as an HTTP one.
    pub fn from_grpc(s: tonic::Status) -> ApiError {
        use tonic::Code;
        let (code, reason) = match s.code() {
            Code::NotFound => (404, "NotFound"),
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                (400, "BadRequest")
            }
            Code::PermissionDenied => (403, "Forbidden"),
            Code::Unauthenticated => (401, "Unauthorized"),
            Code::Unavailable | Code::DeadlineExceeded => (503, "ServiceUnavailable"),
            _ => (500, "InternalError"),
        };
        Self::new(code, reason, s.message().to_string())
    }

    pub fn not_acceptable(message: impl Into<String>) -> ApiError {
        Self::new(406, "NotAcceptable", message)
    }

    pub fn method_not_allowed(message: impl Into<String>) -> ApiError {
        Self::new(405, "MethodNotAllowed", message)
    }

    pub fn gone(message: impl Into<String>) -> ApiError {
        Self::new(410, "Expired", message)
    }

    pub fn internal(message: impl Into<String>) -> ApiError {
        Self::new(500, "InternalError", message)
    }

    /// A resourceVersion the server has not reached (after a bounded
    /// wait), as kube-apiserver says it: client-go's reflectors recognise
    /// the cause and retry.
    pub fn too_large_resource_version(requested: i64, current: i64) -> ApiError {
        let mut e = Self::new(
            504,
            "Timeout",
            format!("Timeout: Too large resource version: {requested}, current: {current}"),
        );
        e.other_causes = vec![json!({
            "reason": "ResourceVersionTooLarge",
            "message": "Too large resource version",
        })];
        e
    }

    /// 401: no credentials where they are needed, or credentials that
    /// prove nothing (kube-apiserver says only "Unauthorized").
    pub fn unauthorized() -> ApiError {
        Self::new(401, "Unauthorized", "Unauthorized")
    }

    pub fn unavailable(message: impl Into<String>) -> ApiError {
        Self::new(503, "ServiceUnavailable", message)
    }

    /// The Kubernetes `Status` object.
    pub fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(kind) = self.kind {
            let mut details = json!({"name": self.name, "kind": kind.plural()});
            if !kind.group().is_empty() {
                details["group"] = json!(kind.group());
            }
            if !self.causes.is_empty() || !self.other_causes.is_empty() {
                let mut causes: Vec<Value> = self
                    .causes
                    .iter()
                    .map(|c| {
                        let mut m = c.to_string();
                        if let Some(rest) = m.strip_prefix(&format!("{}: ", c.field)) {
                            m = rest.to_string();
                        }
                        json!({"reason": c.error_type.reason(), "message": m, "field": c.field})
                    })
                    .collect();
                causes.extend(self.other_causes.iter().cloned());
                details["causes"] = Value::Array(causes);
            }
            status["details"] = details;
        } else if !self.other_causes.is_empty() {
            status["details"] = json!({"causes": self.other_causes, "retryAfterSeconds": 1});
        }
        status
    }

    pub fn to_grpc(&self) -> tonic::Status {
        use tonic::Code;
        let code = match self.code {
            400 | 422 => Code::InvalidArgument,
            401 => Code::Unauthenticated,
            403 => Code::PermissionDenied,
            404 => Code::NotFound,
            405 | 415 => Code::Unimplemented,
            409 if self.reason == "AlreadyExists" => Code::AlreadyExists,
            409 => Code::Aborted,
            410 => Code::OutOfRange,
            413 => Code::ResourceExhausted,
            503 => Code::Unavailable,
            _ => Code::Internal,
        };
        // The Status JSON travels in the details so clients can show the
        // same field-precise errors as REST does.
        tonic::Status::with_details(
            code,
            self.message.clone(),
            bytes::Bytes::from(self.to_status().to_string()),
        )
    }
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ApiError {}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Compacted { .. } => {
                ApiError::gone(format!("too old resource version: {e}"))
            }
            StoreError::FutureRevision(r) => {
                ApiError::new(504, "Timeout", format!("too large resource version: {r}"))
            }
            StoreError::Corrupt(why) => ApiError::internal(why),
            other => ApiError::unavailable(format!("store: {other}")),
        }
    }
}
