//! API keys: generated from the OS's random source, shown once, stored only as a SHA-256.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// Characters after `sk-`: 48 base-62 characters, about 285 bits of entropy.
const KEY_CHARS: usize = 48;
/// How much of a key lists show (`sk-` and 8 characters): enough to tell keys apart, far
/// too little to guess the rest.
const PREFIX_CHARS: usize = 11;

/// A newly made key: the secret (shown to the operator once) and what is stored.
pub struct NewKey {
    pub secret: String,
    pub hash: String,
    pub prefix: String,
}

/// A fresh random key.
pub fn generate() -> Result<NewKey, getrandom::Error> {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut secret = String::from("sk-");
    while secret.len() < 3 + KEY_CHARS {
        let mut buf = [0u8; 64];
        getrandom::fill(&mut buf)?;
        // Rejection sampling keeps every character equally likely (248 = 4 × 62).
        for b in buf {
            if b < 248 && secret.len() < 3 + KEY_CHARS {
                secret.push(ALPHABET[(b % 62) as usize] as char);
            }
        }
    }
    Ok(NewKey {
        hash: hash(&secret),
        prefix: prefix(&secret),
        secret,
    })
}

/// A fresh random id of 24 hex digits (96 bits), for the names of files and batches: no
/// two replicas or restarts can mint the same one.
pub fn random_id() -> Result<String, getrandom::Error> {
    let mut buf = [0u8; 12];
    getrandom::fill(&mut buf)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// The stored form of a key: lowercase hex SHA-256.
pub fn hash(secret: &str) -> String {
    let digest = Sha256::digest(secret.as_bytes());
    let mut s = String::with_capacity(64);
    for b in digest {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// What lists show of a key.
pub fn prefix(secret: &str) -> String {
    secret.chars().take(PREFIX_CHARS).collect()
}

/// Compares secrets (or their hashes) in time that does not depend on where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_random_hashed_and_prefixed() {
        let a = generate().unwrap();
        let b = generate().unwrap();
        assert_ne!(a.secret, b.secret);
        assert_eq!(a.secret.len(), 51);
        assert!(a.secret.starts_with("sk-"));
        assert!(a.secret[3..].bytes().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(a.hash, hash(&a.secret));
        assert_eq!(a.hash.len(), 64);
        assert!(a.secret.starts_with(&a.prefix));
        assert!(same(&a.hash, &hash(&a.secret)));
        assert!(!same(&a.hash, &b.hash));
        assert!(!same("abc", "abcd"));
    }
}
