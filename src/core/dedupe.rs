//! Remembers recent `event_id`s (as 64-bit keyed hashes) to classify re-sent events as duplicates.
//! Pure. Two generations rotate every horizon and lookups check both, so an id is remembered for
//! at least one horizon and at most two. Another memory's sets can be taken over whole (a warm
//! standby's, [`Dedupe::absorb`]): they join the current generation without being copied (so
//! their ids may stay up to two horizons longer than in the memory they came from), and are
//! folded into its own sets in bounded steps ([`Dedupe::merge_step`]).

use hashbrown::HashSet;

use super::hash::IdentityBuild;

/// Two-generation set of event-id hashes. An id is remembered for at least `horizon` after it was
/// first seen: generations rotate every `horizon`, and lookups check both.
pub struct Dedupe {
    current: HashSet<u64, IdentityBuild>,
    previous: HashSet<u64, IdentityBuild>,
    /// Sets taken over ([`Dedupe::absorb`]), part of the current generation (retired with it).
    absorbed: Vec<HashSet<u64, IdentityBuild>>,
    /// Absorbed sets of the previous generation.
    absorbed_previous: Vec<HashSet<u64, IdentityBuild>>,
    generation_started_ms: Option<i64>,
    horizon_ms: i64,
    max_entries: usize,
    early_rotations: u64,
}

impl Dedupe {
    pub fn new(horizon_ms: i64, max_entries: usize) -> Self {
        Dedupe {
            current: HashSet::with_hasher(IdentityBuild::default()),
            previous: HashSet::with_hasher(IdentityBuild::default()),
            absorbed: Vec::new(),
            absorbed_previous: Vec::new(),
            generation_started_ms: None,
            horizon_ms,
            max_entries: max_entries.max(2),
            early_rotations: 0,
        }
    }

    /// True if `id_hash` was seen within the horizon; otherwise remembers it and returns false.
    pub fn seen_or_insert(&mut self, id_hash: u64, now_ms: i64) -> bool {
        self.rotate_if_due(now_ms);
        if self.previous.contains(&id_hash) || self.absorbed_or_previous().any(|s| s.contains(&id_hash)) {
            return true;
        }
        !self.current.insert(id_hash)
    }

    /// Looks `id_hash` up without remembering it, so that a burst's cache misses overlap in
    /// one short loop ahead of [`Dedupe::seen_or_insert`]. Changes nothing.
    pub fn touch(&self, id_hash: u64) {
        std::hint::black_box(self.previous.contains(&id_hash) | self.current.contains(&id_hash));
    }

    fn absorbed_or_previous(&self) -> impl Iterator<Item = &HashSet<u64, IdentityBuild>> {
        self.absorbed.iter().chain(&self.absorbed_previous)
    }

    /// Takes over every id `other` remembers, in O(1): its sets join this memory's current
    /// generation as they are (a warm standby hands over a partition's ids this way) and retire
    /// with it, so they are remembered for at least one more horizon (and at most two more).
    /// [`Dedupe::merge_step`] folds them into this memory's own sets, so lookups stop probing
    /// them.
    pub fn absorb(&mut self, other: Dedupe) {
        let sets = [other.current, other.previous].into_iter().chain(other.absorbed).chain(other.absorbed_previous);
        self.absorbed.extend(sets.filter(|s| !s.is_empty()));
    }

    /// Moves up to `budget` absorbed ids into this memory's own sets, each into the generation
    /// it was absorbed into (timer work). Returns how many it moved.
    pub fn merge_step(&mut self, budget: usize) -> usize {
        let mut moved = 0;
        for (sets, into) in [(&mut self.absorbed, &mut self.current), (&mut self.absorbed_previous, &mut self.previous)]
        {
            while moved < budget {
                let Some(set) = sets.last_mut() else { break };
                let before = moved;
                into.extend(set.extract_if(|_| true).take(budget - moved).inspect(|_| moved += 1));
                if set.is_empty() || moved == before {
                    sets.pop();
                }
            }
        }
        moved
    }

    fn rotate_if_due(&mut self, now_ms: i64) {
        let started = *self.generation_started_ms.get_or_insert(now_ms);
        let full = self.current.len() + self.absorbed.iter().map(HashSet::len).sum::<usize>() >= self.max_entries / 2;
        if now_ms - started >= self.horizon_ms || full {
            if full && now_ms - started < self.horizon_ms {
                self.early_rotations += 1;
            }
            self.previous = std::mem::replace(&mut self.current, HashSet::with_hasher(IdentityBuild::default()));
            self.absorbed_previous = std::mem::take(&mut self.absorbed);
            self.generation_started_ms = Some(now_ms);
        }
    }

    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len() + self.absorbed_or_previous().map(HashSet::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Times a generation rotated early because `max_entries` was reached (the horizon shrank).
    pub fn early_rotations(&self) -> u64 {
        self.early_rotations
    }

    /// Approximate heap bytes: 8-byte slots plus one control byte each.
    pub fn heap_bytes(&self) -> usize {
        let absorbed: usize = self.absorbed_or_previous().map(HashSet::capacity).sum();
        (self.current.capacity() + self.previous.capacity() + absorbed) * 9
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_a_duplicate_within_the_horizon_and_fresh_after_two_generations() {
        let mut d = Dedupe::new(1000, 1_000_000);
        assert!(!d.seen_or_insert(7, 0));
        assert!(d.seen_or_insert(7, 500));
        assert!(d.seen_or_insert(7, 1500)); // rotated once: still in `previous`
        assert!(d.seen_or_insert(7, 2400));
        assert!(!d.seen_or_insert(7, 2600)); // rotated twice: forgotten, remembered again
        assert!(d.seen_or_insert(7, 2601));
    }

    #[test]
    fn absorbed_ids_are_duplicates_and_retire_with_the_current_generation() {
        let mut standby = Dedupe::new(1000, 1_000_000);
        assert!(!standby.seen_or_insert(1, 0));
        assert!(!standby.seen_or_insert(2, 1200)); // 1 moves to `previous`
        let mut d = Dedupe::new(1000, 1_000_000);
        assert!(!d.seen_or_insert(3, 5000));
        d.absorb(standby);
        assert_eq!(d.len(), 3);
        assert!(d.seen_or_insert(1, 5100) && d.seen_or_insert(2, 5100) && d.seen_or_insert(3, 5100));
        assert!(d.seen_or_insert(1, 6100), "one rotation later: still remembered");
        assert!(!d.seen_or_insert(2, 7100), "two rotations later: forgotten");
        assert_eq!(d.len(), 1, "only the id remembered again");
    }

    #[test]
    fn absorbed_ids_fold_into_their_generation_in_bounded_steps() {
        let mut standby = Dedupe::new(1000, 1_000_000);
        (0..10).for_each(|i| assert!(!standby.seen_or_insert(i, 0)));
        (10..15).for_each(|i| assert!(!standby.seen_or_insert(i, 1500)));
        let mut d = Dedupe::new(1000, 1_000_000);
        d.seen_or_insert(100, 2000);
        d.absorb(standby);
        assert_eq!(d.merge_step(4), 4);
        assert_eq!(d.len(), 16);
        assert_eq!(d.merge_step(100), 11);
        assert!(d.absorbed.is_empty() && d.absorbed_previous.is_empty());
        assert_eq!((d.current.len(), d.len()), (16, 16));
        assert!((0..15).all(|i| d.seen_or_insert(i, 2100)));
        assert_eq!(d.merge_step(100), 0);
    }

    #[test]
    fn a_full_generation_rotates_early_and_says_so() {
        let mut d = Dedupe::new(1_000_000, 10);
        for i in 0..20 {
            assert!(!d.seen_or_insert(i, 0));
        }
        assert!(d.early_rotations() >= 2);
        assert!(d.len() <= 10);
    }
}
