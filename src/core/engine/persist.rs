//! The engine's state as changelog records ([`crate::core::changelog`]): what changed since the
//! last transaction, loading records back on restore, the breaker history they carry, and a
//! canonical dump for comparing states. Pure.

use std::borrow::Cow;

use smallvec::SmallVec;

use super::logbook::{self, LogBook};
use super::*;
use crate::core::accounts::{AccountView, Slow, LEGACY_COPY, NO_SLOT};
use crate::core::changelog::{
    self, AccountRecord, BatchEntry, BatchNames, BatchWriter, CooldownRecord, DecodeError, Key, RecEntry, WindowRecord,
};
use crate::core::evidence;

/// Where drained records go: (partition, key, value; `None`: a tombstone).
type Emit<'e> = dyn FnMut(u32, &[u8], Option<&[u8]>) + 'e;

/// Partitions whose watermark moved since the last drain, and the drain's buffers (the accounts
/// that changed are kept by their shards).
#[derive(Default)]
pub(super) struct Changes {
    /// Partitions whose watermark moved.
    partitions: Vec<bool>,
    /// Scratch for the sweep (kept to reuse its allocation).
    pub(super) freed: Vec<(u64, u16, u32)>,
    /// Scratch for the drain: the changed accounts in slot order.
    order: Vec<(u64, Changed)>,
    buf: Vec<u8>,
    /// Batch records being written, one per partition (record formats 3 and 4), and spare
    /// writers.
    open: Vec<OpenBatch>,
    spare: Vec<BatchWriter>,
    /// A batch record is cut at this size (0: [`logbook::BATCH_BYTES`]).
    batch_bytes: usize,
    /// Record format written ([`changelog::WRITABLE_VERSIONS`]).
    version: u8,
}

/// A partition's batch record being written by a drain.
struct OpenBatch {
    partition: u32,
    number: u64,
    w: BatchWriter,
    /// Accounts written for the first time less accounts gone, since the drain began.
    live: i64,
    /// Entries written by the drain (in this batch and the ones it filled before).
    written: usize,
}

impl Changes {
    /// Size at which a batch record is cut.
    fn cut(&self) -> usize {
        if self.batch_bytes == 0 {
            logbook::BATCH_BYTES
        } else {
            self.batch_bytes
        }
    }

    pub(super) fn clear(&mut self) {
        self.partitions.iter_mut().for_each(|p| *p = false);
    }

    pub(super) fn touch_partition(&mut self, p: u16) {
        let i = p as usize;
        if i >= self.partitions.len() {
            self.partitions.resize(i + 1, false);
        }
        self.partitions[i] = true;
    }
}

/// Counts and digest of the engine's state ([`Engine::state_summary`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct StateSummary {
    pub accounts: usize,
    pub cooldowns: usize,
    /// Records of the canonical dump (accounts with a window or a cooldown, and watermarks).
    pub records: usize,
    /// Partitions (global numbers) the state belongs to.
    pub partitions: Vec<u32>,
    pub digest: String,
}

/// What one partition's changelog holds in batch records ([`Engine::changelog_book`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BookSummary {
    /// Account entries in batches without a tombstone, plus per-account records (formats 1, 2).
    pub entries: u64,
    /// Accounts whose newest copy is in the partition's changelog.
    pub live_accounts: u64,
    /// Batches without a tombstone.
    pub batches: usize,
    /// A compaction is writing the accounts of the older half of the log again.
    pub compacting: bool,
}

/// What one [`Engine::drain_changes`] emitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Kafka records (batches, per-account records, tombstones, watermarks).
    pub records: usize,
    /// Account states (an account's whole state, or that it is gone), in whatever records.
    pub states: u64,
}

/// One changelog record: partition, key, value (`None`: a tombstone).
pub type StateRecord = (u32, Vec<u8>, Option<Vec<u8>>);

impl Engine {
    /// Starts tracking what changes, for [`Engine::drain_changes`], which writes batch records
    /// with name tables (record format 4, the default).
    pub fn track_changes(&mut self) {
        self.track_changes_as(changelog::NAMED_BATCHES);
    }

    /// [`Engine::track_changes`], writing record format `version` (1 or 2: one record per
    /// account, 3: batches without name tables, for a rolling upgrade from a version that reads
    /// only those; see [`changelog::WRITABLE_VERSIONS`]).
    pub fn track_changes_as(&mut self, version: u8) {
        self.changes.get_or_insert_with(Changes::default).version = version;
    }

    /// Size at which a batch record is cut (before compression).
    pub fn changelog_batch_bytes(&self) -> usize {
        self.changes.as_ref().map_or(logbook::BATCH_BYTES, Changes::cut)
    }

    /// Cuts batch records at `bytes` from now on (a changelog topic or producer that refuses
    /// records as large as the default, see `kafka::pipeline`); an account's state is never cut.
    pub fn set_changelog_batch_bytes(&mut self, bytes: usize) {
        if let Some(c) = &mut self.changes {
            c.batch_bytes = bytes.max(1);
        }
    }

    /// What the changelog of `partition` holds in batch records, as this engine knows it
    /// (`None`: nothing written or read in batches).
    pub fn changelog_book(&self, partition: u32) -> Option<BookSummary> {
        self.books.get(&partition).map(|b| BookSummary {
            entries: b.entries(),
            live_accounts: b.live_accounts(),
            batches: b.batches(),
            compacting: b.compacting(),
        })
    }

    /// Accounts changed since the last drain, plus one per partition whose changelog has
    /// compaction work left (a compaction under way, batches due for a tombstone), so that an
    /// idle instance still finishes it.
    pub fn pending_changes(&self) -> usize {
        if self.changes.is_none() {
            return 0;
        }
        let work = self.books.values().filter(|b| b.has_work()).count();
        self.shards.iter().map(|s| s.changed.len()).sum::<usize>() + work
    }

    /// Emits the state of every account changed since the last call and one watermark record
    /// per partition that moved, then forgets them. Returns how many records and account
    /// states were emitted.
    ///
    /// Record format 3 (the default): per partition, batch records of the accounts' whole
    /// states (or that they are gone), a step of the running compaction (see
    /// [`super::logbook`]), tombstones of the batches it is done with, and a tombstone of an
    /// account's own record (formats 1 and 2) before its first batch entry. Formats 1 and 2:
    /// one record per account, a tombstone when it is gone.
    pub fn drain_changes(&mut self, mut emit: impl FnMut(u32, &[u8], Option<&[u8]>)) -> Drained {
        let Some(mut c) = self.changes.take() else { return Drained::default() };
        let (mut n, states) = if changelog::batched(c.version) {
            self.drain_batches(&mut c, &mut emit)
        } else {
            self.drain_accounts(&mut c, &mut emit)
        };
        for (p, changed) in c.partitions.iter().enumerate() {
            if let (true, Some(&m)) = (*changed, self.max_event_ms.get(p)) {
                if m != i64::MIN {
                    emit(p as u32, changelog::WATERMARK_KEY, Some(&changelog::encode_watermark(m)));
                    n += 1;
                }
            }
        }
        c.clear();
        self.changes = Some(c);
        Drained { records: n, states }
    }

    /// Formats 1 and 2: one record per changed account.
    /// An account that goes while its newest copy is in a batch (a log written in format 3
    /// before, and now format 1 or 2 again) also gets a "gone" entry in a batch: its tombstone
    /// alone would let that copy come back once Kafka drops the tombstone.
    fn drain_accounts(&mut self, c: &mut Changes, emit: &mut Emit<'_>) -> (usize, u64) {
        let mut n = 0;
        let mut gone: Vec<(u32, u64)> = Vec::new();
        for shard in &mut self.shards {
            for (&key, &Changed { partition, before, .. }) in &shard.changed {
                c.buf.clear();
                let partition = shard.accounts.get(key).map_or(partition, |a| a.partition);
                let k = changelog::account_key(key);
                if encode_account(&self.policy, &self.breaker, shard, key, c.version, &mut c.buf) {
                    emit(u32::from(partition), &k, Some(&c.buf));
                } else {
                    emit(u32::from(partition), &k, None);
                    if !matches!(before, NO_COPY | LEGACY_COPY) {
                        gone.push((u32::from(partition), key));
                    }
                }
                n += 1;
            }
            shard.changed.clear();
        }
        // One state per account (the "gone" entries below repeat tombstones).
        let states = n as u64;
        gone.sort_unstable();
        for part in gone.chunk_by(|a, b| a.0 == b.0) {
            let p = part[0].0;
            let mut w = BatchWriter::default();
            part.iter().for_each(|&(_, key)| w.gone(key));
            let book = self.books.entry(p).or_default();
            let number = book.next_batch();
            emit(p, &changelog::batch_key(number), Some(w.finish()));
            book.batch(number, w.entries());
            book.live(-(part.len() as i64));
            n += 1;
        }
        (n, states)
    }

    /// Formats 3 and 4: batch records per partition, with the compaction's steps and tombstones.
    fn drain_batches(&mut self, c: &mut Changes, emit: &mut Emit<'_>) -> (usize, u64) {
        let (mut n, mut states) = (0, 0);
        for i in 0..self.shards.len() {
            let mut changed = std::mem::take(&mut self.shards[i].changed);
            // In the order of their slots, not the map's: the reads of their states then go
            // one way through the store.
            let mut order = std::mem::take(&mut c.order);
            order.extend(changed.drain());
            order.sort_unstable_by_key(|(_, ch)| ch.slot);
            // The partition is the one of the account's last change (as its state says).
            for (key, ch) in order.drain(..) {
                n += self.write_entry(c, i, u32::from(ch.partition), key, (ch.before, ch.slot), emit);
            }
            c.order = order;
            self.shards[i].changed = changed;
        }
        let mut partitions: Vec<u32> = self.books.keys().copied().collect();
        partitions.sort_unstable();
        for &p in &partitions {
            let i = self.shard_index(p);
            let shard = &self.shards[i];
            let Some(book) = self.books.get_mut(&p) else { continue };
            if book.compaction_due() {
                let q = p.min(u32::from(u16::MAX)) as u16;
                let cooldowns = shard.ledger.iter().filter(|(_, c)| c.partition == q).map(|(&k, c)| (k, c.copy));
                book.start_compaction(shard.accounts.copies_of(q).chain(cooldowns));
            }
            if !book.compacting() {
                continue;
            }
            // Keeps pace with the writes: at least as many accounts as this drain changed.
            let step = c.open.iter().find(|o| o.partition == p).map_or(0, |o| o.written).max(logbook::STEP);
            for key in book.compaction_step(step) {
                let (book, shard) = (&self.books[&p], &self.shards[i]);
                let copy = shard.accounts.copy_of(key);
                let cooldown = shard.ledger.get(&key).map_or(NO_COPY, |c| c.copy);
                // Gone meanwhile (its going was written), or written again since.
                if (copy == NO_COPY && cooldown == NO_COPY) || !(book.stale(copy) || book.stale(cooldown)) {
                    continue;
                }
                let before = if book.stale(copy) { copy } else { cooldown };
                n += self.write_entry(c, i, p, key, (before, NO_SLOT), emit);
            }
        }
        for mut o in c.open.drain(..) {
            states += o.written as u64;
            let book = self.books.entry(o.partition).or_default();
            if o.w.entries() > 0 {
                emit(o.partition, &changelog::batch_key(o.number), Some(o.w.finish()));
                book.batch(o.number, o.w.entries());
                n += 1;
            }
            book.live(o.live);
            o.w.clear();
            c.spare.push(o.w);
        }
        for &p in &partitions {
            if let Some(book) = self.books.get_mut(&p) {
                for b in book.take_tombstones(logbook::TOMBSTONES) {
                    emit(p, &changelog::batch_key(b), None);
                    n += 1;
                }
            }
        }
        (n, states)
    }

    /// Writes `key`'s state (or that it is gone) into partition `p`'s open batch, `before`
    /// being where the changelog's copy of it was and `slot` where its state may be in the
    /// store ([`NO_SLOT`]: look it up). Returns the records emitted (the tombstone of its own
    /// record, a full batch).
    fn write_entry(
        &mut self,
        c: &mut Changes,
        shard: usize,
        p: u32,
        key: u64,
        (before, slot): (u32, u32),
        emit: &mut Emit<'_>,
    ) -> usize {
        let mut n = 0;
        if before == LEGACY_COPY {
            // Its own record goes first: the batch entry after it is its state from now on.
            emit(p, &changelog::account_key(key), None);
            n += 1;
        }
        let cut = c.cut();
        // Few partitions per drain: a short search, the last one used first.
        let o = match c.open.iter().rposition(|o| o.partition == p) {
            Some(at) => &mut c.open[at],
            None => {
                let number = self.books.entry(p).or_default().next_batch();
                let named = c.version == changelog::NAMED_BATCHES;
                let w = match c.spare.pop() {
                    Some(w) if w.is_named() == named => w,
                    _ if named => BatchWriter::named(),
                    _ => BatchWriter::default(),
                };
                c.open.push(OpenBatch { partition: p, number, w, live: 0, written: 0 });
                let last = c.open.len() - 1;
                &mut c.open[last]
            }
        };
        let copy = LogBook::copy(o.number);
        let shard = &mut self.shards[shard];
        // Where its copy is from now on, read and set in one lookup each.
        let account = shard.accounts.state_with_copy(key, slot, copy);
        let cooldown = shard.ledger.get_mut(&key).map(|c| {
            c.copy = copy;
            &*c
        });
        let (policy, breaker) = (&self.policy, &self.breaker);
        if o.w.put(key, |out, names| encode_state(policy, breaker, account, cooldown, changelog::VERSION, names, out)) {
            o.live += i64::from(before == NO_COPY);
        } else if before != NO_COPY {
            o.w.gone(key);
            o.live -= 1;
        } else {
            // Never written, and gone again.
            return n;
        }
        o.written += 1;
        if o.w.bytes() >= cut {
            let book = self.books.entry(p).or_default();
            emit(p, &changelog::batch_key(o.number), Some(o.w.finish()));
            book.batch(o.number, o.w.entries());
            o.w.clear();
            o.number = book.next_batch();
            n += 1;
        }
        n
    }

    /// Drops the state of a partition this instance no longer owns (accounts whose last event
    /// came from it, their cooldowns, its watermark). Dedupe memory is shared and stays.
    pub fn forget_partition_state(&mut self, partition: u32) {
        let p = partition as u16;
        let i = self.shard_index(partition);
        let shard = &mut self.shards[i];
        shard.accounts.remove_partition(p);
        shard.ledger.retain(|_, c| c.partition != p);
        shard.changed.retain(|_, q| q.partition != p);
        self.books.remove(&partition);
        self.forget_partition(partition);
        if let Some(c) = &mut self.changes {
            if let Some(x) = c.partitions.get_mut(partition as usize) {
                *x = false;
            }
        }
    }

    /// Applies one changelog record of `partition` (restore). Records are applied in log order;
    /// a later record of the same key replaces an earlier one, a tombstone removes it.
    pub fn load_state(&mut self, partition: u32, key: &[u8], value: Option<&[u8]>) -> Result<(), DecodeError> {
        let p = partition.min(u32::from(u16::MAX)) as u16;
        match changelog::parse_key(key) {
            Key::Other => Ok(()),
            Key::Watermark => {
                let Some(v) = value else { return Ok(()) };
                let m = changelog::decode_watermark(v)?;
                let i = p as usize;
                if i >= self.max_event_ms.len() {
                    self.max_event_ms.resize(i + 1, i64::MIN);
                }
                self.max_event_ms[i] = m;
                Ok(())
            }
            Key::Account(k) => {
                if value.is_some() {
                    self.books.entry(partition).or_default().legacy_record();
                }
                let rec = value.map(changelog::decode).transpose()?;
                self.load_account(partition, k, rec, LEGACY_COPY);
                Ok(())
            }
            Key::Batch(b) => {
                let Some(v) = value else {
                    self.books.entry(partition).or_default().tombstone(b);
                    return Ok(());
                };
                let (mut entries, mut failed) = (0, None);
                let batch = changelog::read_batch(v);
                for e in batch.entries() {
                    let done = match e {
                        Ok(BatchEntry::Put(k, stored)) => {
                            stored.decode().map(|rec| self.load_account(partition, k, Some(rec), LogBook::copy(b)))
                        }
                        Ok(BatchEntry::Gone(k)) => {
                            self.load_account(partition, k, None, LogBook::copy(b));
                            Ok(())
                        }
                        Err(e) => Err(e),
                    };
                    entries += 1;
                    if let Err(e) = done {
                        failed = Some(e);
                    }
                }
                self.books.entry(partition).or_default().batch(b, entries);
                failed.map_or(Ok(()), Err)
            }
        }
    }

    /// Applies one account's state (`None`: it is gone) read from a changelog record whose copy
    /// is `copy` ([`LEGACY_COPY`] for a record of its own, else its batch's).
    fn load_account(&mut self, partition: u32, k: u64, rec: Option<AccountRecord<'_>>, copy: u32) {
        let p = partition.min(u32::from(u16::MAX)) as u16;
        let i = self.shard_index(partition);
        let shard = &mut self.shards[i];
        let had = shard.accounts.get(k).is_some() || shard.ledger.contains_key(&k);
        let Some(rec) = rec else {
            shard.accounts.remove(k);
            shard.ledger.remove(&k);
            if had {
                self.books.entry(partition).or_default().live(-1);
            }
            return;
        };
        if let Some(w) = &rec.window {
            // Its ids that the account's previous record did not hold join the dedupe
            // memory, at the time the record was written.
            let before = shard.accounts.get(k).and_then(|a| a.ids);
            remember_new_ids(&mut self.dedupe, self.seed, before, &w.ids, i64::from(w.touched_s) * 1000);
        }
        apply_record(&self.policy, &mut self.breaker, shard, k, p, &rec, copy);
        let has = shard.accounts.get(k).is_some() || shard.ledger.contains_key(&k);
        if had != has {
            self.books.entry(partition).or_default().live(if has { 1 } else { -1 });
        }
    }

    /// A warm standby's engine for one changelog partition: fed only by [`Engine::load_state`]
    /// of that partition's records (never live), to be handed over by
    /// [`Engine::adopt_partition`]. Its breaker only names cells, so it may name every cell the
    /// records do (up to [`crate::core::policy::MAX_CELLS_LIMIT`]): the hand-over maps them by
    /// name, as a load of the records would.
    pub fn standby(policy: &Policy, keys: Keys) -> Engine {
        let mut p = policy.clone();
        p.breaker.max_cells = crate::core::policy::MAX_CELLS_LIMIT;
        // It never judges: no allow-list copy per partition.
        p.allow_list.clear();
        Engine::new(Arc::new(p), keys, TimeMode::Wall)
    }

    /// Takes over the state of `partition` that `standby` holds (an engine that loaded that
    /// partition's changelog records and nothing else, see [`Engine::standby`]): accounts,
    /// cooldowns, the watermark and the event ids its records brought to its dedupe memory,
    /// leaving this engine as loading the same records with [`Engine::load_state`] would, when
    /// it holds nothing of those accounts yet (as at an assignment: inputs are keyed by account,
    /// so an account's state lives in one partition; a key the standby saw deleted is not
    /// deleted here). Nothing is decoded or copied but the cooldowns: the account store and the
    /// dedupe sets move whole ([`AccountStore::adopt`], [`Dedupe::absorb`]), their breaker cells
    /// renumbered in place only if the two engines number cells differently. Then, as after a
    /// load, call [`Engine::after_load`]. Returns how many accounts and cooldowns it took over.
    pub fn adopt_partition(&mut self, mut standby: Engine, partition: u32) -> u64 {
        let p = partition.min(u32::from(u16::MAX)) as u16;
        let j = standby.shard_index(partition);
        let mut from = std::mem::replace(&mut standby.shards[j], Shard::new(&standby.policy));
        from.ledger.retain(|_, c| c.partition == p);
        // The standby's cell numbers → this engine's, by name (few cells, each looked up once).
        let breaker = &mut self.breaker;
        let mut cells: Vec<Option<u8>> = vec![None; 256];
        let mut cell = |c: u8| *cells[c as usize].get_or_insert_with(|| breaker.cell_for(standby.breaker.cell_name(c)));
        // Cell 0 is the global cell in both, never an entry's; every other cell the standby
        // named, a record it loaded used (a load here would name it too).
        let named = standby.breaker.cell_count().min(256);
        if (1..named).any(|c| cell(c as u8) != c as u8) {
            from.accounts.renumber_cells(&mut cell);
            from.ledger.values_mut().for_each(|c| c.cell = cell(c.cell));
        }
        let adopted = (from.accounts.len() + from.ledger.len()) as u64;
        let i = self.shard_index(partition);
        let shard = &mut self.shards[i];
        shard.accounts.adopt(from.accounts);
        shard.ledger.extend(from.ledger);
        if let Some(book) = standby.books.remove(&partition) {
            self.books.insert(partition, book);
        }
        self.dedupe.absorb(standby.dedupe);
        if let Some(&m) = standby.max_event_ms.get(p as usize).filter(|&&m| m != i64::MIN) {
            let i = p as usize;
            if i >= self.max_event_ms.len() {
                self.max_event_ms.resize(i + 1, i64::MIN);
            }
            self.max_event_ms[i] = m;
        }
        adopted
    }

    /// After loading the changelog of `partitions` (before their first live event): the
    /// decisions their cooldowns record are replayed into the breaker (see `replay_decisions`).
    /// Returns how many decisions were replayed. (The event ids their records hold joined the
    /// dedupe memory as they loaded, so a re-sent event is still a duplicate.)
    pub fn after_load(&mut self, partitions: &[u32]) -> usize {
        self.replay_decisions(partitions)
    }

    /// Replays the decisions the cooldowns of `partitions` record into the breaker of a restarted
    /// engine, oldest first, at the time they were made, so the breaker comes back with the
    /// budget spent, the baselines learned and the cells open that were. Returns how many were
    /// replayed. An engine already live keeps its breaker (it holds that history already).
    fn replay_decisions(&mut self, partitions: &[u32]) -> usize {
        if self.live_started {
            return 0;
        }
        let mut decisions: Vec<(i64, u8)> = self
            .shards
            .iter()
            .flat_map(|s| s.ledger.values())
            .filter(|c| partitions.contains(&u32::from(c.partition)))
            .map(|c| (c.at_ms, c.cell))
            .collect();
        decisions.sort_unstable();
        for &(at, cell) in &decisions {
            let _ = self.breaker.check(cell, at);
        }
        self.breaker.drain_transitions();
        decisions.len()
    }

    /// The whole state as changelog records, sorted by partition and key: two engines with equal
    /// dumps decide alike. For tests and `resetguard` diagnostics, not per event.
    pub fn state_dump(&self) -> Vec<StateRecord> {
        let mut out: Vec<StateRecord> = Vec::new();
        for shard in &self.shards {
            let mut keys: Vec<u64> = shard.accounts.keys().chain(shard.ledger.keys().copied()).collect();
            keys.sort_unstable();
            keys.dedup();
            for key in keys {
                let mut buf = Vec::new();
                encode_account(&self.policy, &self.breaker, shard, key, changelog::VERSION, &mut buf);
                let p = shard
                    .accounts
                    .get(key)
                    .map(|a| a.partition)
                    .or_else(|| shard.ledger.get(&key).map(|c| c.partition));
                out.push((u32::from(p.unwrap_or(0)), changelog::account_key(key).to_vec(), Some(buf)));
            }
        }
        for (p, &m) in self.max_event_ms.iter().enumerate() {
            if m != i64::MIN {
                out.push((p as u32, changelog::WATERMARK_KEY.to_vec(), Some(changelog::encode_watermark(m).to_vec())));
            }
        }
        out.sort();
        out
    }

    /// A summary of [`Engine::state_dump`]: counts and a SHA-256 digest of the canonical dump
    /// (equal digests: equal state). For comparing an instance's state before and after a
    /// restore (`GET /admin/state`).
    pub fn state_summary(&self) -> StateSummary {
        use sha2::{Digest, Sha256};
        let dump = self.state_dump();
        let mut h = Sha256::new();
        let mut partitions = std::collections::BTreeSet::new();
        for (p, k, v) in &dump {
            partitions.insert(*p);
            h.update(p.to_le_bytes());
            h.update((k.len() as u32).to_le_bytes());
            h.update(k);
            let v = v.as_deref().unwrap_or_default();
            h.update((v.len() as u32).to_le_bytes());
            h.update(v);
        }
        let digest = h.finalize().iter().take(16).map(|b| format!("{b:02x}")).collect();
        StateSummary {
            accounts: self.tracked_accounts(),
            cooldowns: self.shards.iter().map(|s| s.ledger.len()).sum(),
            records: dump.len(),
            partitions: partitions.into_iter().collect(),
            digest,
        }
    }
}

fn apply_record(
    policy: &Policy,
    breaker: &mut Breaker,
    shard: &mut Shard,
    key: u64,
    p: u16,
    rec: &AccountRecord<'_>,
    copy: u32,
) {
    match &rec.window {
        Some(w) => {
            let mut ring: SmallVec<[Entry; 8]> = SmallVec::new();
            for e in &w.entries {
                // A signal the running policy no longer has counts no more.
                let Some(signal) = rec.name_of(e.signal).and_then(|n| policy.signal_index(n)) else {
                    continue;
                };
                let cell = breaker.cell_for(rec.name_of(e.cell).unwrap_or_default());
                ring.push(Entry { t: e.t, risk_q: e.risk_q, signal, cell });
            }
            let kinds = |names: &[u8]| {
                names
                    .iter()
                    .filter_map(|&i| rec.name_of(i).and_then(|n| policy.signal_index(n)))
                    .fold(0u32, |bits, s| bits | 1 << (u32::from(s) % 32))
            };
            let slow = Slow {
                cur: w.slow_cur,
                prev: w.slow_prev,
                bucket: w.slow_bucket,
                kinds_cur: kinds(&w.kinds_cur),
                kinds_prev: kinds(&w.kinds_prev),
            };
            let view = AccountView { partition: p, ring: &ring, ids: Some(&w.ids), slow, touched_s: w.touched_s };
            shard.accounts.put(key, view, copy);
            // Its new evidence ids reached the dedupe memory in `load_state`.
        }
        None => {
            shard.accounts.remove(key);
        }
    }
    match rec.cooldown {
        Some(c) => {
            let cell = breaker.cell_for(rec.name_of(c.cell).unwrap_or_default());
            shard.ledger.insert(key, Cooldown { until_s: c.until_s, partition: p, cell, at_ms: c.decided_at_ms, copy });
        }
        None => {
            shard.ledger.remove(&key);
        }
    }
}

/// Writes the account's record into `out`; false if the engine holds nothing for it.
fn encode_account(policy: &Policy, breaker: &Breaker, shard: &Shard, key: u64, version: u8, out: &mut Vec<u8>) -> bool {
    encode_state(policy, breaker, shard.accounts.get(key), shard.ledger.get(&key), version, None, out)
}

/// Writes an account's record (its window state, its cooldown) into `out`: of version 3 with
/// its names in a batch's `names` (record format 4), else of `version` with names of its own;
/// false if both are missing.
#[allow(clippy::too_many_arguments)]
fn encode_state(
    policy: &Policy,
    breaker: &Breaker,
    account: Option<AccountView<'_>>,
    cooldown: Option<&Cooldown>,
    version: u8,
    names: Option<&mut BatchNames>,
    out: &mut Vec<u8>,
) -> bool {
    if account.is_none() && cooldown.is_none() {
        return false;
    }
    let signal = |i: u8| policy.signals.get(i as usize).map_or("", |s| s.name.as_str());
    if let Some(names) = names {
        let cell = |c: u8| breaker.cell_name(c);
        let cooldown = cooldown.map(|c| CooldownRecord { until_s: c.until_s, decided_at_ms: c.at_ms, cell: c.cell });
        changelog::encode_named(account.as_ref(), cooldown.as_ref(), names, &signal, &cell, out);
        return true;
    }
    let mut r = AccountRecord::default();
    if let Some(a) = account {
        let mut entries = SmallVec::new();
        for e in a.ring {
            let (s, c) = (r.name(signal(e.signal)), r.name(breaker.cell_name(e.cell)));
            entries.push(RecEntry { t: e.t, risk_q: e.risk_q, signal: s, cell: c });
        }
        let mut kinds = |bits: u32| {
            (0..32u8).filter(|b| bits & (1 << b) != 0).map(|b| r.name(signal(b))).collect::<SmallVec<[u8; 8]>>()
        };
        let (kinds_cur, kinds_prev) = (kinds(a.slow.kinds_cur), kinds(a.slow.kinds_prev));
        r.window = Some(WindowRecord {
            touched_s: a.touched_s,
            slow_cur: a.slow.cur,
            slow_prev: a.slow.prev,
            slow_bucket: a.slow.bucket,
            kinds_cur,
            kinds_prev,
            entries,
            ids: Cow::Borrowed(a.ids.unwrap_or_default()),
        });
    }
    if let Some(c) = cooldown {
        let cell = r.name(breaker.cell_name(c.cell));
        r.cooldown = Some(CooldownRecord { until_s: c.until_s, decided_at_ms: c.at_ms, cell });
    }
    changelog::encode(&r, version, out);
    true
}

/// Remembers the ids in `ids` (packed evidence) that `before` (the account's previous evidence)
/// does not hold, so that each id is hashed once however many records repeat it.
fn remember_new_ids(dedupe: &mut Dedupe, seed: u64, before: Option<&[u8]>, ids: &[u8], at_ms: i64) {
    let mut id = String::new();
    for item in evidence::items(ids) {
        if before.is_some_and(|b| evidence::items(b).any(|old| old == item)) {
            continue;
        }
        evidence::write_item(item, &mut id);
        dedupe.seen_or_insert(id_hash(seed, &id), at_ms);
    }
}
