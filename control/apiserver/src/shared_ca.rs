//! The cluster's CAs shared by every server on one store, as k3s keeps its
//! bootstrap data: the first server stores its CA certificates and keys in
//! the store (`registry/skiff/bootstrap/ca`), encrypted (AES-256-GCM) with a
//! key derived (PBKDF2-HMAC-SHA256) from its token's secret; a server
//! started later on the same store with that token decrypts them into its
//! data dir, so every server issues and accepts the same certificates and
//! a join token's CA hash holds for all of them. A server whose token
//! cannot decrypt them refuses to start, saying why.

use std::num::NonZeroU32;
use std::path::Path;

use base64::Engine;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::rand::{SecureRandom, SystemRandom};
use serde::{Deserialize, Serialize};
use skiff_store::{Compare, Op, Store, Txn};

const KEY: &str = "registry/skiff/bootstrap/ca";
const ITERATIONS: u32 = 100_000;
/// The CA files of `<data-dir>/tls` that are shared, the key that signs
/// ServiceAccount tokens (any server must verify any server's) and the
/// keys Secrets are sealed with.
const FILES: [&str; 6] = [
    "server-ca.crt",
    "server-ca.key",
    "client-ca.crt",
    "client-ca.key",
    crate::serviceaccount::KEY_FILE,
    crate::encryption::FILE,
];

#[derive(Serialize, Deserialize)]
struct Sealed {
    salt: String,
    nonce: String,
    ciphertext: String,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn key(secret: &str, salt: &[u8]) -> LessSafeKey {
    let mut bytes = [0u8; 32];
    ring::pbkdf2::derive(
        ring::pbkdf2::PBKDF2_HMAC_SHA256,
        NonZeroU32::new(ITERATIONS).expect("non-zero"),
        salt,
        secret.as_bytes(),
        &mut bytes,
    );
    LessSafeKey::new(UnboundKey::new(&AES_256_GCM, &bytes).expect("a 32-byte key"))
}

/// Encrypts `plain` with a key from `secret`.
fn seal(secret: &str, plain: &[u8]) -> Result<Vec<u8>, String> {
    let rng = SystemRandom::new();
    let mut salt = [0u8; 16];
    let mut nonce = [0u8; NONCE_LEN];
    rng.fill(&mut salt)
        .and_then(|()| rng.fill(&mut nonce))
        .map_err(|_| "no randomness".to_string())?;
    let mut data = plain.to_vec();
    key(secret, &salt)
        .seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(KEY),
            &mut data,
        )
        .map_err(|_| "encryption failed".to_string())?;
    serde_json::to_vec(&Sealed {
        salt: b64().encode(salt),
        nonce: b64().encode(nonce),
        ciphertext: b64().encode(data),
    })
    .map_err(|e| e.to_string())
}

/// Decrypts what [`seal`] made; `Err` when the secret is another one or
/// the bytes were changed.
fn open(secret: &str, sealed: &[u8]) -> Result<Vec<u8>, String> {
    let s: Sealed = serde_json::from_slice(sealed).map_err(|e| format!("unreadable: {e}"))?;
    let salt = b64().decode(&s.salt).map_err(|e| e.to_string())?;
    let nonce: [u8; NONCE_LEN] = b64()
        .decode(&s.nonce)
        .map_err(|e| e.to_string())?
        .try_into()
        .map_err(|_| "a nonce of the wrong size".to_string())?;
    let mut data = b64().decode(&s.ciphertext).map_err(|e| e.to_string())?;
    let plain = key(secret, &salt)
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(KEY),
            &mut data,
        )
        .map_err(|_| {
            "they do not decrypt with this server's token: start it with the token of a server of that cluster (--token-file)".to_string()
        })?;
    Ok(plain.to_vec())
}

/// Makes `<data_dir>/tls` hold the cluster's CAs: the store's when it has
/// them (written over the local ones), else this server's, which it then
/// stores. Runs before the certificates are loaded.
pub async fn sync(
    store: &dyn Store,
    data_dir: &Path,
    secret: &str,
    make_local: impl Fn() -> Result<(), String>,
) -> Result<(), String> {
    let dir = data_dir.join("tls");
    loop {
        if let Some(kv) = store.get(KEY).await.map_err(|e| e.to_string())? {
            let plain = open(secret, &kv.value)
                .map_err(|e| format!("the store holds the CAs of a cluster, but {e}"))?;
            let files: Vec<String> =
                serde_json::from_slice(&plain).map_err(|e| format!("the stored CAs: {e}"))?;
            if files.len() != FILES.len() {
                return Err("the stored CAs are incomplete".into());
            }
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let mut changed = false;
            for (name, text) in FILES.iter().zip(&files) {
                let path = dir.join(name);
                if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
                    crate::pki::write_secret(&path, text)?;
                    tracing::info!("{} from the cluster's shared CAs", path.display());
                    changed = true;
                }
            }
            // Leaves of other CAs are issued again by these.
            if changed {
                for leaf in crate::pki::LEAVES {
                    for ext in ["crt", "key"] {
                        let _ = std::fs::remove_file(dir.join(format!("{leaf}.{ext}")));
                    }
                }
            }
            return Ok(());
        }
        // None stored yet: ours become the cluster's, unless another
        // server stores its own first (then the loop takes those).
        make_local()?;
        let files = FILES
            .iter()
            .map(|n| std::fs::read_to_string(dir.join(n)).map_err(|e| format!("{n}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        let sealed = seal(
            secret,
            &serde_json::to_vec(&files).map_err(|e| e.to_string())?,
        )?;
        let stored = store
            .txn(
                Txn::default()
                    .when(Compare::Absent(KEY.into()))
                    .then(Op::Put {
                        key: KEY.into(),
                        value: sealed,
                        lease: 0,
                    }),
            )
            .await
            .map_err(|e| e.to_string())?;
        if stored.succeeded {
            tracing::info!("this server's CAs are now the cluster's (stored encrypted)");
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_data_opens_with_its_secret_only_and_untouched() {
        let sealed = seal("s3cret", b"-----BEGIN PRIVATE KEY-----").unwrap();
        assert!(!String::from_utf8_lossy(&sealed).contains("PRIVATE KEY"));
        assert_eq!(
            open("s3cret", &sealed).unwrap(),
            b"-----BEGIN PRIVATE KEY-----"
        );
        assert!(open("other", &sealed).is_err());
        let mut s: Sealed = serde_json::from_slice(&sealed).unwrap();
        let mut c = b64().decode(&s.ciphertext).unwrap();
        c[0] ^= 1;
        s.ciphertext = b64().encode(c);
        let tampered = serde_json::to_vec(&s).unwrap();
        assert!(
            open("s3cret", &tampered).is_err(),
            "a changed byte is an error, never garbage"
        );
    }
}
