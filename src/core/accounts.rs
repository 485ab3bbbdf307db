//! Per-account window state: a compact slab of accounts indexed by a 64-bit account hash, the short
//! sliding window (a small ring of recent signals), the slow-burn window (a sliding-window counter
//! over two buckets), evidence ids, and expiry on watermark and idle time. Pure.
//!
//! Memory is the design constraint (≤ 160 bytes per tracked account at 1 million accounts): an
//! index of `u32` slot numbers (hashed by the account key, which lives in the slot) plus a dense
//! `Vec<Slot>`; signals are 8-byte entries stored inline for up to three events; evidence ids of
//! one account share a single allocation, packed (a UUID in 17 bytes, see [`super::evidence`]).

use hashbrown::HashTable;
use smallvec::SmallVec;

use super::evidence;
use super::policy::{Policy, MAX_SIGNALS};

/// Most evidence `event_id`s kept per account (and reported per decision).
pub const MAX_EVIDENCE: usize = 10;

/// One signal in the short window: 8 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    /// Event time, seconds since the Unix epoch.
    pub t: u32,
    /// Risk quantised to 1/65535.
    pub risk_q: u16,
    pub signal: u8,
    /// Breaker cell (interned source) index.
    pub cell: u8,
}

impl Entry {
    pub fn risk(&self) -> f32 {
        f32::from(self.risk_q) / 65535.0
    }
}

pub fn quantise_risk(risk: f32) -> u16 {
    (risk.clamp(0.0, 1.0) * 65535.0).round() as u16
}

/// Slow-burn window as a sliding-window counter: the sum of the current bucket plus the previous
/// bucket's sum weighted by how much of it still overlaps the window.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Slow {
    pub cur: f32,
    pub prev: f32,
    /// Bucket index (`t / length`) of `cur`.
    pub bucket: u32,
    /// Bit sets of the signal kinds seen in each bucket.
    pub kinds_cur: u32,
    pub kinds_prev: u32,
}

#[derive(Debug)]
struct Slot {
    key: u64,
    ring: SmallVec<[Entry; INLINE_ENTRIES]>,
    /// Newest `min(ring.len(), MAX_EVIDENCE)` event ids, oldest first, packed ([`evidence`]).
    ids: Option<Box<[u8]>>,
    slow: Slow,
    /// Processing time of the last update, seconds.
    touched_s: u32,
    /// Input partition of the account's last event: where its changelog record lives.
    partition: u16,
    /// Where the changelog's newest copy of the account is ([`NO_COPY`], [`LEGACY_COPY`], or
    /// the low 32 bits of its batch's number; kept for the changelog's compaction).
    copy: u32,
}

// The changelog copy's 4 bytes sit in what was padding: the slot stays 88 bytes (64-bit).
#[cfg(target_pointer_width = "64")]
const _: () = assert!(std::mem::size_of::<Slot>() == 88);

/// The changelog holds no copy of the account (yet).
pub const NO_COPY: u32 = u32::MAX;
/// No slot: [`AccountStore::state_with_copy`] looks the account up.
pub const NO_SLOT: u32 = u32::MAX;
/// The changelog's copy is a record of its own (record formats 1 and 2), not in a batch.
pub const LEGACY_COPY: u32 = 0;

/// One account's window state, borrowed from the store (for the changelog and state dumps).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AccountView<'a> {
    pub partition: u16,
    pub ring: &'a [Entry],
    /// Evidence ids of the newest entries, oldest first, packed ([`evidence`]).
    pub ids: Option<&'a [u8]>,
    pub slow: Slow,
    pub touched_s: u32,
}

const FREE: u64 = 0;

/// Signals kept in the slot itself; more spill to the heap. Three covers the typical takeover
/// (a few signals within the window) without a second allocation.
const INLINE_ENTRIES: usize = 3;

/// What the short and slow windows say after adding one event.
#[derive(Debug, Clone, PartialEq)]
pub struct Scores {
    pub short: f32,
    pub slow: f32,
    pub slow_kinds: u32,
    /// The account's changelog copy (see [`AccountStore::copy_of`]).
    pub copy: u32,
    /// Where the account's state is in the store, a hint for [`AccountStore::state_with_copy`].
    pub slot: u32,
}

/// Contribution of one signal kind to a window score (for explanations).
#[derive(Debug, Clone, PartialEq)]
pub struct Contribution {
    pub signal: u8,
    pub count: u32,
    /// Sum of `weight × risk` before the cap.
    pub sum: f32,
    /// What counted, after the cap.
    pub counted: f32,
    /// Bit set of cells (sources) that reported it, as indexes.
    pub cells: Vec<u8>,
}

/// A snapshot of an account's short window for explaining a decision.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowView {
    pub start_s: u32,
    pub end_s: u32,
    pub contributions: Vec<Contribution>,
    pub evidence: Vec<String>,
}

pub struct AccountStore {
    /// Slot numbers, hashed by their slot's `key` (already a uniform 64-bit hash, used as is). The
    /// key is not repeated here: 4-byte buckets instead of 16-byte `(u64, u32)` ones keep the table
    /// at ~10 MB instead of ~36 MB for 1 M accounts (a smaller, more cache-friendly probe), and
    /// the key comparison reads the slot that `add` reads next anyway.
    index: HashTable<u32>,
    slots: Vec<Slot>,
    free: Vec<u32>,
    sweep_cursor: usize,
    window_s: u32,
    slow_len_s: u32,
    max_events: usize,
    idle_ttl_s: u32,
    weights: [f32; MAX_SIGNALS],
    caps: [f32; MAX_SIGNALS],
    /// Reused buffer for rebuilding an account's evidence ids (no allocation per event).
    scratch: Vec<u8>,
    /// Stores taken over whole ([`AccountStore::adopt`], a warm standby's partition): their
    /// accounts are this store's too, each moved into it when next touched or by
    /// [`AccountStore::merge_step`], and a store is dropped once empty. An account is in at most
    /// one of the stores (inputs are keyed by account).
    adopted: Vec<AccountStore>,
}

impl AccountStore {
    pub fn new(policy: &Policy) -> Self {
        let mut weights = [0.0; MAX_SIGNALS];
        let mut caps = [0.0; MAX_SIGNALS];
        for (i, s) in policy.signals.iter().enumerate() {
            weights[i] = s.weight;
            caps[i] = s.cap;
        }
        AccountStore {
            index: HashTable::new(),
            slots: Vec::new(),
            free: Vec::new(),
            sweep_cursor: 0,
            window_s: policy.window.as_secs() as u32,
            slow_len_s: policy.slow.length.as_secs().max(1) as u32,
            max_events: policy.max_events_per_account,
            idle_ttl_s: policy.idle_ttl.as_secs() as u32,
            weights,
            caps,
            scratch: Vec::new(),
            adopted: Vec::new(),
        }
    }

    /// Takes over every account of `other` (built under the same policy, holding none of this
    /// store's accounts), in O(1): it becomes this store if this one is empty, else it is kept
    /// beside it and its accounts move over as they are touched and in bounded steps
    /// ([`AccountStore::merge_step`]).
    pub fn adopt(&mut self, mut other: AccountStore) {
        let nested = std::mem::take(&mut other.adopted);
        if other.is_empty() {
        } else if self.is_empty() {
            // Its accounts, under this store's settings (and only free slots in its free list:
            // `merge_step` may have shortened it).
            let slots = other.slots;
            let free = other.free.into_iter().filter(|&f| slots.get(f as usize).is_some_and(|s| s.key == FREE));
            (self.free, self.index, self.slots) = (free.collect(), other.index, slots);
            self.sweep_cursor = 0;
        } else {
            self.adopted.push(other);
        }
        nested.into_iter().for_each(|a| self.adopt(a));
    }

    /// Moves up to `budget` accounts from the adopted stores into this one (timer work: after
    /// a hand-over, lookups stop probing the adopted stores and their memory is returned within
    /// `accounts / budget` calls). A key this store already holds keeps this store's state.
    /// Returns how many slots it went through.
    pub fn merge_step(&mut self, budget: usize) -> usize {
        let mut done = 0;
        while done < budget {
            let Some(from) = self.adopted.last_mut() else { break };
            let Some(slot) = from.slots.pop() else {
                self.adopted.pop();
                continue;
            };
            done += 1;
            if slot.key == FREE {
                continue;
            }
            let at = from.slots.len();
            if let Ok(e) = from.index.find_entry(slot.key, |&j| j as usize == at) {
                e.remove();
            }
            // An adopted store never allocates (adds go to this store): its free list may name
            // popped slots meanwhile (see `adopt`).
            if self.find(slot.key).is_none() {
                let i = self.allocate(slot.key);
                self.slots[i] = slot;
            }
        }
        done
    }

    /// Moves `key`'s slot from an adopted store into this one. Returns whether it was there.
    fn pull(&mut self, key: u64) -> bool {
        for n in 0..self.adopted.len() {
            let from = &mut self.adopted[n];
            let Some(j) = from.find(key) else { continue };
            let slot = std::mem::replace(&mut from.slots[j], Slot::empty(key));
            from.free_slot(j);
            if from.is_empty() {
                self.adopted.swap_remove(n);
            }
            let i = self.allocate(key);
            self.slots[i] = slot;
            return true;
        }
        false
    }

    /// The slot of `key` in this store, moved in from an adopted one if it is there.
    fn find_or_pull(&mut self, key: u64) -> Option<usize> {
        match self.find(key) {
            None if !self.adopted.is_empty() && self.pull(key) => self.find(key),
            found => found,
        }
    }

    fn find(&self, key: u64) -> Option<usize> {
        let slots = &self.slots;
        self.index.find(key, |&i| slots[i as usize].key == key).map(|&i| i as usize)
    }

    pub fn len(&self) -> usize {
        self.index.len() + self.adopted.iter().map(AccountStore::len).sum::<usize>()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Adds one signal, from input `partition`, to the account's windows and returns its scores.
    pub fn add(&mut self, key: u64, entry: Entry, event_id: &str, now_s: u32, partition: u16) -> Scores {
        let key = if key == FREE { 1 } else { key };
        let idx = match self.find_or_pull(key) {
            Some(i) => i,
            None => self.allocate(key),
        };
        let window_s = self.window_s;
        let max_events = self.max_events;
        let slow_len = self.slow_len_s;
        let contrib = self.contribution(entry);
        let slot = &mut self.slots[idx];
        slot.touched_s = now_s;
        slot.partition = partition;

        // Short window: evict what fell out (relative to the newest event time), then push.
        let newest = slot.ring.iter().map(|e| e.t).max().unwrap_or(0).max(entry.t);
        let cutoff = newest.saturating_sub(window_s);
        // An event that arrives after newer ones and is already outside the window (possible when
        // allowed lateness exceeds the window) counts only in the slow window.
        let in_short = entry.t >= cutoff;
        let old_len = slot.ring.len();
        let old_ids = slot.ids.take();
        let mut kept_flags: SmallVec<[bool; 16]> = SmallVec::new();
        if slot.ring.iter().any(|e| e.t < cutoff) {
            kept_flags.extend(slot.ring.iter().map(|e| e.t >= cutoff));
            slot.ring.retain(|e| e.t >= cutoff);
        }
        if in_short {
            let mut drop_oldest = false;
            if slot.ring.len() >= max_events {
                slot.ring.remove(0);
                drop_oldest = true;
            }
            slot.ring.push(entry);
            rebuild_ids(&mut self.scratch, old_ids.as_deref(), old_len, &kept_flags, drop_oldest, event_id);
            slot.ids = Some(store_ids(old_ids, &self.scratch));
        } else {
            slot.ids = old_ids;
        }

        // Slow window.
        let b = entry.t / slow_len;
        let bit = 1u32 << (entry.signal as u32 % 32);
        let s = &mut slot.slow;
        if s.cur == 0.0 && s.prev == 0.0 && s.kinds_cur == 0 {
            *s = Slow { cur: contrib, prev: 0.0, bucket: b, kinds_cur: bit, kinds_prev: 0 };
        } else if b == s.bucket {
            s.cur += contrib;
            s.kinds_cur |= bit;
        } else if b == s.bucket + 1 {
            *s = Slow { cur: contrib, prev: s.cur, bucket: b, kinds_cur: bit, kinds_prev: s.kinds_cur };
        } else if b > s.bucket + 1 {
            *s = Slow { cur: contrib, prev: 0.0, bucket: b, kinds_cur: bit, kinds_prev: 0 };
        } else if b + 1 == s.bucket {
            s.prev += contrib;
            s.kinds_prev |= bit;
        }
        let into = (newest.max(s.bucket * slow_len) - s.bucket * slow_len).min(slow_len) as f32 / slow_len as f32;
        let slow = s.cur + s.prev * (1.0 - into);
        let slow_kinds = (s.kinds_cur | if s.prev > 0.0 { s.kinds_prev } else { 0 }).count_ones();

        Scores { short: self.short_score(idx), slow, slow_kinds, copy: self.slots[idx].copy, slot: idx as u32 }
    }

    fn contribution(&self, e: Entry) -> f32 {
        let i = e.signal as usize % MAX_SIGNALS;
        (self.weights[i] * e.risk()).min(self.caps[i])
    }

    fn short_score(&self, idx: usize) -> f32 {
        let mut sums = [0.0f32; MAX_SIGNALS];
        for e in &self.slots[idx].ring {
            let i = e.signal as usize % MAX_SIGNALS;
            sums[i] += self.weights[i] * e.risk();
        }
        let mut score = 0.0;
        for (i, s) in sums.iter().enumerate() {
            if *s > 0.0 {
                score += s.min(self.caps[i]);
            }
        }
        score
    }

    /// The explanation of an account's short window (allocates; called only for decisions).
    pub fn view(&self, key: u64) -> Option<WindowView> {
        let key = if key == FREE { 1 } else { key };
        let Some(i) = self.find(key) else { return self.adopted.iter().find_map(|a| a.view(key)) };
        let slot = &self.slots[i];
        let mut contributions: Vec<Contribution> = Vec::new();
        for e in &slot.ring {
            let w = self.weights[e.signal as usize % MAX_SIGNALS] * e.risk();
            match contributions.iter_mut().find(|c| c.signal == e.signal) {
                Some(c) => {
                    c.count += 1;
                    c.sum += w;
                    if !c.cells.contains(&e.cell) {
                        c.cells.push(e.cell);
                    }
                }
                None => contributions.push(Contribution {
                    signal: e.signal,
                    count: 1,
                    sum: w,
                    counted: 0.0,
                    cells: vec![e.cell],
                }),
            }
        }
        for c in &mut contributions {
            c.counted = c.sum.min(self.caps[c.signal as usize % MAX_SIGNALS]);
        }
        contributions.sort_by(|a, b| b.counted.total_cmp(&a.counted).then(a.signal.cmp(&b.signal)));
        Some(WindowView {
            start_s: slot.ring.iter().map(|e| e.t).min().unwrap_or(0),
            end_s: slot.ring.iter().map(|e| e.t).max().unwrap_or(0),
            contributions,
            evidence: slot.ids.as_deref().map(evidence::to_strings).unwrap_or_default(),
        })
    }

    /// The account's state as it is stored.
    /// Reads what [`AccountStore::add`] will read of the account (its slot and packed ids), so
    /// that a burst's cache misses overlap in one short loop instead of following each other
    /// ([`crate::core::engine::Engine::process_batch`]). Changes nothing.
    pub fn touch(&self, key: u64) {
        let key = if key == FREE { 1 } else { key };
        if let Some(i) = self.find(key) {
            let s = &self.slots[i];
            std::hint::black_box((s.ring.first().map(|e| e.t), s.ids.as_deref().and_then(|b| b.first())));
        }
    }

    pub fn get(&self, key: u64) -> Option<AccountView<'_>> {
        let key = if key == FREE { 1 } else { key };
        let Some(i) = self.find(key) else { return self.adopted.iter().find_map(|a| a.get(key)) };
        Some(self.slots[i].view())
    }

    /// Sets an account's state (restore from the changelog, whose copy is `copy`), replacing
    /// what was there. The ring is cut to the newest `max_events_per_account` entries and the
    /// ids to one per entry.
    pub fn put(&mut self, key: u64, v: AccountView<'_>, copy: u32) {
        let key = if key == FREE { 1 } else { key };
        let idx = match self.find_or_pull(key) {
            Some(i) => i,
            None => self.allocate(key),
        };
        let ring = &v.ring[v.ring.len().saturating_sub(self.max_events)..];
        let ids = v.ids.filter(|i| !i.is_empty()).map(|i| Box::from(evidence::newest(i, ring.len().min(MAX_EVIDENCE))));
        let slot = &mut self.slots[idx];
        slot.ring = SmallVec::from_slice(ring);
        slot.ids = if ring.is_empty() { None } else { ids };
        slot.slow = v.slow;
        slot.touched_s = v.touched_s;
        slot.partition = v.partition;
        slot.copy = copy;
    }

    /// Where the changelog's newest copy of the account is ([`NO_COPY`] if it is not tracked).
    pub fn copy_of(&self, key: u64) -> u32 {
        let key = if key == FREE { 1 } else { key };
        match self.find(key) {
            Some(i) => self.slots[i].copy,
            None => self.adopted.iter().map(|a| a.copy_of(key)).find(|&c| c != NO_COPY).unwrap_or(NO_COPY),
        }
    }

    /// Records where the changelog's newest copy of the account is, and returns its state
    /// (`None`: it is not tracked). `slot` is where [`Scores::slot`] last said it was
    /// ([`NO_SLOT`]: unknown); the account is looked up when that slot holds another one.
    pub fn state_with_copy(&mut self, key: u64, slot: u32, copy: u32) -> Option<AccountView<'_>> {
        let key = if key == FREE { 1 } else { key };
        let hinted = self.slots.get(slot as usize).is_some_and(|s| s.key == key).then_some(slot as usize);
        let Some(i) = hinted.or_else(|| self.find(key)) else {
            let a = self.adopted.iter_mut().find(|a| a.find(key).is_some())?;
            return a.state_with_copy(key, NO_SLOT, copy);
        };
        self.slots[i].copy = copy;
        Some(self.slots[i].view())
    }

    /// Key and changelog copy of every account whose last event came from `partition`.
    pub fn copies_of(&self, partition: u16) -> Box<dyn Iterator<Item = (u64, u32)> + '_> {
        let own = self.slots.iter().filter(move |s| s.key != FREE && s.partition == partition).map(|s| (s.key, s.copy));
        Box::new(own.chain(self.adopted.iter().flat_map(move |a| a.copies_of(partition))))
    }

    /// Renumbers the breaker cell of every entry by `cell`, in place (a store handed over from
    /// an engine that numbered its cells differently, see `Engine::adopt_partition`).
    pub fn renumber_cells(&mut self, cell: &mut dyn FnMut(u8) -> u8) {
        for slot in self.slots.iter_mut().filter(|s| s.key != FREE) {
            slot.ring.iter_mut().for_each(|e| e.cell = cell(e.cell));
        }
        self.adopted.iter_mut().for_each(|a| a.renumber_cells(cell));
    }

    /// Forgets an account. Returns whether it was tracked.
    pub fn remove(&mut self, key: u64) -> bool {
        let key = if key == FREE { 1 } else { key };
        if let Some(i) = self.find(key) {
            self.free_slot(i);
            return true;
        }
        let Some(n) = self.adopted.iter_mut().position(|a| a.remove(key)) else { return false };
        if self.adopted[n].is_empty() {
            self.adopted.swap_remove(n);
        }
        true
    }

    /// Forgets every account whose last event came from `partition`; an adopted store that
    /// holds only such accounts is dropped whole. Returns how many were forgotten.
    pub fn remove_partition(&mut self, partition: u16) -> usize {
        let of = |s: &Slot| s.key != FREE && s.partition == partition;
        let mut removed = 0;
        self.adopted.retain_mut(|a| {
            if a.adopted.is_empty() && a.slots.iter().all(|s| s.key == FREE || s.partition == partition) {
                removed += a.len();
                return false;
            }
            removed += a.remove_partition(partition);
            !a.is_empty()
        });
        let own: Vec<usize> = (0..self.slots.len()).filter(|&i| of(&self.slots[i])).collect();
        for &i in &own {
            self.free_slot(i);
        }
        removed + own.len()
    }

    /// Every tracked account's key.
    pub fn keys(&self) -> Box<dyn Iterator<Item = u64> + '_> {
        let own = self.slots.iter().filter(|s| s.key != FREE).map(|s| s.key);
        Box::new(own.chain(self.adopted.iter().flat_map(AccountStore::keys)))
    }

    fn free_slot(&mut self, i: usize) {
        let key = self.slots[i].key;
        if let Ok(e) = self.index.find_entry(key, |&j| j as usize == i) {
            e.remove();
        }
        self.slots[i] = Slot::empty(FREE);
        self.free.push(i as u32);
    }

    fn allocate(&mut self, key: u64) -> usize {
        let slot = Slot::empty(key);
        let idx = match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = slot;
                i as usize
            }
            None => {
                self.slots.push(slot);
                self.slots.len() - 1
            }
        };
        let slots = &self.slots;
        self.index.insert_unique(key, idx as u32, |&i| slots[i as usize].key);
        idx
    }

    /// Frees up to `budget` slots' worth of expired accounts, resuming where the last sweep ended.
    /// An account expires when both windows are empty relative to `watermark_s`, or when it was
    /// untouched for `idle_ttl` of processing time. Returns how many accounts were freed; with
    /// `freed`, also which (key and partition). Adopted stores are swept too, each with a
    /// share of `budget` in proportion to its accounts.
    pub fn sweep(
        &mut self,
        watermark_s: u32,
        now_s: u32,
        budget: usize,
        mut freed_keys: Option<&mut Vec<(u64, u16, u32)>>,
    ) -> usize {
        if self.adopted.is_empty() {
            return self.sweep_own(watermark_s, now_s, budget, freed_keys);
        }
        let total = self.len().max(1);
        let mut freed = 0;
        for a in &mut self.adopted {
            let share = (budget * a.len()).div_ceil(total);
            freed += a.sweep_own(watermark_s, now_s, share, freed_keys.as_deref_mut());
        }
        self.adopted.retain(|a| !a.is_empty());
        let share = (budget * self.index.len()).div_ceil(total);
        freed + self.sweep_own(watermark_s, now_s, share, freed_keys)
    }

    fn sweep_own(
        &mut self,
        watermark_s: u32,
        now_s: u32,
        budget: usize,
        mut freed_keys: Option<&mut Vec<(u64, u16, u32)>>,
    ) -> usize {
        let mut freed = 0;
        let n = self.slots.len();
        if n == 0 {
            return 0;
        }
        for _ in 0..budget.min(n) {
            if self.sweep_cursor >= n {
                self.sweep_cursor = 0;
            }
            let i = self.sweep_cursor;
            self.sweep_cursor += 1;
            let slot = &self.slots[i];
            if slot.key == FREE {
                continue;
            }
            let newest = slot.ring.iter().map(|e| e.t).max().unwrap_or(0);
            let short_empty = newest.saturating_add(self.window_s) < watermark_s;
            let slow_empty = (slot.slow.bucket.saturating_add(2)).saturating_mul(self.slow_len_s) <= watermark_s;
            let idle = now_s.saturating_sub(slot.touched_s) > self.idle_ttl_s;
            if (short_empty && slow_empty) || idle {
                if let Some(out) = freed_keys.as_deref_mut() {
                    out.push((slot.key, slot.partition, slot.copy));
                }
                self.free_slot(i);
                freed += 1;
            }
        }
        freed
    }

    /// Estimated bytes held: index table, slots, and per-account heap (rings that spilled, ids).
    /// Computed by walking the store: call it for reports, not per event.
    pub fn heap_bytes(&self) -> usize {
        // hashbrown keeps buckets = capacity × 8/7 (a power of two), 4 bytes plus a control byte each.
        let buckets = if self.index.capacity() == 0 { 0 } else { (self.index.capacity() * 8 / 7).next_power_of_two() };
        let index = buckets * (std::mem::size_of::<u32>() + 1);
        let slots = self.slots.capacity() * std::mem::size_of::<Slot>() + self.free.capacity() * 4;
        let per: usize = self
            .slots
            .iter()
            .map(|s| {
                let ring = if s.ring.spilled() { s.ring.capacity() * std::mem::size_of::<Entry>() } else { 0 };
                ring + s.ids.as_ref().map_or(0, |i| i.len())
            })
            .sum();
        index + slots + per + self.adopted.iter().map(AccountStore::heap_bytes).sum::<usize>()
    }

    pub fn slot_size() -> usize {
        std::mem::size_of::<Slot>()
    }
}

impl Slot {
    fn view(&self) -> AccountView<'_> {
        AccountView {
            partition: self.partition,
            ring: &self.ring,
            ids: self.ids.as_deref(),
            slow: self.slow,
            touched_s: self.touched_s,
        }
    }

    fn empty(key: u64) -> Slot {
        Slot { key, ring: SmallVec::new(), ids: None, slow: Slow::default(), touched_s: 0, partition: 0, copy: NO_COPY }
    }
}

/// Keeps the evidence ids aligned with the ring: writes into `out` the packed ids of surviving
/// entries (at most `MAX_EVIDENCE - 1` of them) plus the new one.
fn rebuild_ids(
    out: &mut Vec<u8>,
    old: Option<&[u8]>,
    old_len: usize,
    kept_flags: &[bool],
    drop_oldest: bool,
    new_id: &str,
) {
    out.clear();
    if let Some(old) = old {
        let ids: SmallVec<[&[u8]; MAX_EVIDENCE]> = evidence::items(old).collect();
        // ids[k] belongs to ring position old_len - ids.len() + k.
        let first_pos = old_len.saturating_sub(ids.len());
        let mut survivors: SmallVec<[&[u8]; MAX_EVIDENCE]> = SmallVec::new();
        for (k, id) in ids.iter().enumerate() {
            let pos = first_pos + k;
            if kept_flags.is_empty() || kept_flags.get(pos).copied().unwrap_or(true) {
                survivors.push(id);
            }
        }
        // `drop_oldest` removed the oldest surviving ring entry; drop its id if we hold it.
        let ring_after_evict = if kept_flags.is_empty() { old_len } else { kept_flags.iter().filter(|k| **k).count() };
        if drop_oldest && survivors.len() == ring_after_evict && !survivors.is_empty() {
            survivors.remove(0);
        }
        let skip = survivors.len().saturating_sub(MAX_EVIDENCE - 1);
        for id in &survivors[skip..] {
            out.extend_from_slice(id);
        }
    }
    evidence::push(out, new_id);
}

/// The account's new evidence ids, reusing the old allocation when the length is unchanged (the
/// steady state with fixed-length ids such as UUIDs: one id in, one out), so such an update
/// allocates nothing; otherwise one exact-size allocation.
fn store_ids(old: Option<Box<[u8]>>, new: &[u8]) -> Box<[u8]> {
    match old {
        Some(mut b) if b.len() == new.len() => {
            b.copy_from_slice(new);
            b
        }
        _ => Box::from(new),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> AccountStore {
        AccountStore::new(&Policy::default_with_version("t"))
    }

    fn sig(p: &Policy, name: &str) -> u8 {
        p.signal_index(name).unwrap()
    }

    #[test]
    fn a_slot_hint_is_used_only_while_its_slot_holds_the_account() {
        let p = Policy::default_with_version("t");
        let nd = sig(&p, "new_device");
        let e = |t: u32| Entry { t, risk_q: quantise_risk(0.5), signal: nd, cell: 0 };
        let mut s = store();
        let a = s.add(11, e(100), "a1", 10, 0).slot;
        let b = s.add(22, e(100), "b1", 10, 3).slot;
        assert_ne!(a, b);
        // The hint, no hint, and a hint to another account's slot all find the account.
        for hint in [a, NO_SLOT, b, 1_000_000] {
            let v = s.state_with_copy(11, hint, 7).unwrap();
            assert_eq!((v.partition, v.ring.len()), (0, 1), "hint {hint}");
        }
        assert_eq!(s.copy_of(11), 7);
        // Account 11 goes and 33 takes its slot: the old hint now points at 33, not at 11.
        assert!(s.remove(11));
        let c = s.add(33, e(100), "c1", 10, 5).slot;
        assert_eq!(c, a, "the freed slot is reused");
        assert!(s.state_with_copy(11, a, 8).is_none());
        assert_eq!(s.state_with_copy(33, a, 9).map(|v| v.partition), Some(5));
        assert_eq!((s.copy_of(33), s.copy_of(22)), (9, NO_COPY));
    }

    #[test]
    fn an_adopted_store_is_part_of_this_one_and_its_accounts_move_in_when_touched() {
        let p = Policy::default_with_version("t");
        let nd = sig(&p, "new_device");
        let e = |t: u32| Entry { t, risk_q: quantise_risk(0.5), signal: nd, cell: 0 };
        let (mut live, mut other) = (store(), store());
        live.add(1, e(100), "a1", 10, 0);
        other.add(2, e(100), "b1", 10, 7);
        other.add(3, e(100), "c1", 10, 7);
        other.add(4, e(100), "d1", 10, 7);
        let mut empty = store();
        empty.adopt(store());
        assert!(empty.adopted.is_empty() && empty.is_empty(), "nothing to adopt");

        live.adopt(other);
        assert_eq!((live.len(), live.adopted.len()), (4, 1));
        let mut keys: Vec<u64> = live.keys().collect();
        keys.sort_unstable();
        assert_eq!(keys, [1, 2, 3, 4]);
        assert_eq!(live.keys().filter(|&k| live.get(k).unwrap().partition == 7).count(), 3);
        assert_eq!(live.get(2).unwrap().partition, 7);
        // Touched: moved in, with what it held.
        let before = live.get(2).unwrap().slow;
        let scores = live.add(2, e(101), "b2", 11, 7);
        assert!(scores.short > 0.0);
        assert_eq!(live.view(2).unwrap().evidence, ["b1", "b2"]);
        assert!(live.find(2).is_some() && live.adopted[0].find(2).is_none());
        assert_ne!(live.get(2).unwrap().slow, before);
        // Replaced, removed: moved in first, so the key is never in two stores.
        let ring = [e(200)];
        live.put(
            3,
            AccountView { partition: 7, ring: &ring, ids: None, slow: Slow::default(), touched_s: 20 },
            NO_COPY,
        );
        assert_eq!(live.get(3).unwrap().ring, ring);
        assert!(live.remove(4), "removed where it is, not moved in first");
        assert!(live.find(4).is_none());
        assert!(!live.remove(4));
        assert_eq!((live.len(), live.adopted.len()), (3, 0), "the adopted store, emptied, is gone");

        // A partition forgotten: its adopted store goes whole, the live store's accounts of it one by one.
        let mut other = store();
        other.add(7, e(100), "g1", 10, 9);
        other.add(8, e(100), "h1", 10, 9);
        live.adopt(other);
        live.add(9, e(100), "i1", 10, 9);
        assert_eq!(live.remove_partition(9), 3);
        assert_eq!((live.len(), live.adopted.len()), (3, 0));
        assert_eq!(live.remove_partition(7), 2, "2 and 3 of partition 7; 1 is on 0");
        assert_eq!(live.len(), 1);

        // An adopted store is swept with the rest; into an empty store, it is adopted in place.
        let mut other = store();
        other.add(5, e(100), "e1", 10, 8);
        live.adopt(other);
        assert_eq!(live.sweep(100, 10 + 26 * 3600, 100, None), 2, "both idle");
        assert!(live.is_empty() && live.adopted.is_empty());
        let mut other = store();
        other.add(6, e(100), "f1", 10, 9);
        live.adopt(other);
        assert!(live.adopted.is_empty() && live.find(6).is_some());

        // Folded in by bounded steps; freed slots are passed over; a key both hold keeps the
        // live store's state.
        let mut other = store();
        for k in 10..20 {
            other.add(k, e(100), "x", 10, 5);
        }
        other.add(6, e(300), "stale", 10, 5);
        other.remove(12);
        live.adopt(other);
        assert_eq!(live.merge_step(4), 4);
        assert_eq!(live.adopted[0].slots.len(), 7);
        assert_eq!(live.merge_step(100), 7);
        assert!(live.adopted.is_empty());
        assert_eq!(live.len(), 10, "6 and 10..20 but 12");
        assert_eq!(live.get(6).unwrap().ring, [e(100)]);
        assert!((10..20).filter(|&k| k != 12).all(|k| live.find(k).is_some()));
        assert_eq!(live.merge_step(100), 0);
    }

    #[test]
    fn short_window_sums_and_caps_per_signal() {
        let p = Policy::default_with_version("t");
        let mut s = store();
        let fl = sig(&p, "failed_login"); // weight 0.1, cap 0.5
        let cs = sig(&p, "credential_stuffing"); // weight 0.6, cap 0.9
        let mut last = None;
        for i in 0..10u32 {
            last = Some(s.add(
                42,
                Entry { t: 1000 + i, risk_q: quantise_risk(1.0), signal: fl, cell: 0 },
                &format!("e{i}"),
                0,
                0,
            ));
        }
        assert!((last.unwrap().short - 0.5).abs() < 1e-4, "failed_login capped at 0.5");
        let sc = s.add(42, Entry { t: 1011, risk_q: quantise_risk(0.5), signal: cs, cell: 1 }, "cs", 0, 0);
        assert!((sc.short - 0.8).abs() < 1e-3, "{sc:?}");
        let v = s.view(42).unwrap();
        assert_eq!(v.contributions.len(), 2);
        assert_eq!(v.contributions[0].signal, fl);
        assert_eq!(v.contributions[0].count, 10);
        assert_eq!(v.evidence.len(), MAX_EVIDENCE);
        assert_eq!(v.evidence.last().unwrap(), "cs");
        assert_eq!(v.evidence[0], "e1", "11 events, the newest 10 ids");
    }

    #[test]
    fn entries_leave_the_short_window_with_their_evidence() {
        let p = Policy::default_with_version("t");
        let mut s = store();
        let cs = sig(&p, "credential_stuffing");
        s.add(7, Entry { t: 1000, risk_q: quantise_risk(1.0), signal: cs, cell: 0 }, "old", 0, 0);
        let sc = s.add(7, Entry { t: 1000 + 901, risk_q: quantise_risk(0.5), signal: cs, cell: 0 }, "new", 0, 0);
        assert!((sc.short - 0.3).abs() < 1e-3, "old entry left the 15 min window: {sc:?}");
        assert_eq!(s.view(7).unwrap().evidence, vec!["new".to_string()]);
        assert!(sc.slow > 0.8, "slow window still has both: {sc:?}");
    }

    #[test]
    fn ring_is_bounded_and_drops_the_oldest() {
        let p = Policy::default_with_version("t");
        let mut s = store();
        let nd = sig(&p, "new_device");
        for i in 0..40u32 {
            s.add(9, Entry { t: 5000 + i, risk_q: 1000, signal: nd, cell: 0 }, &format!("id{i}"), 0, 0);
        }
        let v = s.view(9).unwrap();
        assert_eq!(v.contributions[0].count as usize, p.max_events_per_account);
        assert_eq!(v.evidence.first().unwrap(), "id30");
        assert_eq!(v.start_s, 5000 + 40 - p.max_events_per_account as u32);
    }

    #[test]
    fn sweep_frees_accounts_behind_the_watermark_and_idle_ones() {
        let p = Policy::default_with_version("t");
        let mut s = store();
        let nd = sig(&p, "new_device");
        let day = 86_400u32;
        s.add(1, Entry { t: 10 * day, risk_q: 1000, signal: nd, cell: 0 }, "a", 100, 0);
        s.add(2, Entry { t: 13 * day, risk_q: 1000, signal: nd, cell: 0 }, "b", 100, 0);
        assert_eq!(s.sweep(10 * day + 100, 100, 10, None), 0, "nothing expired yet");
        assert_eq!(s.sweep(13 * day, 100, 10, None), 1, "account 1 is past both windows");
        assert_eq!(s.len(), 1);
        assert_eq!(s.sweep(13 * day, 100 + 25 * 3600 + 1, 10, None), 1, "account 2 idled out on processing time");
        assert!(s.is_empty());
        // Freed slots are reused.
        s.add(3, Entry { t: 13 * day, risk_q: 1000, signal: nd, cell: 0 }, "c", 0, 0);
        assert_eq!(s.slots.len(), 2);
    }
}
