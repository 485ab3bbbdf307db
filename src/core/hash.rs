//! The deployment's keys and what they key: the 64-bit id hashes of in-memory state (XXH3 with a
//! seed), `notice_id` (HMAC-SHA256), and the identity hasher used for maps whose keys are already
//! such hashes. Pure.

use std::hash::{BuildHasherDefault, Hasher};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use xxhash_rust::xxh3::xxh3_64_with_seed;

type HmacSha256 = Hmac<Sha256>;

/// The embedded secret of `resetguard demo` and of replays run without `--secret-file`. Public,
/// so the service refuses it (`[secret]` in the service config).
pub const DEMO_SECRET: &str = "resetguard-demo-secret-public-never-use-in-production-3f9c";

/// Keys derived from the deployment secret: the seed of the id hashes and the key of
/// `notice_id`. Both come from one secret through HMAC-SHA256 with distinct labels, so knowing
/// one reveals nothing of the other or of the secret. `Debug` shows nothing of them.
#[derive(Clone)]
pub struct Keys {
    id_seed: u64,
    /// HMAC keyed with the notice key once: each id clones it (keying costs two SHA-256 blocks).
    notice_mac: HmacSha256,
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys(redacted)")
    }
}

fn derive(secret: &[u8], label: &[u8]) -> [u8; 32] {
    // HMAC accepts keys of any length; `new_from_slice` cannot fail for it.
    let mut mac = HmacSha256::new_from_slice(secret).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
    mac.update(label);
    mac.finalize().into_bytes().into()
}

impl Keys {
    /// Derives the keys from the deployment secret.
    pub fn from_secret(secret: &[u8]) -> Keys {
        let seed = derive(secret, b"resetguard.id_seed.v1");
        let mut first = [0u8; 8];
        first.copy_from_slice(&seed[..8]);
        let notice_key = derive(secret, b"resetguard.notice_key.v2");
        let notice_mac =
            HmacSha256::new_from_slice(&notice_key).unwrap_or_else(|_| unreachable!("HMAC takes any key length"));
        Keys { id_seed: u64::from_be_bytes(first), notice_mac }
    }

    /// The demo's keys (from [`DEMO_SECRET`]).
    pub fn demo() -> Keys {
        Keys::from_secret(DEMO_SECRET.as_bytes())
    }

    /// The same notice key with another id-hash seed (tests: outcomes do not depend on the seed).
    pub fn with_id_seed(mut self, seed: u64) -> Keys {
        self.id_seed = seed;
        self
    }

    /// Seed of the in-memory id hashes.
    pub fn id_seed(&self) -> u64 {
        self.id_seed
    }

    /// Deterministic, keyed id of a notice: `rn_` + the first 128 bits of HMAC-SHA256(notice key,
    /// account, incident window start, policy version). The same inputs give the same id on every
    /// replay and restart (the mailer dedupes on it); without the deployment secret an id cannot
    /// be computed, so it cannot be used to test guesses of account ids.
    pub fn notice_id(&self, account_id: &str, incident_start_s: u32, policy_version: &str) -> String {
        let mut mac = self.notice_mac.clone();
        mac.update(b"resetguard.notice_id.v2\0");
        mac.update(account_id.as_bytes());
        mac.update(b"\0");
        mac.update(&incident_start_s.to_be_bytes());
        mac.update(b"\0");
        mac.update(policy_version.as_bytes());
        let digest = mac.finalize().into_bytes();
        format!("rn_{}", hex::encode(&digest[..16]))
    }
}

/// Hashes an identifier with the deployment's seed. Stable across processes and versions (state
/// restored from Kafka depends on it), so the algorithm (XXH3-64) must never change silently.
#[inline]
pub fn id_hash(seed: u64, id: &str) -> u64 {
    xxh3_64_with_seed(id.as_bytes(), seed)
}

/// A `Hasher` that passes a `u64` key through: the keys are already uniform hashes.
#[derive(Default, Clone, Copy)]
pub struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed through this; fold anything else defensively.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub type IdentityBuild = BuildHasherDefault<IdentityHasher>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notice_id_is_deterministic_keyed_and_depends_on_each_part() {
        let k = Keys::from_secret(b"a-deployment-secret-of-enough-length");
        let a = k.notice_id("acct", 100, "v1");
        assert_eq!(a, k.notice_id("acct", 100, "v1"));
        assert_eq!(a, Keys::from_secret(b"a-deployment-secret-of-enough-length").notice_id("acct", 100, "v1"));
        assert_eq!(a.len(), 3 + 32);
        assert!(a[3..].bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_ne!(a, k.notice_id("acct2", 100, "v1"));
        assert_ne!(a, k.notice_id("acct", 101, "v1"));
        assert_ne!(a, k.notice_id("acct", 100, "v2"));
        // Another secret, another id: without the secret, ids cannot be recomputed from guesses.
        assert_ne!(a, Keys::from_secret(b"another-deployment-secret-of-length").notice_id("acct", 100, "v1"));
        // The seed of the id hashes does not change notice ids.
        assert_eq!(a, k.clone().with_id_seed(7).notice_id("acct", 100, "v1"));
        assert_ne!(k.id_seed(), Keys::demo().id_seed());
        assert_eq!(format!("{k:?}"), "Keys(redacted)");
    }
}
