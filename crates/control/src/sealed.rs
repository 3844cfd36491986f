//! Provider credentials at rest: AES-256-GCM under a versioned master key
//! from the environment (never stored with the data).
//!
//! Each sealed value carries the version of the master key that sealed it, a
//! random 96-bit nonce, and is bound to its row by the associated data
//! (`sy-credential:<org or ->:<provider>`), so a ciphertext copied onto
//! another org's row does not open. A keyring holds the current master key
//! (which seals) and any previous ones (which still open): rotating the
//! master key is adding a new current version, keeping the old one until
//! [`crate::credentials`] has re-sealed every row, then dropping it.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use std::collections::BTreeMap;

/// Why a master key or a sealed value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    /// A master key that is not 32 bytes in base64 or hex.
    #[error(
        "a master key must be 32 bytes, written as 64 hex digits or base64 (e.g. `openssl rand -base64 32`)"
    )]
    BadKey,
    /// The value was sealed under a master key version this keyring lacks.
    #[error("no master key of version {0} is configured")]
    UnknownVersion(i32),
    /// The value does not open: tampered, moved to another row, or the wrong key.
    #[error("a sealed value does not open (tampered, moved, or sealed under another key)")]
    Open,
}

/// One value sealed under one master key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sealed {
    /// The master key's version.
    pub version: i32,
    /// The nonce (12 bytes).
    pub nonce: Vec<u8>,
    /// Ciphertext and tag.
    pub ciphertext: Vec<u8>,
}

/// The master keys: the current one seals, every one opens.
#[derive(Clone)]
pub struct Keyring {
    current: i32,
    keys: BTreeMap<i32, Aes256Gcm>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyring")
            .field("current", &self.current)
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A master key from its text: 64 hex digits, or base64 of 32 bytes.
pub fn parse_key(text: &str) -> Result<[u8; 32], SealError> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        (0..32)
            .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16))
            .collect::<Result<Vec<u8>, _>>()
            .map_err(|_| SealError::BadKey)?
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| SealError::BadKey)?
    };
    bytes.try_into().map_err(|_| SealError::BadKey)
}

/// The keyring a `[credentials]` section describes.
pub fn keyring_of(config: &sy_config::CredentialsConfig) -> Result<Keyring, SealError> {
    let previous = config
        .previous
        .iter()
        .map(|(v, k)| Ok((*v, parse_key(k.expose())?)))
        .collect::<Result<Vec<_>, SealError>>()?;
    Ok(Keyring::new(
        (config.current.0, parse_key(config.current.1.expose())?),
        &previous,
    ))
}

/// What a sealed value is bound to: its org (none: global) and provider.
pub fn binding(org_id: Option<uuid::Uuid>, provider: &str) -> String {
    match org_id {
        Some(org) => format!("sy-credential:{org}:{provider}"),
        None => format!("sy-credential:-:{provider}"),
    }
}

impl Keyring {
    /// A keyring sealing with `current` (its version and key) and opening
    /// with it and every `previous` one.
    pub fn new(current: (i32, [u8; 32]), previous: &[(i32, [u8; 32])]) -> Self {
        let mut keys = BTreeMap::new();
        for (v, k) in previous.iter().chain([&current]) {
            keys.insert(*v, Aes256Gcm::new(&(*k).into()));
        }
        Keyring {
            current: current.0,
            keys,
        }
    }

    /// The version new values are sealed under.
    pub fn current_version(&self) -> i32 {
        self.current
    }

    /// Seals `plaintext`, bound to `aad`.
    pub fn seal(&self, aad: &str, plaintext: &[u8]) -> Result<Sealed, SealError> {
        let cipher = self
            .keys
            .get(&self.current)
            .ok_or(SealError::UnknownVersion(self.current))?;
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|_| SealError::Open)?;
        let ciphertext = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)?;
        Ok(Sealed {
            version: self.current,
            nonce: nonce.to_vec(),
            ciphertext,
        })
    }

    /// Opens `sealed`, which must be bound to `aad`.
    pub fn open(&self, aad: &str, sealed: &Sealed) -> Result<Vec<u8>, SealError> {
        let cipher = self
            .keys
            .get(&sealed.version)
            .ok_or(SealError::UnknownVersion(sealed.version))?;
        if sealed.nonce.len() != 12 {
            return Err(SealError::Open);
        }
        cipher
            .decrypt(
                Nonce::from_slice(&sealed.nonce),
                Payload {
                    msg: &sealed.ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_value_opens_only_with_its_key_and_its_binding() {
        let v1 = Keyring::new((1, [1u8; 32]), &[]);
        let sealed = v1.seal("sy-credential:-:openai", b"sk-live-123").unwrap();
        assert_eq!(sealed.version, 1);
        assert_eq!(sealed.nonce.len(), 12);
        assert!(!sealed.ciphertext.windows(11).any(|w| w == b"sk-live-123"));
        assert_eq!(
            v1.open("sy-credential:-:openai", &sealed).unwrap(),
            b"sk-live-123"
        );
        // Another row's binding, a flipped bit, another key: refused.
        assert_eq!(
            v1.open("sy-credential:-:anthropic", &sealed),
            Err(SealError::Open)
        );
        let mut bad = sealed.clone();
        bad.ciphertext[0] ^= 1;
        assert_eq!(
            v1.open("sy-credential:-:openai", &bad),
            Err(SealError::Open)
        );
        let other = Keyring::new((1, [2u8; 32]), &[]);
        assert_eq!(
            other.open("sy-credential:-:openai", &sealed),
            Err(SealError::Open)
        );
        // Two seals of one value differ (fresh nonces).
        assert_ne!(
            v1.seal("a", b"x").unwrap().nonce,
            v1.seal("a", b"x").unwrap().nonce
        );
    }

    #[test]
    fn a_rotated_keyring_opens_both_versions_and_seals_with_the_new_one() {
        let v1 = Keyring::new((1, [1u8; 32]), &[]);
        let old = v1.seal("b", b"secret").unwrap();
        let v2 = Keyring::new((2, [9u8; 32]), &[(1, [1u8; 32])]);
        assert_eq!(v2.open("b", &old).unwrap(), b"secret");
        let new = v2.seal("b", b"secret").unwrap();
        assert_eq!(new.version, 2);
        assert_eq!(v1.open("b", &new), Err(SealError::UnknownVersion(2)));
    }

    #[test]
    fn master_keys_parse_from_hex_or_base64_of_32_bytes() {
        let hex = "00".repeat(31) + "ff";
        assert_eq!(parse_key(&hex).unwrap()[31], 0xff);
        let b64 = base64::engine::general_purpose::STANDARD.encode([7u8; 32]);
        assert_eq!(parse_key(&format!(" {b64}\n")).unwrap(), [7u8; 32]);
        assert_eq!(parse_key("short"), Err(SealError::BadKey));
        let b64_16 = base64::engine::general_purpose::STANDARD.encode([7u8; 16]);
        assert_eq!(parse_key(&b64_16), Err(SealError::BadKey));
    }
}
