//! Request bodies in Kubernetes' protobuf encoding
//! (`application/vnd.kubernetes.protobuf`, which `kubectl create` sends):
//! the `k8s\0` envelope around a `runtime.Unknown`, whose `raw` is the
//! object in the field numbers of k8s.io/api's generated.proto. Turned into
//! the object's JSON form, then handled like any JSON body.
//!
//! Only the fields in the tables below are known. Kubernetes' encoder
//! writes every non-pointer field, set or not, so an unknown field that
//! holds its zero value is skipped; an unknown field that holds anything
//! else is refused by number (never dropped in silence): the client can
//! send JSON instead.

use serde_json::{Map, Value};
use skiff_api::Kind;

use crate::error::{ApiError, ApiResult};

pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";
const MAGIC: &[u8] = b"k8s\0";

#[derive(Clone, Copy)]
enum Ty {
    Str,
    /// A scalar that is meaningful at zero (a pointer field in Go).
    Int {
        keep_zero: bool,
    },
    Bool {
        keep_zero: bool,
    },
    Msg(&'static [F]),
    /// `map<string, string>`
    StrMap,
    /// `map<string, bytes>`, as base64 in JSON.
    BytesMap,
    /// `map<string, Quantity>`
    QuantityMap,
    IntOrString,
    Time,
}

/// One field: number, JSON name, type, and whether it repeats.
#[derive(Clone, Copy)]
struct F(u32, &'static str, Ty, bool);

const fn one(n: u32, name: &'static str, ty: Ty) -> F {
    F(n, name, ty, false)
}
const fn many(n: u32, name: &'static str, ty: Ty) -> F {
    F(n, name, ty, true)
}
const STR: Ty = Ty::Str;
const INT: Ty = Ty::Int { keep_zero: false };
const PTR_INT: Ty = Ty::Int { keep_zero: true };
const BOOL: Ty = Ty::Bool { keep_zero: false };
const PTR_BOOL: Ty = Ty::Bool { keep_zero: true };

const META: &[F] = &[
    one(1, "name", STR),
    one(2, "generateName", STR),
    one(3, "namespace", STR),
    one(5, "uid", STR),
    one(6, "resourceVersion", STR),
    one(7, "generation", INT),
    one(8, "creationTimestamp", Ty::Time),
    one(11, "labels", Ty::StrMap),
    one(12, "annotations", Ty::StrMap),
    many(14, "finalizers", STR),
];
const NAMESPACE: &[F] = &[
    one(1, "metadata", Ty::Msg(META)),
    one(2, "spec", Ty::Msg(&[many(1, "finalizers", STR)])),
    one(3, "status", Ty::Msg(&[one(1, "phase", STR)])),
];
const CONFIG_MAP: &[F] = &[
    one(1, "metadata", Ty::Msg(META)),
    one(2, "data", Ty::StrMap),
    one(3, "binaryData", Ty::BytesMap),
    one(4, "immutable", PTR_BOOL),
];
const SERVICE_PORT: &[F] = &[
    one(1, "name", STR),
    one(2, "protocol", STR),
    one(3, "port", INT),
    one(4, "targetPort", Ty::IntOrString),
    one(5, "nodePort", INT),
];
const SERVICE: &[F] = &[
    one(1, "metadata", Ty::Msg(META)),
    one(
        2,
        "spec",
        Ty::Msg(&[
            many(1, "ports", Ty::Msg(SERVICE_PORT)),
            one(2, "selector", Ty::StrMap),
            one(3, "clusterIP", STR),
            one(4, "type", STR),
            many(5, "externalIPs", STR),
            one(7, "sessionAffinity", STR),
            one(10, "externalName", STR),
            one(11, "externalTrafficPolicy", STR),
            one(12, "healthCheckNodePort", INT),
            one(13, "publishNotReadyAddresses", BOOL),
        ]),
    ),
    // The status is the server's; an empty one is skipped as unknown.
];
const SELECTOR: &[F] = &[
    one(1, "matchLabels", Ty::StrMap),
    many(
        2,
        "matchExpressions",
        Ty::Msg(&[
            one(1, "key", STR),
            one(2, "operator", STR),
            many(3, "values", STR),
        ]),
    ),
];
const CONTAINER: &[F] = &[
    one(1, "name", STR),
    one(2, "image", STR),
    many(3, "command", STR),
    many(4, "args", STR),
    one(5, "workingDir", STR),
    many(
        6,
        "ports",
        Ty::Msg(&[
            one(1, "name", STR),
            one(2, "hostPort", INT),
            one(3, "containerPort", INT),
            one(4, "protocol", STR),
            one(5, "hostIP", STR),
        ]),
    ),
    many(
        7,
        "env",
        Ty::Msg(&[one(1, "name", STR), one(2, "value", STR)]),
    ),
    one(
        8,
        "resources",
        Ty::Msg(&[
            one(1, "limits", Ty::QuantityMap),
            one(2, "requests", Ty::QuantityMap),
        ]),
    ),
    many(
        9,
        "volumeMounts",
        Ty::Msg(&[
            one(1, "name", STR),
            one(2, "readOnly", BOOL),
            one(3, "mountPath", STR),
            one(4, "subPath", STR),
        ]),
    ),
    one(13, "terminationMessagePath", STR),
    one(14, "imagePullPolicy", STR),
    one(16, "stdin", BOOL),
    one(17, "stdinOnce", BOOL),
    one(18, "tty", BOOL),
    one(20, "terminationMessagePolicy", STR),
];
const POD_SPEC: &[F] = &[
    many(2, "containers", Ty::Msg(CONTAINER)),
    one(3, "restartPolicy", STR),
    one(4, "terminationGracePeriodSeconds", PTR_INT),
    one(5, "activeDeadlineSeconds", PTR_INT),
    one(6, "dnsPolicy", STR),
    one(7, "nodeSelector", Ty::StrMap),
    one(8, "serviceAccountName", STR),
    one(10, "nodeName", STR),
    one(11, "hostNetwork", BOOL),
    many(15, "imagePullSecrets", Ty::Msg(&[one(1, "name", STR)])),
    one(16, "hostname", STR),
    one(17, "subdomain", STR),
    one(19, "schedulerName", STR),
    many(20, "initContainers", Ty::Msg(CONTAINER)),
    one(21, "automountServiceAccountToken", PTR_BOOL),
    one(24, "priorityClassName", STR),
];
const TEMPLATE: &[F] = &[
    one(1, "metadata", Ty::Msg(META)),
    one(2, "spec", Ty::Msg(POD_SPEC)),
];
const POD: &[F] = &[
    one(1, "metadata", Ty::Msg(META)),
    one(2, "spec", Ty::Msg(POD_SPEC)),
];
const DEPLOYMENT: &[F] = &[
    one(1, "metadata", Ty::Msg(META)),
    one(
        2,
        "spec",
        Ty::Msg(&[
            one(1, "replicas", PTR_INT),
            one(2, "selector", Ty::Msg(SELECTOR)),
            one(3, "template", Ty::Msg(TEMPLATE)),
            one(
                4,
                "strategy",
                Ty::Msg(&[
                    one(1, "type", STR),
                    one(
                        2,
                        "rollingUpdate",
                        Ty::Msg(&[
                            one(1, "maxUnavailable", Ty::IntOrString),
                            one(2, "maxSurge", Ty::IntOrString),
                        ]),
                    ),
                ]),
            ),
            one(5, "minReadySeconds", INT),
            one(6, "revisionHistoryLimit", PTR_INT),
            one(7, "paused", BOOL),
            one(9, "progressDeadlineSeconds", PTR_INT),
        ]),
    ),
];
const REPLICA_SET: &[F] = &[
    one(1, "metadata", Ty::Msg(META)),
    one(
        2,
        "spec",
        Ty::Msg(&[
            one(1, "replicas", PTR_INT),
            one(2, "selector", Ty::Msg(SELECTOR)),
            one(3, "template", Ty::Msg(TEMPLATE)),
            one(4, "minReadySeconds", INT),
        ]),
    ),
];

const POLICY_RULE: &[F] = &[
    many(1, "verbs", STR),
    many(2, "apiGroups", STR),
    many(3, "resources", STR),
    many(4, "resourceNames", STR),
    many(5, "nonResourceURLs", STR),
];
const ROLE: &[F] = &[
    one(1, "metadata", Ty::Msg(META)),
    many(2, "rules", Ty::Msg(POLICY_RULE)),
];
const SUBJECT: &[F] = &[
    one(1, "kind", STR),
    one(2, "apiGroup", STR),
    one(3, "name", STR),
    one(4, "namespace", STR),
];
const BINDING: &[F] = &[
    one(1, "metadata", Ty::Msg(META)),
    many(2, "subjects", Ty::Msg(SUBJECT)),
    one(
        3,
        "roleRef",
        Ty::Msg(&[
            one(1, "apiGroup", STR),
            one(2, "kind", STR),
            one(3, "name", STR),
        ]),
    ),
];

const SECRET: &[F] = &[
    one(1, "metadata", Ty::Msg(META)),
    one(2, "data", Ty::BytesMap),
    one(3, "type", STR),
    one(4, "stringData", Ty::StrMap),
    one(5, "immutable", PTR_BOOL),
];

fn schema(kind: Kind) -> Option<&'static [F]> {
    match kind {
        Kind::Namespace => Some(NAMESPACE),
        Kind::ConfigMap => Some(CONFIG_MAP),
        Kind::Service => Some(SERVICE),
        Kind::Pod => Some(POD),
        Kind::Deployment => Some(DEPLOYMENT),
        Kind::ReplicaSet => Some(REPLICA_SET),
        Kind::Role | Kind::ClusterRole => Some(ROLE),
        Kind::RoleBinding | Kind::ClusterRoleBinding => Some(BINDING),
        Kind::Secret => Some(SECRET),
        _ => None,
    }
}

// ------------------------------------------------------------ the wire

enum Wire<'a> {
    Varint(u64),
    Bytes(&'a [u8]),
    Fixed,
}

fn bad(what: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request(format!("malformed protobuf body: {what}"))
}

fn varint(b: &[u8], i: &mut usize) -> ApiResult<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let c = *b.get(*i).ok_or_else(|| bad("truncated varint"))?;
        *i += 1;
        v |= u64::from(c & 0x7f) << shift;
        if c < 0x80 {
            return Ok(v);
        }
    }
    Err(bad("varint too long"))
}

/// The fields of one message, in order.
fn fields(b: &[u8]) -> ApiResult<Vec<(u32, Wire<'_>)>> {
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        let key = varint(b, &mut i)?;
        let number = u32::try_from(key >> 3).map_err(|_| bad("field number"))?;
        let wire = match key & 7 {
            0 => Wire::Varint(varint(b, &mut i)?),
            2 => {
                let len = usize::try_from(varint(b, &mut i)?).map_err(|_| bad("length"))?;
                let end = i.checked_add(len).filter(|e| *e <= b.len());
                let end = end.ok_or_else(|| bad("length past the end"))?;
                let v = &b[i..end];
                i = end;
                Wire::Bytes(v)
            }
            1 => {
                i += 8;
                Wire::Fixed
            }
            5 => {
                i += 4;
                Wire::Fixed
            }
            t => return Err(bad(format!("wire type {t}"))),
        };
        if number == 0 || i > b.len() {
            return Err(bad("field 0 or truncated"));
        }
        out.push((number, wire));
    }
    Ok(out)
}

/// Whether a value is its type's zero (what the encoder writes for a field
/// nobody set): 0, empty, or a message of zeros.
fn is_zero(w: &Wire<'_>, depth: usize) -> bool {
    match w {
        Wire::Varint(v) => *v == 0,
        Wire::Fixed => false,
        Wire::Bytes([]) => true,
        Wire::Bytes(b) => {
            depth < 32
                && fields(b)
                    .map(|fs| fs.iter().all(|(_, w)| is_zero(w, depth + 1)))
                    .unwrap_or(false)
        }
    }
}

fn text(w: &Wire<'_>, path: &str) -> ApiResult<String> {
    match w {
        Wire::Bytes(b) => {
            String::from_utf8(b.to_vec()).map_err(|_| bad(format!("{path}: not UTF-8")))
        }
        _ => Err(bad(format!("{path}: expected a string"))),
    }
}

fn bytes<'a>(w: &Wire<'a>, path: &str) -> ApiResult<&'a [u8]> {
    match w {
        Wire::Bytes(b) => Ok(b),
        _ => Err(bad(format!("{path}: expected a message"))),
    }
}

/// A map entry: key (1) and value (2).
fn entry<'a>(w: &Wire<'a>, path: &str) -> ApiResult<(String, Option<Wire<'a>>)> {
    let mut key = String::new();
    let mut value = None;
    for (n, f) in fields(bytes(w, path)?)? {
        match n {
            1 => key = text(&f, path)?,
            2 => value = Some(f),
            _ => {}
        }
    }
    Ok((key, value))
}

/// Standard base64 with padding, as Kubernetes' JSON carries bytes.
fn base64(data: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for (k, shift) in [18, 12, 6, 0].into_iter().enumerate() {
            if k <= chunk.len() {
                out.push(char::from(ABC[((n >> shift) & 63) as usize]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn int(v: u64) -> i64 {
    // int32/int64 in protobuf: a negative number is its two's complement.
    v as i64
}

fn value(ty: Ty, w: &Wire<'_>, path: &str) -> ApiResult<Option<Value>> {
    Ok(match ty {
        Ty::Str => Some(Value::String(text(w, path)?)).filter(|v| v != ""),
        Ty::Int { keep_zero } => match w {
            Wire::Varint(v) if *v != 0 || keep_zero => Some(Value::from(int(*v))),
            Wire::Varint(_) => None,
            _ => return Err(bad(format!("{path}: expected an integer"))),
        },
        Ty::Bool { keep_zero } => match w {
            Wire::Varint(v) if *v != 0 || keep_zero => Some(Value::Bool(*v != 0)),
            Wire::Varint(_) => None,
            _ => return Err(bad(format!("{path}: expected a bool"))),
        },
        Ty::Msg(schema) => Some(message(bytes(w, path)?, schema, path)?),
        Ty::StrMap | Ty::BytesMap | Ty::QuantityMap => unreachable!("maps are entries"),
        Ty::IntOrString => {
            let (mut kind, mut i, mut s) = (0, 0, String::new());
            for (n, f) in fields(bytes(w, path)?)? {
                match (n, &f) {
                    (1, Wire::Varint(v)) => kind = *v,
                    (2, Wire::Varint(v)) => i = int(*v),
                    (3, _) => s = text(&f, path)?,
                    _ => {}
                }
            }
            Some(if kind == 1 {
                Value::String(s)
            } else {
                Value::from(i)
            })
        }
        Ty::Time => {
            let (mut secs, mut nanos) = (0i64, 0i64);
            for (n, f) in fields(bytes(w, path)?)? {
                match (n, f) {
                    (1, Wire::Varint(v)) => secs = int(v),
                    (2, Wire::Varint(v)) => nanos = int(v),
                    _ => {}
                }
            }
            if secs == 0 && nanos == 0 {
                None
            } else {
                let t = time::OffsetDateTime::from_unix_timestamp(secs)
                    .map_err(|_| bad(format!("{path}: time out of range")))?;
                let f = time::format_description::well_known::Rfc3339;
                Some(Value::String(t.format(&f).map_err(bad)?))
            }
        }
    })
}

fn message(b: &[u8], schema: &[F], path: &str) -> ApiResult<Value> {
    let mut out = Map::new();
    for (n, w) in fields(b)? {
        let Some(&F(_, name, ty, repeated)) = schema.iter().find(|f| f.0 == n) else {
            if is_zero(&w, 0) {
                continue;
            }
            return Err(ApiError::unsupported_media(format!(
                "{path}: protobuf field {n} is not one this server decodes; send the object as JSON"
            )));
        };
        let here = if path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        match ty {
            Ty::StrMap | Ty::BytesMap | Ty::QuantityMap => {
                let (k, v) = entry(&w, &here)?;
                let v = match (ty, v) {
                    (_, None) => Value::String(String::new()),
                    (Ty::StrMap, Some(v)) => Value::String(text(&v, &here)?),
                    (Ty::BytesMap, Some(v)) => Value::String(base64(bytes(&v, &here)?)),
                    (_, Some(v)) => {
                        // Quantity { string = 1 }
                        let mut q = String::new();
                        for (n, f) in fields(bytes(&v, &here)?)? {
                            if n == 1 {
                                q = text(&f, &here)?;
                            }
                        }
                        Value::String(q)
                    }
                };
                let map = out.entry(name).or_insert_with(|| Value::Object(Map::new()));
                if let Value::Object(m) = map {
                    m.insert(k, v);
                }
            }
            _ if repeated => {
                // An element of a repeated field is kept even when zero.
                let v = match ty {
                    Ty::Str => Value::String(text(&w, &here)?),
                    _ => value(ty, &w, &here)?.unwrap_or(Value::Null),
                };
                let list = out.entry(name).or_insert_with(|| Value::Array(Vec::new()));
                if let Value::Array(l) = list {
                    l.push(v);
                }
            }
            _ => {
                if let Some(v) = value(ty, &w, &here)? {
                    out.insert(name.to_string(), v);
                }
            }
        }
    }
    Ok(Value::Object(out))
}

/// The `runtime.Unknown` inside the envelope: apiVersion, kind and raw.
fn envelope(body: &[u8]) -> ApiResult<(String, String, &[u8])> {
    let unknown = body
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with the k8s\\0 envelope"))?;
    let (mut api_version, mut type_kind, mut raw, mut encoding) =
        (String::new(), String::new(), None, String::new());
    for (n, w) in fields(unknown)? {
        match n {
            1 => {
                for (m, f) in fields(bytes(&w, "typeMeta")?)? {
                    match m {
                        1 => api_version = text(&f, "apiVersion")?,
                        2 => type_kind = text(&f, "kind")?,
                        _ => {}
                    }
                }
            }
            2 => raw = Some(bytes(&w, "raw")?),
            3 => encoding = text(&w, "contentEncoding")?,
            _ => {}
        }
    }
    if !encoding.is_empty() {
        return Err(ApiError::unsupported_media(format!(
            "protobuf content encoding {encoding:?} is not supported"
        )));
    }
    Ok((api_version, type_kind, raw.unwrap_or_default()))
}

fn typed(
    body: &[u8],
    want_version: &str,
    want_kind: &str,
    schema: impl FnOnce() -> ApiResult<&'static [F]>,
) -> ApiResult<Value> {
    let (api_version, type_kind, raw) = envelope(body)?;
    if api_version != want_version || type_kind != want_kind {
        return Err(ApiError::bad_request(format!(
            "the body is a {api_version} {type_kind}, but the path is for {want_version} {want_kind}"
        )));
    }
    let mut v = message(raw, schema()?, "")?;
    v["apiVersion"] = Value::String(api_version);
    v["kind"] = Value::String(type_kind);
    Ok(v)
}

/// The JSON form of a protobuf request body for `kind`.
pub fn decode(kind: Kind, body: &[u8]) -> ApiResult<Value> {
    typed(body, &kind.api_version(), kind.name(), || {
        schema(kind).ok_or_else(|| {
            ApiError::unsupported_media(format!(
                "protobuf bodies are accepted for Namespace, ConfigMap, Secret, Service, Pod, Deployment, ReplicaSet and the RBAC kinds; send the {kind} as JSON"
            ))
        })
    })
}

const RESOURCE_ATTRIBUTES: &[F] = &[
    one(1, "namespace", STR),
    one(2, "verb", STR),
    one(3, "group", STR),
    one(4, "version", STR),
    one(5, "resource", STR),
    one(6, "subresource", STR),
    one(7, "name", STR),
];
const NON_RESOURCE_ATTRIBUTES: &[F] = &[one(1, "path", STR), one(2, "verb", STR)];
/// A review's status as a client sends it: empty (only zero values).
const REVIEW_STATUS: &[F] = &[];
const SELF_ACCESS_REVIEW: &[F] = &[
    one(1, "metadata", Ty::Msg(META)),
    one(
        2,
        "spec",
        Ty::Msg(&[
            one(1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES)),
            one(2, "nonResourceAttributes", Ty::Msg(NON_RESOURCE_ATTRIBUTES)),
        ]),
    ),
    one(3, "status", Ty::Msg(REVIEW_STATUS)),
];
const ACCESS_REVIEW: &[F] = &[
    one(1, "metadata", Ty::Msg(META)),
    one(
        2,
        "spec",
        Ty::Msg(&[
            one(1, "resourceAttributes", Ty::Msg(RESOURCE_ATTRIBUTES)),
            one(2, "nonResourceAttributes", Ty::Msg(NON_RESOURCE_ATTRIBUTES)),
            one(3, "user", STR),
            many(4, "groups", STR),
            one(6, "uid", STR),
        ]),
    ),
    one(3, "status", Ty::Msg(REVIEW_STATUS)),
];
const SELF_RULES_REVIEW: &[F] = &[
    one(1, "metadata", Ty::Msg(META)),
    one(2, "spec", Ty::Msg(&[one(1, "namespace", STR)])),
    one(3, "status", Ty::Msg(REVIEW_STATUS)),
];

const TOKEN_REQUEST: &[F] = &[
    one(1, "metadata", Ty::Msg(META)),
    one(
        2,
        "spec",
        Ty::Msg(&[
            many(1, "audiences", STR),
            one(
                3,
                "boundObjectRef",
                Ty::Msg(&[
                    one(1, "kind", STR),
                    one(2, "apiVersion", STR),
                    one(3, "name", STR),
                    one(4, "uid", STR),
                ]),
            ),
            one(4, "expirationSeconds", PTR_INT),
        ]),
    ),
    one(
        3,
        "status",
        Ty::Msg(&[
            one(1, "token", STR),
            one(2, "expirationTimestamp", Ty::Time),
        ]),
    ),
];

/// The JSON form of a protobuf body of a kind that is not stored: the
/// authorization.k8s.io/v1 reviews (`kubectl auth can-i` sends them so)
/// and authentication.k8s.io/v1 TokenRequest (`kubectl create token`).
pub fn decode_request(api_version: &str, kind: &str, body: &[u8]) -> ApiResult<Value> {
    typed(body, api_version, kind, || match (api_version, kind) {
        ("authorization.k8s.io/v1", "SelfSubjectAccessReview") => Ok(SELF_ACCESS_REVIEW),
        ("authorization.k8s.io/v1", "SubjectAccessReview") => Ok(ACCESS_REVIEW),
        ("authorization.k8s.io/v1", "SelfSubjectRulesReview") => Ok(SELF_RULES_REVIEW),
        ("authentication.k8s.io/v1", "TokenRequest") => Ok(TOKEN_REQUEST),
        (v, k) => Err(ApiError::bad_request(format!("no {v} {k} here"))),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn key(n: u32, wire: u8) -> Vec<u8> {
        let mut out = Vec::new();
        let mut v = (u64::from(n) << 3) | u64::from(wire);
        loop {
            let b = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(b);
                return out;
            }
            out.push(b | 0x80);
        }
    }
    fn s(n: u32, v: &[u8]) -> Vec<u8> {
        // The tests' messages are short: a one-byte length.
        let mut out = key(n, 2);
        out.push(u8::try_from(v.len()).unwrap());
        out.extend_from_slice(v);
        out
    }
    fn i(n: u32, v: u8) -> Vec<u8> {
        let mut out = key(n, 0);
        out.push(v);
        out
    }
    fn cat(parts: &[Vec<u8>]) -> Vec<u8> {
        parts.concat()
    }
    fn envelope(api_version: &str, kind: &str, raw: &[u8]) -> Vec<u8> {
        let tm = cat(&[s(1, api_version.as_bytes()), s(2, kind.as_bytes())]);
        let mut out = MAGIC.to_vec();
        out.extend(cat(&[s(1, &tm), s(2, raw), s(3, b""), s(4, b"")]));
        out
    }

    /// What `kubectl create configmap c --from-literal=a=b` sends, zeros and all.
    #[test]
    fn kubectl_create_configmap() {
        let meta = cat(&[s(1, b"c"), s(2, b""), s(3, b""), i(7, 0), s(8, b"")]);
        let raw = cat(&[s(1, &meta), s(2, &cat(&[s(1, b"a"), s(2, b"b")]))]);
        let v = decode(Kind::ConfigMap, &envelope("v1", "ConfigMap", &raw)).unwrap();
        assert_eq!(
            v,
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"}, "data": {"a": "b"}})
        );
    }

    #[test]
    fn base64_as_kubernetes_writes_it() {
        assert_eq!(base64(b""), "");
        assert_eq!(base64(b"f"), "Zg==");
        assert_eq!(base64(b"fo"), "Zm8=");
        assert_eq!(base64(b"foo"), "Zm9v");
        assert_eq!(base64(&[0xff, 0xfe, 0x00, 0x01]), "//4AAQ==");
    }

    #[test]
    fn deployments_keep_zero_replicas_and_int_or_strings() {
        let ru = cat(&[
            s(1, &cat(&[i(1, 1), s(3, b"25%")])),
            s(2, &cat(&[i(1, 0), i(2, 1)])),
        ]);
        let spec = cat(&[
            i(1, 0),
            s(4, &cat(&[s(1, b"RollingUpdate"), s(2, &ru)])),
            i(7, 0),
        ]);
        let raw = cat(&[s(1, &s(1, b"web")), s(2, &spec), s(3, &i(1, 0))]);
        let v = decode(Kind::Deployment, &envelope("apps/v1", "Deployment", &raw)).unwrap();
        assert_eq!(v["spec"]["replicas"], 0, "a pointer field's zero is kept");
        assert_eq!(
            v["spec"]["strategy"]["rollingUpdate"],
            json!({"maxUnavailable": "25%", "maxSurge": 1})
        );
        assert!(v["spec"].get("paused").is_none());
        assert!(v.get("status").is_none() || v["status"] == json!({}));
    }

    #[test]
    fn unknown_fields_with_values_and_bad_bodies_are_refused() {
        // metadata field 13 (ownerReferences) with content.
        let raw = cat(&[s(1, &cat(&[s(1, b"c"), s(13, &s(1, b"x"))]))]);
        let e = decode(Kind::ConfigMap, &envelope("v1", "ConfigMap", &raw)).unwrap_err();
        assert_eq!(e.code, 415, "{}", e.message);
        assert!(
            e.message.contains("metadata: protobuf field 13"),
            "{}",
            e.message
        );
        let e = decode(Kind::ConfigMap, &envelope("v1", "Secret", b"")).unwrap_err();
        assert_eq!(e.code, 400);
        assert_eq!(
            decode(
                Kind::Lease,
                &envelope("coordination.k8s.io/v1", "Lease", b"")
            )
            .unwrap_err()
            .code,
            415
        );
        for body in [&b"{}"[..], b"k8s\0\x0a\x7f", b"k8s\0\x0a"] {
            assert_eq!(
                decode(Kind::ConfigMap, body).unwrap_err().code,
                400,
                "{body:?}"
            );
        }
    }
}
