//! How objects sit in the store: their protobuf encoding without a
//! resourceVersion (the store's revision is the truth), bounded in size.

use skiff_api::{Kind, Object, Resource, with_resource};
use skiff_store::{KeyValue, Revision};

use crate::error::{ApiError, ApiResult};

/// Kubernetes' (and etcd's) limit on one object.
pub const MAX_OBJECT_BYTES: usize = 1536 * 1024;

/// Decodes a stored object and gives it its resourceVersion and type.
pub fn decode<R: Resource>(kv: &KeyValue) -> ApiResult<R> {
    decode_at(&kv.value, kv.mod_revision, &kv.key)
}

pub(crate) fn decode_at<R: Resource>(bytes: &[u8], revision: Revision, key: &str) -> ApiResult<R> {
    let mut obj = R::decode(bytes)
        .map_err(|e| ApiError::internal(format!("stored object {key:?} does not decode: {e}")))?;
    obj.meta_mut().resource_version = revision.to_string();
    obj.set_type_meta();
    Ok(obj)
}

/// What is stored: the object without its resourceVersion (the store's
/// revision is the truth).
pub(crate) fn encode<R: Resource>(obj: &R) -> ApiResult<Vec<u8>> {
    let mut copy = obj.clone();
    copy.meta_mut().resource_version.clear();
    let bytes = copy.encode_to_vec();
    if bytes.len() > MAX_OBJECT_BYTES {
        return Err(ApiError::too_large(format!(
            "{} {:?} is too large: {} bytes, the limit is {MAX_OBJECT_BYTES} bytes",
            R::KIND,
            obj.name(),
            bytes.len()
        )));
    }
    Ok(bytes)
}

/// Kind of a store key, if it holds an object.
pub(crate) fn kind_of_key(key: &str) -> Option<Kind> {
    Kind::ALL
        .into_iter()
        .find(|k| key.starts_with(k.key_prefix()))
}

/// An object of a runtime kind from its stored bytes.
pub(crate) fn decode_object(
    kind: Kind,
    bytes: &[u8],
    revision: Revision,
    key: &str,
) -> Option<Object> {
    with_resource!(kind, R => decode_at::<R>(bytes, revision, key).ok().map(Resource::into_object))
}
