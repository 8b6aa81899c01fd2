//! The gRPC front end: the uniform `Resources` service over the registry.

use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use prost::Message;
use skiff_api::selector::{FieldSelector, Selector};
use skiff_api::v1::resources_server::Resources;
use skiff_api::v1::{
    ApplyRequest, ApplyResponse, DeleteRequest, GetRequest, ListRequest, RawList, RawObject,
    WatchEvent, WatchRequest,
};
use skiff_api::{Kind, Resource, with_resource};
use tonic::{Request, Response, Status};

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::registry::{
    DeleteOptions, ListOptions, Propagation, Registry, WatchParams, Watched, WriteOptions,
    watch_timeout,
};
use crate::strategy::Strategy;
use crate::watch_cache::Filter;

pub struct Service {
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub audit: crate::audit::Audit,
    /// Set when requests are authenticated: every call is authorized.
    pub authz: Option<Arc<crate::authz::Authorizer>>,
}

/// Who called, for the audit log.
type Caller = (
    Option<Arc<crate::authn::UserInfo>>,
    Option<std::net::IpAddr>,
);

fn kind(name: &str) -> Result<Kind, Status> {
    Kind::from_name(name).ok_or_else(|| Status::invalid_argument(format!("unknown kind {name:?}")))
}

fn decode<R: Resource>(raw: &RawObject) -> Result<R, Status> {
    R::decode(raw.raw.as_slice())
        .map_err(|e| Status::invalid_argument(format!("malformed {}: {e}", R::KIND)))
}

fn raw<R: Resource>(obj: &R) -> RawObject {
    RawObject {
        kind: R::KIND.name().to_string(),
        raw: obj.encode_to_vec(),
        dry_run: false,
        field_manager: String::new(),
    }
}

fn selectors(labels: &str, fields: &str) -> Result<(Selector, FieldSelector), Status> {
    crate::registry::parse_selectors(labels, fields).map_err(|e| e.to_grpc())
}

/// An optional resourceVersion: empty, or a revision number.
fn resource_version(text: &str) -> Result<Option<i64>, Status> {
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| Status::invalid_argument(format!("resourceVersion {text:?} must be a number")))
}

/// Namespaced kinds get the default namespace when none is given.
fn default_namespace<R: Strategy>(obj: &mut R) {
    if R::KIND.namespaced() && obj.meta().namespace.is_empty() {
        obj.meta_mut().namespace = "default".into();
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Write {
    Create,
    Update,
    UpdateStatus,
}

impl Service {
    /// The caller may make this request.
    fn check<T>(&self, req: &Request<T>, ask: crate::authz::Request) -> Result<(), Status> {
        let user = req.extensions().get::<Arc<crate::authn::UserInfo>>();
        crate::authz::check_grpc(self.authz.as_deref(), user.map(|u| u.as_ref()), ask)
    }

    /// A write's check; a refusal goes in the audit log, as REST's do.
    async fn check_write(
        &self,
        caller: &Caller,
        k: Kind,
        (verb, subresource): (&str, &str),
        (namespace, name): (&str, &str),
    ) -> Result<(), Status> {
        let ask = crate::authz::on(k, verb, subresource, namespace, name);
        let checked = crate::authz::check_grpc(self.authz.as_deref(), caller.0.as_deref(), ask);
        if let Err(s) = &checked {
            let refused: Result<(), ApiError> = Err(ApiError::from_grpc(s.clone()));
            let target = (namespace.to_string(), name.to_string());
            self.audit(caller.clone(), verb, k, subresource, target, &refused)
                .await;
        }
        checked
    }

    /// Create, update and status update share everything but the call.
    async fn write(
        &self,
        op: Write,
        caller: Caller,
        r: RawObject,
    ) -> Result<Response<RawObject>, Status> {
        let k = kind(&r.kind)?;
        let target: (String, String);
        if op == Write::UpdateStatus && !k.has_status() {
            return Err(Status::unimplemented(format!(
                "{k} has no status subresource"
            )));
        }
        let out = with_resource!(k, R => {
            let mut obj: R = decode(&r)?;
            default_namespace(&mut obj);
            target = (obj.meta().namespace.clone(), obj.meta().name.clone());
            let ask = match op {
                Write::Create => ("create", ""),
                Write::Update => ("update", ""),
                Write::UpdateStatus => ("update", "status"),
            };
            let named = if op == Write::Create { "" } else { target.1.as_str() };
            self.check_write(&caller, k, ask, (&target.0, named)).await?;
            let opts = WriteOptions {
                dry_run: r.dry_run,
                field_manager: (!r.field_manager.is_empty()).then(|| r.field_manager.clone()),
                user: caller.0.clone(),
            };
            match op {
                Write::Create => self.registry.create(obj, opts).await,
                Write::Update => self.registry.update(obj, false, opts).await,
                Write::UpdateStatus => self.registry.update(obj, true, opts).await,
            }
            .map(|o| raw(&o))
        });
        let verb = match op {
            Write::Create => "create",
            Write::Update => "update",
            Write::UpdateStatus => "update_status",
        };
        self.observe(verb, k, &out);
        let (audit_verb, sub) = match op {
            Write::Create => ("create", ""),
            Write::Update => ("update", ""),
            Write::UpdateStatus => ("update", "status"),
        };
        self.audit(caller, audit_verb, k, sub, target, &out).await;
        out.map(Response::new).map_err(|e| e.to_grpc())
    }

    /// The audit line of a gRPC write.
    async fn audit<T>(
        &self,
        (user, source): Caller,
        verb: &str,
        k: Kind,
        subresource: &str,
        (namespace, name): (String, String),
        out: &Result<T, ApiError>,
    ) {
        let Some(user) = user else { return };
        let code = out.as_ref().map_or_else(|e| e.code, |_| 200);
        let uri = format!("/skiff.v1.Resources/{verb} {}", k.name());
        self.audit
            .record(crate::audit::Entry {
                user: &user,
                source,
                uri: &uri,
                info: crate::audit::RequestInfo {
                    verb: verb.into(),
                    api_group: k.group().into(),
                    resource: k.plural().into(),
                    subresource: subresource.into(),
                    namespace,
                    name,
                },
                code,
            })
            .await;
    }

    fn observe<T>(&self, verb: &'static str, kind: Kind, r: &Result<T, ApiError>) {
        let code = r.as_ref().map_or_else(|e| e.code, |_| 200);
        self.metrics.request("grpc", verb, kind, code);
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Resources for Service {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<RawObject>, Status> {
        let k = kind(&req.get_ref().kind)?;
        let ask = crate::authz::on(k, "get", "", &req.get_ref().namespace, &req.get_ref().name);
        self.check(&req, ask)?;
        let r = req.into_inner();
        let out = with_resource!(k, R => self.registry.get::<R>(&r.namespace, &r.name).await.map(|o| raw(&o)));
        self.observe("get", k, &out);
        out.map(Response::new).map_err(|e| e.to_grpc())
    }

    async fn list(&self, req: Request<ListRequest>) -> Result<Response<RawList>, Status> {
        let k = kind(&req.get_ref().kind)?;
        self.check(
            &req,
            crate::authz::on(k, "list", "", &req.get_ref().namespace, ""),
        )?;
        let r = req.into_inner();
        let (labels, fields) = selectors(&r.label_selector, &r.field_selector)?;
        let opts = ListOptions {
            namespace: r.namespace,
            labels,
            fields,
        };
        let limit = usize::try_from(r.limit).map_err(|_| {
            Status::invalid_argument(format!("limit {} must be 0 or more", r.limit))
        })?;
        let out = with_resource!(k, R => self
        .registry
        .list_chunk::<R>(&opts, limit, &r.continue_token, crate::registry::CHUNK_BYTES)
        .await
        .and_then(|chunk| Ok(RawList {
            kind: k.name().to_string(),
            items: chunk.items().map(|o| o.map(|o| o.encode_to_vec())).collect::<Result<_, _>>()?,
            resource_version: chunk.revision.to_string(),
            continue_token: chunk.token.unwrap_or_default(),
            remaining_item_count: chunk.remaining.and_then(|n| i64::try_from(n).ok()),
        })));
        self.observe("list", k, &out);
        out.map(Response::new).map_err(|e| e.to_grpc())
    }

    async fn create(&self, req: Request<RawObject>) -> Result<Response<RawObject>, Status> {
        let caller = crate::audit::caller(&req);
        self.write(Write::Create, caller, req.into_inner()).await
    }

    async fn update(&self, req: Request<RawObject>) -> Result<Response<RawObject>, Status> {
        let caller = crate::audit::caller(&req);
        self.write(Write::Update, caller, req.into_inner()).await
    }

    async fn update_status(&self, req: Request<RawObject>) -> Result<Response<RawObject>, Status> {
        let caller = crate::audit::caller(&req);
        self.write(Write::UpdateStatus, caller, req.into_inner())
            .await
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<RawObject>, Status> {
        let caller = crate::audit::caller(&req);
        let r = req.into_inner();
        let k = kind(&r.kind)?;
        self.check_write(&caller, k, ("delete", ""), (&r.namespace, &r.name))
            .await?;
        let resource_version = resource_version(&r.resource_version)?;
        let opts = DeleteOptions {
            user: caller.0.clone(),
            resource_version,
            grace_period_seconds: r.grace_period_seconds,
            propagation: Propagation::parse(&r.propagation_policy).map_err(|e| e.to_grpc())?,
            dry_run: r.dry_run,
        };
        let out = with_resource!(k, R => self.registry.delete::<R>(&r.namespace, &r.name, &opts).await.map(|(o, _)| raw(&o)));
        self.observe("delete", k, &out);
        self.audit(
            caller,
            "delete",
            k,
            "",
            (r.namespace.clone(), r.name.clone()),
            &out,
        )
        .await;
        out.map(Response::new).map_err(|e| e.to_grpc())
    }

    async fn apply(&self, req: Request<ApplyRequest>) -> Result<Response<ApplyResponse>, Status> {
        let caller = crate::audit::caller(&req);
        let r = req.into_inner();
        let k = kind(&r.kind)?;
        let config: serde_json::Value = serde_json::from_slice(&r.config)
            .map_err(|e| Status::invalid_argument(format!("malformed apply configuration: {e}")))?;
        let namespace = if k.namespaced() && r.namespace.is_empty() {
            "default".to_string()
        } else {
            r.namespace.clone()
        };
        self.check_write(&caller, k, ("patch", ""), (&namespace, &r.name))
            .await?;
        let out = with_resource!(k, R => {
            crate::apply::apply::<R>(
                &self.registry,
                crate::apply::Apply {
                    namespace: &namespace,
                    name: &r.name,
                    config,
                    manager: &r.field_manager,
                    force: r.force,
                    dry_run: r.dry_run,
                    user: caller.0.clone(),
                },
            )
            .await
            .map(|(o, created)| ApplyResponse { object: Some(raw(&o)), created })
        });
        self.observe("apply", k, &out);
        self.audit(
            caller,
            "patch",
            k,
            "",
            (namespace.clone(), r.name.clone()),
            &out,
        )
        .await;
        out.map(Response::new).map_err(|e| e.to_grpc())
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        req: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let k = kind(&req.get_ref().kind)?;
        self.check(
            &req,
            crate::authz::on(k, "watch", "", &req.get_ref().namespace, ""),
        )?;
        let r = req.into_inner();
        let (labels, fields) = selectors(&r.label_selector, &r.field_selector)?;
        let rv = resource_version(&r.resource_version)?;
        let filter = Filter {
            kind: k,
            namespace: r.namespace,
            labels,
            fields,
        };
        let params = WatchParams {
            bookmarks: r.allow_bookmarks,
            timeout: watch_timeout(Some(r.timeout_seconds)).map_err(|e| e.to_grpc())?,
        };
        let events = self.registry.watch(filter, rv, params).await;
        self.observe("watch", k, &events);
        let events = events.map_err(|e| e.to_grpc())?;
        let guard = self.metrics.watcher();
        let out = events.map(move |item| {
            let _held = &guard;
            Ok(match item {
                Ok(Watched::Event(t, obj)) => WatchEvent {
                    r#type: t.as_str().to_string(),
                    raw: obj.proto(),
                    ..Default::default()
                },
                Ok(Watched::Bookmark(rv)) => WatchEvent {
                    r#type: "BOOKMARK".into(),
                    resource_version: rv.to_string(),
                    ..Default::default()
                },
                Err(e) => WatchEvent {
                    r#type: "ERROR".into(),
                    error: e.message,
                    code: i32::from(e.code),
                    ..Default::default()
                },
            })
        });
        Ok(Response::new(Box::pin(out)))
    }
}
