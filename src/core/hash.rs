//! Stable keyed hashing of identifiers (account ids, event ids) to 64-bit keys, and the identity
//! hasher used for maps whose keys are already such hashes. Pure.

use std::hash::{BuildHasherDefault, Hasher};

use xxhash_rust::xxh3::xxh3_64_with_seed;

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
