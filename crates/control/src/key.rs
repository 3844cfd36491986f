//! API keys: `sy_<env>_<public id>_<secret>_<checksum>`.
//!
//! - `env` names the deployment kind (`live`, `test`, `dev`: 1 to 8 lowercase
//!   letters), so a key pasted into the wrong place says where it belongs;
//! - the public id (12 base62 characters) is the lookup handle and is shown in
//!   listings; it stays the same when the key is rotated;
//! - the secret is 32 base62 characters from the operating system's random
//!   source (190 bits);
//! - the checksum is CRC-32 of everything before it, in 6 base62 characters:
//!   a typo, or a secret scanner that finds the key in a repository, is told
//!   without asking any server whether this is one of our keys.
//!
//! A database stores the public id and `HMAC-SHA-256(pepper, key)`, never the
//! key: the pepper lives in the environment, not beside the data, so a dump of
//! the tables holds nothing that authenticates.

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Every key starts with this.
pub const PREFIX: &str = "sy";
/// Characters of the public id.
pub const PUBLIC_ID_LEN: usize = 12;
/// Characters of the secret.
pub const SECRET_LEN: usize = 32;
/// Characters of the checksum.
pub const CHECKSUM_LEN: usize = 6;
/// The fewest bytes a pepper may have.
pub const MIN_PEPPER_BYTES: usize = 32;

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// Why a string is not a key (said before any lookup).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Not of the form `sy_<env>_<public id>_<secret>_<checksum>`.
    #[error("not a Switchyard API key (expected sy_<env>_<id>_<secret>_<checksum>)")]
    Malformed,
    /// The form is right but the checksum is not: a typo, or a made-up key.
    #[error("the API key's checksum does not match (a typo?)")]
    Checksum,
}

/// Why a pepper was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the key pepper must have at least {MIN_PEPPER_BYTES} bytes")]
pub struct PepperTooShort;

/// The server-side secret keyed hashes are made with (from the environment,
/// never stored with the data). Printed as `***`.
#[derive(Clone)]
pub struct Pepper(Vec<u8>);

impl Pepper {
    /// A pepper of at least [`MIN_PEPPER_BYTES`] bytes.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, PepperTooShort> {
        let bytes = bytes.into();
        if bytes.len() < MIN_PEPPER_BYTES {
            return Err(PepperTooShort);
        }
        Ok(Pepper(bytes))
    }

    /// `HMAC-SHA-256(pepper, key)`: what is stored of a key.
    pub fn hash(&self, key: &str) -> [u8; 32] {
        self.mac(key).finalize().into_bytes().into()
    }

    /// Whether `key` hashes to `stored`, comparing in constant time.
    pub fn verify(&self, key: &str, stored: &[u8]) -> bool {
        self.mac(key).verify_slice(stored).is_ok()
    }

    fn mac(&self, key: &str) -> Hmac<Sha256> {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(key.as_bytes());
        mac
    }
}

impl std::fmt::Debug for Pepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pepper(***)")
    }
}

/// A key just made: the secret to show once, and what to store.
pub struct NewKey {
    /// The whole key, for the client's eyes only (never stored, never logged).
    pub key: String,
    /// Its public id.
    pub public_id: String,
    /// `HMAC-SHA-256(pepper, key)`.
    pub hash: [u8; 32],
}

impl std::fmt::Debug for NewKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NewKey")
            .field("key", &"***")
            .field("public_id", &self.public_id)
            .finish_non_exhaustive()
    }
}

/// The parts of a well-formed key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// The deployment kind.
    pub env: &'a str,
    /// The lookup handle.
    pub public_id: &'a str,
}

/// Whether `env` may name a deployment kind.
pub fn valid_env(env: &str) -> bool {
    (1..=8).contains(&env.len()) && env.bytes().all(|b| b.is_ascii_lowercase())
}

/// A new key for deployment kind `env` (see [`valid_env`]) with a new public id.
pub fn generate(env: &str, pepper: &Pepper) -> Result<NewKey, KeyError> {
    let public_id = random_base62(PUBLIC_ID_LEN);
    with_public_id(env, &public_id, pepper)
}

/// A new secret for an existing public id (rotation keeps the id).
pub fn with_public_id(env: &str, public_id: &str, pepper: &Pepper) -> Result<NewKey, KeyError> {
    if !valid_env(env) || !is_base62(public_id, PUBLIC_ID_LEN) {
        return Err(KeyError::Malformed);
    }
    let body = format!("{PREFIX}_{env}_{public_id}_{}", random_base62(SECRET_LEN));
    let key = format!("{body}_{}", checksum(&body));
    Ok(NewKey {
        hash: pepper.hash(&key),
        public_id: public_id.to_owned(),
        key,
    })
}

/// Checks a key's form and checksum, without any lookup.
pub fn parse(key: &str) -> Result<Parsed<'_>, KeyError> {
    let mut parts = key.split('_');
    let (Some(prefix), Some(env), Some(public_id), Some(secret), Some(sum), None) = (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) else {
        return Err(KeyError::Malformed);
    };
    if prefix != PREFIX
        || !valid_env(env)
        || !is_base62(public_id, PUBLIC_ID_LEN)
        || !is_base62(secret, SECRET_LEN)
        || !is_base62(sum, CHECKSUM_LEN)
    {
        return Err(KeyError::Malformed);
    }
    let body = &key[..key.len() - CHECKSUM_LEN - 1];
    if checksum(body) != sum {
        return Err(KeyError::Checksum);
    }
    Ok(Parsed { env, public_id })
}

fn is_base62(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_alphanumeric())
}

/// CRC-32 (IEEE) of `body` in [`CHECKSUM_LEN`] base62 characters.
fn checksum(body: &str) -> String {
    let mut crc: u32 = !0;
    for &b in body.as_bytes() {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    let mut n = u64::from(!crc);
    let mut out = [b'0'; CHECKSUM_LEN];
    for c in out.iter_mut().rev() {
        *c = BASE62[(n % 62) as usize];
        n /= 62;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `len` base62 characters from the operating system's random source, each
/// uniform (bytes of 248 and above are drawn again: 248 = 4 × 62).
fn random_base62(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut buf = [0u8; 64];
    while out.len() < len {
        getrandom::fill(&mut buf).expect("the operating system's random source");
        for &b in &buf {
            if b < 248 && out.len() < len {
                out.push(BASE62[usize::from(b % 62)] as char);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pepper() -> Pepper {
        Pepper::new(*b"0123456789abcdef0123456789abcdef").unwrap()
    }

    #[test]
    fn a_new_key_parses_and_only_its_hash_is_kept() {
        let p = pepper();
        let k = generate("live", &p).unwrap();
        assert_eq!(
            k.key.len(),
            PREFIX.len() + "live".len() + PUBLIC_ID_LEN + SECRET_LEN + CHECKSUM_LEN + 4
        );
        let parsed = parse(&k.key).unwrap();
        assert_eq!(parsed.env, "live");
        assert_eq!(parsed.public_id, k.public_id);
        assert!(p.verify(&k.key, &k.hash));
        assert!(!format!("{k:?}").contains(&k.key[k.key.len() - 20..]));
        // Another pepper does not verify it: the hash alone authenticates nothing.
        let other = Pepper::new(vec![7u8; 32]).unwrap();
        assert!(!other.verify(&k.key, &k.hash));
        assert_ne!(other.hash(&k.key), k.hash);
    }

    #[test]
    fn every_single_character_typo_is_caught_before_any_lookup() {
        let k = generate("test", &pepper()).unwrap().key;
        let mut caught = 0;
        for (i, c) in k.char_indices() {
            if c == '_' {
                continue;
            }
            let typo = if c == 'a' { 'b' } else { 'a' };
            let mut bad = k.clone();
            bad.replace_range(i..i + 1, &typo.to_string());
            match parse(&bad) {
                Err(KeyError::Checksum | KeyError::Malformed) => caught += 1,
                Ok(_) => panic!("{bad} passed"),
            }
        }
        assert_eq!(caught, k.len() - 4);
    }

    #[test]
    fn rotation_keeps_the_public_id_and_changes_the_secret() {
        let p = pepper();
        let first = generate("live", &p).unwrap();
        let second = with_public_id("live", &first.public_id, &p).unwrap();
        assert_eq!(parse(&second.key).unwrap().public_id, first.public_id);
        assert_ne!(first.key, second.key);
        assert!(!p.verify(&first.key, &second.hash));
    }

    #[test]
    fn malformed_keys_and_weak_peppers_are_refused() {
        let good = generate("dev", &pepper()).unwrap().key;
        for bad in [
            "",
            "sk-sy-local-dev",
            &good.replacen("sy_", "xy_", 1),
            &format!("{good}_x"),
            &good[..good.len() - 1],
            &good.replacen("dev", "DEV", 1),
            &good.replacen("dev", "toolongenv", 1),
        ] {
            assert_eq!(parse(bad), Err(KeyError::Malformed), "{bad}");
        }
        assert_eq!(
            with_public_id("live", "short", &pepper()).unwrap_err(),
            KeyError::Malformed
        );
        assert!(Pepper::new(vec![1u8; 31]).is_err());
        assert_eq!(format!("{:?}", pepper()), "Pepper(***)");
    }

    #[test]
    fn keys_are_unique_and_their_characters_spread() {
        let p = pepper();
        let keys: std::collections::HashSet<String> = (0..2000)
            .map(|_| generate("live", &p).unwrap().key)
            .collect();
        assert_eq!(keys.len(), 2000);
        // Each of the 62 characters turns up in 2,000 secrets (64,000 draws).
        let seen: std::collections::HashSet<char> = keys
            .iter()
            .flat_map(|k| k.split('_').nth(3).unwrap().chars().collect::<Vec<_>>())
            .collect();
        assert_eq!(seen.len(), 62);
    }

    #[test]
    fn the_checksum_is_crc32_in_base62() {
        // CRC-32 of "123456789" is 0xCBF43926 = 3,421,780,262.
        let n: u64 = 3_421_780_262;
        let mut want = String::new();
        let mut m = n;
        for _ in 0..CHECKSUM_LEN {
            want.insert(0, BASE62[(m % 62) as usize] as char);
            m /= 62;
        }
        assert_eq!(checksum("123456789"), want);
    }
}
