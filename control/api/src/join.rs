//! Join tokens in k3s' form, `K10<sha256 of the CA bundle>::<id>:<secret>`:
//! what a node is given to join, and what the server stores a hash of.

use sha2::{Digest, Sha256};

/// A parsed join token.
#[derive(Clone, PartialEq, Eq)]
pub struct JoinToken {
    /// The hex SHA-256 of the CA bundle the server serves at `/cacerts`;
    /// `None` for a short token (`<id>:<secret>`), which trusts whatever CA
    /// the server presents first (k3s allows it too, with a warning).
    pub ca_hash: Option<String>,
    pub id: String,
    pub secret: String,
}

impl std::fmt::Debug for JoinToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JoinToken")
            .field("ca_hash", &self.ca_hash)
            .field("id", &self.id)
            .field("secret", &"<hidden>")
            .finish()
    }
}

/// What a token id may hold: lowercase letters, digits and `-`.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

impl JoinToken {
    pub fn parse(text: &str) -> Result<JoinToken, String> {
        let text = text.trim();
        let bad = |why: &str| {
            format!(
                "not a join token ({why}): expected K10<CA hash>::<id>:<secret> or <id>:<secret>"
            )
        };
        let (ca_hash, rest) = match text.strip_prefix("K10") {
            Some(rest) => {
                let (hash, rest) = rest
                    .split_once("::")
                    .ok_or_else(|| bad("no `::` after the CA hash"))?;
                if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                    return Err(bad("the CA hash is not 64 hex digits"));
                }
                (Some(hash.to_ascii_lowercase()), rest)
            }
            None => (None, text),
        };
        let (id, secret) = rest
            .split_once(':')
            .ok_or_else(|| bad("no `:` between id and secret"))?;
        if !valid_id(id) {
            return Err(bad("the id holds other than a-z, 0-9 and -"));
        }
        if secret.len() < 16 || !secret.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(bad("the secret is not 16 or more letters and digits"));
        }
        Ok(JoinToken {
            ca_hash,
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The full token for a CA bundle.
    pub fn format(&self, ca_pem: &str) -> String {
        format!("K10{}::{}:{}", ca_hash(ca_pem), self.id, self.secret)
    }

    /// What the node sends as its bearer token.
    pub fn bearer(&self) -> String {
        format!("{}:{}", self.id, self.secret)
    }
}

/// The hex SHA-256 of a CA bundle, as the token carries it.
pub fn ca_hash(ca_pem: &str) -> String {
    hex(&Sha256::digest(ca_pem.as_bytes()))
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_parse_and_format() {
        let ca = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let t = JoinToken::parse("abc123:0123456789abcdefXYZ").unwrap();
        assert_eq!(t.ca_hash, None);
        assert_eq!(t.bearer(), "abc123:0123456789abcdefXYZ");
        let full = t.format(ca);
        assert!(full.starts_with("K10") && full.ends_with("::abc123:0123456789abcdefXYZ"));
        let back = JoinToken::parse(&full).unwrap();
        assert_eq!(back.ca_hash.as_deref(), Some(ca_hash(ca).as_str()));
        assert!(!format!("{back:?}").contains("0123456789abcdef"));
        assert_eq!((back.id, back.secret), (t.id, t.secret));
        for bad in [
            "",
            "nocolon",
            "K10abc::id:0123456789abcdef",
            "K10::id:0123456789abcdef",
            "Bad_Id:0123456789abcdef",
            "id:short",
            "id:0123456789abcdef!",
        ] {
            assert!(JoinToken::parse(bad).is_err(), "{bad}");
        }
    }
}
