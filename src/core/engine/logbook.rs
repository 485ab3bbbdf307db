//! What one partition's changelog holds in batch records (record format 3), and when it is
//! compacted. Pure bookkeeping; [`super::persist`] writes and reads the records.
//!
//! Kafka compacts by key, and a batch record's key is its number, so the log cleaner can drop a
//! batch only after resetguard writes a tombstone for it. A batch may get one once no account's
//! newest copy is in it or in an earlier batch; tombstones go out in batch order (a prefix of
//! the log), which keeps a later "gone" entry until every earlier copy of that account is gone
//! too. To move that prefix on, [`LogBook::compaction_due`] starts a compaction when the live
//! batches hold more than twice as many entries as the partition has accounts (plus a slack):
//! the accounts whose newest copy sits in the older half of the log are written again, a step
//! per drain, and then that half gets its tombstones. Accounts that change often are written
//! anyway; only the cold ones are copied forward. Restore reads at most about twice the live
//! state (plus the slack), in few large records.

use std::collections::VecDeque;

use crate::core::accounts::{LEGACY_COPY, NO_COPY};

/// Entries the log may hold beyond twice the live accounts before a compaction starts.
pub(super) const SLACK: u64 = 16_384;
/// Accounts a compaction writes again per drain, at least (more when the drain wrote more:
/// it keeps pace with the writes).
pub(super) const STEP: usize = 1024;
/// Batch tombstones written per drain, at most.
pub(super) const TOMBSTONES: usize = 4096;
/// A batch record is cut at this size (before compression; below the default 1 MB limits).
pub(super) const BATCH_BYTES: usize = 512 * 1024;

#[derive(Debug, Default)]
pub(crate) struct LogBook {
    /// Number of the next batch (0 is never used: the low 32 bits of a number are never
    /// [`LEGACY_COPY`] or [`NO_COPY`]).
    next: u64,
    /// Batches without a tombstone yet, oldest first: number, entries.
    batches: VecDeque<(u64, u32)>,
    /// Entries in those batches, plus the per-account records of formats 1 and 2 loaded.
    entries: u64,
    /// Per-account records (formats 1 and 2) counted in `entries`: a compaction writes their
    /// accounts into batches (their keys get tombstones as each one is written).
    legacy: u64,
    /// Accounts whose newest copy is in this partition's log.
    live: u64,
    compaction: Option<Compaction>,
    /// Batches numbered below this get tombstones.
    drop_below: u64,
}

#[derive(Debug)]
struct Compaction {
    /// Accounts whose newest copy is in a batch numbered below this are written again.
    below: u64,
    /// Those accounts (when the compaction started), and how far it got.
    keys: Vec<u64>,
    at: usize,
}

impl LogBook {
    /// Numbers a new batch.
    pub(super) fn next_batch(&mut self) -> u64 {
        loop {
            let n = self.next.max(1);
            self.next = n + 1;
            if !matches!(n as u32, LEGACY_COPY | NO_COPY) {
                return n;
            }
        }
    }

    /// A batch was written (or read on restore): `entries` account states or deletions.
    pub(super) fn batch(&mut self, number: u64, entries: u32) {
        self.next = self.next.max(number + 1);
        match self.batches.back() {
            Some(&(last, _)) if last >= number => {
                // Not in order (it never happens with one writer per partition): keep them sorted.
                let at = self.batches.partition_point(|&(n, _)| n < number);
                if self.batches.get(at).is_some_and(|&(n, _)| n == number) {
                    let old = std::mem::replace(&mut self.batches[at].1, entries);
                    self.entries -= u64::from(old);
                } else {
                    self.batches.insert(at, (number, entries));
                }
            }
            _ => self.batches.push_back((number, entries)),
        }
        self.entries += u64::from(entries);
    }

    /// A batch's tombstone was read (restore).
    pub(super) fn tombstone(&mut self, number: u64) {
        self.next = self.next.max(number + 1);
        if let Some(at) = self.batches.iter().position(|&(n, _)| n == number) {
            if let Some((_, e)) = self.batches.remove(at) {
                self.entries -= u64::from(e);
            }
        }
    }

    /// A per-account record (formats 1 and 2) was read (restore).
    pub(super) fn legacy_record(&mut self) {
        self.legacy += 1;
        self.entries += 1;
    }

    /// The partition's accounts changed by `delta` (one written for the first time: +1; one
    /// gone: -1).
    pub(super) fn live(&mut self, delta: i64) {
        self.live = self.live.saturating_add_signed(delta);
    }

    /// The full number of a batch from the low 32 bits an account keeps of it.
    fn number(&self, copy: u32) -> u64 {
        self.next.saturating_sub(u64::from((self.next as u32).wrapping_sub(copy)))
    }

    /// Whether an account's copy is one the running compaction must write again.
    pub(super) fn stale(&self, copy: u32) -> bool {
        match (copy, &self.compaction) {
            (NO_COPY, _) | (_, None) => false,
            (LEGACY_COPY, Some(_)) => true,
            (c, Some(k)) => self.number(c) < k.below,
        }
    }

    /// Whether a compaction should start: none running, and the log holds more than twice the
    /// live accounts plus [`SLACK`] entries.
    pub(super) fn compaction_due(&self) -> bool {
        self.compaction.is_none() && self.entries > 2 * self.live + SLACK
    }

    /// Starts a compaction: the older half of the log's entries (whole batches) is to go, and
    /// `copies` are the partition's accounts with where their copies are. Returns the accounts
    /// it will write again.
    pub(super) fn start_compaction(&mut self, copies: impl Iterator<Item = (u64, u32)>) -> usize {
        let mut half = self.legacy;
        let mut below = 1;
        for &(n, e) in &self.batches {
            if half * 2 >= self.entries {
                break;
            }
            half += u64::from(e);
            below = n + 1;
        }
        self.compaction = Some(Compaction { below, keys: Vec::new(), at: 0 });
        let keys: Vec<u64> = copies.filter(|&(_, copy)| self.stale(copy)).map(|(k, _)| k).collect();
        let n = keys.len();
        if let Some(c) = &mut self.compaction {
            c.keys = keys;
        }
        n
    }

    /// The next accounts (up to `n`) the running compaction writes again; when none are left,
    /// the compaction ends and the batches it covered are due for tombstones.
    pub(super) fn compaction_step(&mut self, n: usize) -> Vec<u64> {
        let Some(c) = &mut self.compaction else { return Vec::new() };
        let end = (c.at + n).min(c.keys.len());
        let step = c.keys[c.at..end].to_vec();
        c.at = end;
        if step.is_empty() {
            let below = c.below;
            self.compaction = None;
            self.drop_below = self.drop_below.max(below);
            // Every account of a per-account record was written into a batch (and its record
            // got a tombstone then).
            self.entries -= self.legacy;
            self.legacy = 0;
        }
        step
    }

    /// A compaction is under way, or batches wait for their tombstones.
    pub(super) fn has_work(&self) -> bool {
        self.compaction.is_some() || self.batches.front().is_some_and(|&(b, _)| b < self.drop_below)
    }

    pub(super) fn compacting(&self) -> bool {
        self.compaction.is_some()
    }

    /// Batches due for a tombstone (up to `n`), oldest first; they leave the book.
    pub(super) fn take_tombstones(&mut self, n: usize) -> Vec<u64> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.batches.front() {
                Some(&(b, e)) if b < self.drop_below => {
                    self.batches.pop_front();
                    self.entries -= u64::from(e);
                    out.push(b);
                }
                _ => break,
            }
        }
        out
    }

    /// The low 32 bits of batch `number`, as accounts keep it.
    pub(super) fn copy(number: u64) -> u32 {
        number as u32
    }

    /// Entries the log holds (batches without a tombstone, per-account records).
    pub(crate) fn entries(&self) -> u64 {
        self.entries
    }

    pub(crate) fn live_accounts(&self) -> u64 {
        self.live
    }

    pub(crate) fn batches(&self) -> usize {
        self.batches.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_numbers_skip_the_two_reserved_copies() {
        let mut b = LogBook { next: (1 << 32) - 1, ..LogBook::default() };
        let n = b.next_batch();
        assert_eq!(n, (1 << 32) + 1, "0xFFFF_FFFF and 0x1_0000_0000 are skipped");
        assert_eq!(b.number(LogBook::copy(n)), n);
        assert_eq!(LogBook::default().next_batch(), 1);
    }

    #[test]
    fn a_compaction_covers_the_older_half_then_tombstones_it_in_order() {
        let mut b = LogBook::default();
        for _ in 0..10 {
            let n = b.next_batch();
            b.batch(n, 5_000);
        }
        b.live(10_000);
        assert!(b.compaction_due(), "50,000 entries for 10,000 accounts");
        // Accounts 0..10,000 with their copies in batches 1..=10 (1,000 per batch).
        let copies = (0..10_000u64).map(|k| (k, LogBook::copy(k / 1_000 + 1)));
        assert_eq!(b.start_compaction(copies), 5_000, "batches 1..=5 hold half the entries");
        assert!(!b.compaction_due());
        assert!(b.stale(LogBook::copy(5)) && !b.stale(LogBook::copy(6)) && b.stale(LEGACY_COPY) && !b.stale(NO_COPY));
        assert!(b.take_tombstones(10).is_empty(), "nothing goes before the accounts are written again");
        let mut written = 0;
        loop {
            let step = b.compaction_step(STEP);
            if step.is_empty() {
                break;
            }
            written += step.len();
            let n = b.next_batch();
            b.batch(n, step.len() as u32);
        }
        assert_eq!(written, 5_000);
        assert!(!b.compacting());
        assert_eq!(b.take_tombstones(3), vec![1, 2, 3]);
        assert_eq!(b.take_tombstones(10), vec![4, 5]);
        assert_eq!(b.entries(), 5 * 5_000 + 5_000);
        assert_eq!(b.batches(), 5 + 5);
    }

    #[test]
    fn restore_rebuilds_the_book_from_batches_and_their_tombstones() {
        let mut b = LogBook::default();
        b.legacy_record();
        b.batch(7, 3);
        b.batch(8, 2);
        b.tombstone(7);
        b.tombstone(9);
        assert_eq!((b.entries(), b.batches(), b.next_batch()), (1 + 2, 1, 10));
        // The per-account records' accounts are written again by the first compaction.
        b.live(1);
        let copies = [(1, LEGACY_COPY), (2, LogBook::copy(8)), (3, NO_COPY)];
        assert_eq!(b.start_compaction(copies.into_iter()), 2, "the older half reaches batch 8");
        assert_eq!(b.compaction_step(10), vec![1, 2]);
        assert!(b.compaction_step(10).is_empty());
        assert_eq!(b.entries(), 2, "the per-account record is gone from the count");
        assert_eq!(b.take_tombstones(10), vec![8]);
        assert_eq!(b.entries(), 0);
    }
}
