//! Secrets encrypted at rest, as kube-apiserver's `aesgcm` provider does
//! it: a store wrapper that seals the values of Secret keys on their way
//! in (AES-256-GCM, a random nonce each, the key's path as associated data
//! so a value moved to another key does not open) and opens them on their
//! way out, so neither the embedded store's file nor etcd ever holds one in
//! plain text, and nothing above the store knows.
//!
//! Keys are in `<data-dir>/tls/encryption-keys` (0600): one `name:base64`
//! line each, 32 bytes; the first seals, every one opens. Stored values
//! are `k8s:enc:aesgcm:v1:<name>:<nonce><ciphertext>`. A value without the
//! prefix (written before encryption) is read as it is; a sealed one that
//! does not open — tampered with, or sealed under a key this server lacks —
//! is an error, never garbage.

use std::path::Path;
use std::sync::Arc;

use base64::Engine;
use futures::StreamExt;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use skiff_api::Kind;
use skiff_store::{
    KeyValue, LeaseId, ListPage, ListResult, Op, Result, Revision, Store, StoreError, Txn,
    TxnResult, WatchStream,
};

pub const FILE: &str = "encryption-keys";
const PREFIX: &str = "k8s:enc:aesgcm:v1:";

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// Whether values under this store key are sealed.
pub fn sealed(key: &str) -> bool {
    key.starts_with(Kind::Secret.key_prefix())
}

pub struct Keys {
    /// (name, key); the first seals.
    keys: Vec<(String, LessSafeKey)>,
}

impl Keys {
    /// Reads `name:base64` lines (blank lines and `#` comments skipped).
    pub fn parse(text: &str) -> std::result::Result<Keys, String> {
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (name, secret) = line
                .split_once(':')
                .ok_or_else(|| format!("line {}: expected name:base64-key", i + 1))?;
            if name.is_empty() || name.contains(':') {
                return Err(format!("line {}: a key needs a name without ':'", i + 1));
            }
            let bytes = b64()
                .decode(secret.trim())
                .map_err(|_| format!("line {}: the key is not base64", i + 1))?;
            let unbound = UnboundKey::new(&AES_256_GCM, &bytes)
                .map_err(|_| format!("line {}: the key must be 32 bytes", i + 1))?;
            keys.push((name.to_string(), LessSafeKey::new(unbound)));
        }
        if keys.is_empty() {
            return Err("no keys".into());
        }
        Ok(Keys { keys })
    }

    /// Loads `<dir>/encryption-keys`, making one key when the file is missing.
    pub fn load_or_create(dir: &Path) -> std::result::Result<Keys, String> {
        ensure_file(dir)?;
        let path = dir.join(FILE);
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        Keys::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    pub fn seal(&self, key: &str, plain: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let (name, k) = &self.keys[0];
        let mut nonce = [0u8; 12];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| "no randomness for a nonce".to_string())?;
        let mut data = plain.to_vec();
        k.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(key.as_bytes()),
            &mut data,
        )
        .map_err(|_| "sealing failed".to_string())?;
        let mut out = format!("{PREFIX}{name}:").into_bytes();
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&data);
        Ok(out)
    }

    pub fn open(&self, key: &str, stored: &[u8]) -> std::result::Result<Vec<u8>, String> {
        let Some(rest) = stored.strip_prefix(PREFIX.as_bytes()) else {
            return Ok(stored.to_vec());
        };
        let colon = rest
            .iter()
            .position(|b| *b == b':')
            .ok_or("a sealed value without its key's name")?;
        let name =
            std::str::from_utf8(&rest[..colon]).map_err(|_| "a key name that is not text")?;
        let body = &rest[colon + 1..];
        let (_, k) =
            self.keys.iter().find(|(n, _)| n == name).ok_or_else(|| {
                format!("sealed under key {name:?}, which this server does not hold")
            })?;
        if body.len() < 12 + 16 {
            return Err("a sealed value too short to hold its nonce and tag".into());
        }
        let (nonce, sealed) = body.split_at(12);
        let nonce = Nonce::try_assume_unique_for_key(nonce).map_err(|_| "a bad nonce")?;
        let mut data = sealed.to_vec();
        let plain = k
            .open_in_place(nonce, Aad::from(key.as_bytes()), &mut data)
            .map_err(|_| {
                "it does not open: tampered with, or moved from another key".to_string()
            })?;
        Ok(plain.to_vec())
    }
}

/// Makes `<dir>/encryption-keys` (one random key) when it is missing.
pub fn ensure_file(dir: &Path) -> std::result::Result<(), String> {
    let path = dir.join(FILE);
    if path.exists() {
        return Ok(());
    }
    let mut key = [0u8; 32];
    SystemRandom::new()
        .fill(&mut key)
        .map_err(|_| "no randomness for an encryption key".to_string())?;
    let name = format!("key{}", time::OffsetDateTime::now_utc().unix_timestamp());
    crate::pki::write_secret(
        &path,
        &format!(
            "# Secrets are sealed with the first key; every key opens.\n{name}:{}\n",
            b64().encode(key)
        ),
    )
}

/// A store whose Secret values are sealed at rest.
pub struct EncryptedStore {
    inner: Arc<dyn Store>,
    keys: Arc<Keys>,
}

impl EncryptedStore {
    pub fn new(inner: Arc<dyn Store>, keys: Keys) -> EncryptedStore {
        EncryptedStore {
            inner,
            keys: Arc::new(keys),
        }
    }
}

fn unreadable(key: &str, why: String) -> StoreError {
    StoreError::Corrupt(format!(
        "the stored value of {key:?} cannot be decrypted: {why}"
    ))
}

fn open_kv(keys: &Keys, mut kv: KeyValue) -> Result<KeyValue> {
    if sealed(&kv.key) {
        kv.value = keys
            .open(&kv.key, &kv.value)
            .map_err(|e| unreadable(&kv.key, e))?;
    }
    Ok(kv)
}

#[async_trait::async_trait]
impl Store for EncryptedStore {
    async fn get(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner
            .get(key)
            .await?
            .map(|kv| open_kv(&self.keys, kv))
            .transpose()
    }

    async fn get_relaxed(&self, key: &str) -> Result<Option<KeyValue>> {
        self.inner
            .get_relaxed(key)
            .await?
            .map(|kv| open_kv(&self.keys, kv))
            .transpose()
    }

    async fn list(&self, prefix: &str) -> Result<ListResult> {
        let mut l = self.inner.list(prefix).await?;
        l.kvs = l
            .kvs
            .into_iter()
            .map(|kv| open_kv(&self.keys, kv))
            .collect::<Result<_>>()?;
        Ok(l)
    }

    async fn list_page(
        &self,
        prefix: &str,
        start: &str,
        limit: usize,
        revision: Revision,
    ) -> Result<ListPage> {
        let mut p = self.inner.list_page(prefix, start, limit, revision).await?;
        p.kvs = p
            .kvs
            .into_iter()
            .map(|kv| open_kv(&self.keys, kv))
            .collect::<Result<_>>()?;
        Ok(p)
    }

    async fn txn(&self, mut txn: Txn) -> Result<TxnResult> {
        for op in &mut txn.ops {
            if let Op::Put { key, value, .. } = op
                && sealed(key)
            {
                *value = self
                    .keys
                    .seal(key, value)
                    .map_err(|e| StoreError::Backend(format!("sealing {key:?}: {e}")))?;
            }
        }
        let mut r = self.inner.txn(txn).await?;
        r.current = r
            .current
            .into_iter()
            .map(|kv| kv.map(|kv| open_kv(&self.keys, kv)).transpose())
            .collect::<Result<_>>()?;
        Ok(r)
    }

    async fn watch(&self, prefix: &str, after: Revision) -> Result<WatchStream> {
        let keys = self.keys.clone();
        let events = self.inner.watch(prefix, after).await?;
        Ok(Box::pin(events.map(move |ev| {
            let mut ev = ev?;
            if sealed(&ev.key) {
                let key = ev.key.clone();
                if !ev.value.is_empty() {
                    ev.value = keys
                        .open(&key, &ev.value)
                        .map_err(|e| unreadable(&key, e))?;
                }
                if let Some(prev) = ev.prev_value.take() {
                    ev.prev_value = Some(keys.open(&key, &prev).map_err(|e| unreadable(&key, e))?);
                }
            }
            Ok(ev)
        })))
    }

    async fn revision(&self) -> Result<Revision> {
        self.inner.revision().await
    }

    async fn compact(&self, revision: Revision) -> Result<()> {
        self.inner.compact(revision).await
    }

    async fn lease_grant(&self, ttl_seconds: i64) -> Result<LeaseId> {
        self.inner.lease_grant(ttl_seconds).await
    }

    async fn lease_keep_alive(&self, id: LeaseId) -> Result<i64> {
        self.inner.lease_keep_alive(id).await
    }

    async fn lease_revoke(&self, id: LeaseId) -> Result<()> {
        self.inner.lease_revoke(id).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }

    fn fault(&self) -> Option<String> {
        self.inner.fault()
    }

    fn errors(&self) -> u64 {
        self.inner.errors()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Keys {
        Keys::parse(text).unwrap()
    }

    #[test]
    fn sealed_values_open_only_where_they_were_sealed() {
        let k1 = format!("one:{}", b64().encode([1u8; 32]));
        let k2 = format!("two:{}", b64().encode([2u8; 32]));
        let a = keys(&k1);
        let key = "core/secrets/default/db";
        let sealed = a.seal(key, b"hunter2").unwrap();
        assert!(sealed.starts_with(b"k8s:enc:aesgcm:v1:one:"));
        assert!(!sealed.windows(7).any(|w| w == b"hunter2"));
        assert_eq!(a.open(key, &sealed).unwrap(), b"hunter2");
        // Another path (a value moved between keys) does not open.
        assert!(a.open("core/secrets/default/other", &sealed).is_err());
        // A flipped byte does not open.
        let mut bad = sealed.clone();
        let last = bad.len() - 1;
        bad[last] ^= 1;
        assert!(a.open(key, &bad).unwrap_err().contains("does not open"));
        // Rotation: a new first key seals, the old one still opens.
        let b = keys(&format!("{k2}\n{k1}\n"));
        assert_eq!(b.open(key, &sealed).unwrap(), b"hunter2");
        assert!(
            b.seal(key, b"x")
                .unwrap()
                .starts_with(b"k8s:enc:aesgcm:v1:two:")
        );
        // Without the key: an error naming it.
        assert!(
            keys(&k2)
                .open(key, &sealed)
                .unwrap_err()
                .contains("\"one\"")
        );
        // Written before encryption: read as it is.
        assert_eq!(a.open(key, b"plain").unwrap(), b"plain");
        for bad in [
            "",
            "one",
            "one:notbase64!",
            &format!("one:{}", b64().encode([0u8; 5])),
        ] {
            assert!(Keys::parse(bad).is_err(), "{bad}");
        }
        assert!(super::sealed("core/secrets/a/b") && !super::sealed("core/configmaps/a/b"));
    }
}
