//! How each list field of each kind merges in a strategic merge patch: one
//! table, Kubernetes' own `patchStrategy` / `patchMergeKey` tags (from
//! k8s.io/api) for the fields skiff's types have. A list not named here is
//! atomic: a patch replaces it whole (as Kubernetes does for, say,
//! `tolerations`, `command` and EndpointSlice `endpoints`).

use crate::Kind;

/// How one list field merges.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum List {
    /// Elements are objects matched by this field (`containers` by
    /// `name`); a patch element merges into its match or is appended.
    ByKey(&'static str),
    /// Elements are scalars; a patch adds the ones missing (`finalizers`).
    Set,
}

/// One field of an object that is not a plain one: a merging list, or an
/// object whose own fields need the table.
#[derive(Debug)]
pub struct Field {
    pub name: &'static str,
    pub list: Option<List>,
    /// The schema of the field's object, or of each list element.
    pub schema: Option<&'static Schema>,
}

/// The fields of one object type that merge specially; the rest are plain.
#[derive(Debug)]
pub struct Schema {
    pub fields: &'static [Field],
}

impl Schema {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

/// A field holding an object (or a list element type) with its own table.
pub(crate) const fn object(name: &'static str, schema: &'static Schema) -> Field {
    Field {
        name,
        list: None,
        schema: Some(schema),
    }
}

pub(crate) const fn keyed(
    name: &'static str,
    key: &'static str,
    schema: Option<&'static Schema>,
) -> Field {
    Field {
        name,
        list: Some(List::ByKey(key)),
        schema,
    }
}

pub(crate) const fn set(name: &'static str) -> Field {
    Field {
        name,
        list: Some(List::Set),
        schema: None,
    }
}

/// An object with no special fields.
pub static PLAIN: Schema = Schema { fields: &[] };

static META: Schema = Schema {
    fields: &[keyed("ownerReferences", "uid", None), set("finalizers")],
};

static CONTAINER: Schema = Schema {
    fields: &[
        keyed("ports", "containerPort", None),
        keyed("env", "name", None),
        keyed("volumeMounts", "mountPath", None),
        keyed("volumeDevices", "devicePath", None),
        keyed("resizePolicy", "resourceName", None),
    ],
};

static POD_SPEC: Schema = Schema {
    fields: &[
        keyed("volumes", "name", None),
        keyed("initContainers", "name", Some(&CONTAINER)),
        keyed("containers", "name", Some(&CONTAINER)),
        keyed("ephemeralContainers", "name", Some(&CONTAINER)),
        keyed("imagePullSecrets", "name", None),
        keyed("hostAliases", "ip", None),
        keyed("topologySpreadConstraints", "topologyKey", None),
        keyed("schedulingGates", "name", None),
        keyed("resourceClaims", "name", None),
    ],
};

static CONDITIONS: Schema = Schema {
    fields: &[keyed("conditions", "type", None)],
};

static POD_STATUS: Schema = Schema {
    fields: &[
        keyed("conditions", "type", None),
        keyed("podIPs", "ip", None),
        keyed("hostIPs", "ip", None),
    ],
};

static POD: Schema = Schema {
    fields: &[
        object("metadata", &META),
        object("spec", &POD_SPEC),
        object("status", &POD_STATUS),
    ],
};

static POD_TEMPLATE: Schema = Schema {
    fields: &[object("metadata", &META), object("spec", &POD_SPEC)],
};

static WORKLOAD_SPEC: Schema = Schema {
    fields: &[object("template", &POD_TEMPLATE)],
};

/// Deployments and ReplicaSets.
static WORKLOAD: Schema = Schema {
    fields: &[
        object("metadata", &META),
        object("spec", &WORKLOAD_SPEC),
        object("status", &CONDITIONS),
    ],
};

static SERVICE_SPEC: Schema = Schema {
    fields: &[keyed("ports", "port", None)],
};

static SERVICE: Schema = Schema {
    fields: &[
        object("metadata", &META),
        object("spec", &SERVICE_SPEC),
        object("status", &CONDITIONS),
    ],
};

static NODE_SPEC: Schema = Schema {
    fields: &[set("podCIDRs")],
};

static NODE_STATUS: Schema = Schema {
    fields: &[
        keyed("conditions", "type", None),
        keyed("addresses", "type", None),
    ],
};

static NODE: Schema = Schema {
    fields: &[
        object("metadata", &META),
        object("spec", &NODE_SPEC),
        object("status", &NODE_STATUS),
    ],
};

static WITH_CONDITIONS: Schema = Schema {
    fields: &[object("metadata", &META), object("status", &CONDITIONS)],
};

/// `secrets` merge by name; `imagePullSecrets` and Endpoints' `subsets`
/// are atomic (no merge key in Kubernetes).
static SERVICE_ACCOUNT: Schema = Schema {
    fields: &[object("metadata", &META), keyed("secrets", "name", None)],
};

static META_ONLY: Schema = Schema {
    fields: &[object("metadata", &META)],
};

/// The table for one kind's objects.
pub fn of(kind: Kind) -> &'static Schema {
    match kind {
        Kind::Pod => &POD,
        Kind::Deployment | Kind::ReplicaSet => &WORKLOAD,
        Kind::Service => &SERVICE,
        Kind::Node => &NODE,
        Kind::Namespace => &WITH_CONDITIONS,
        Kind::ServiceAccount => &SERVICE_ACCOUNT,
        // Rules and subjects are atomic lists in Kubernetes too.
        Kind::EndpointSlice
        | Kind::ConfigMap
        | Kind::Lease
        | Kind::Event
        | Kind::Endpoints
        | Kind::Role
        | Kind::ClusterRole
        | Kind::RoleBinding
        | Kind::ClusterRoleBinding
        | Kind::Secret => &META_ONLY,
    }
}
