//! The changelog record format: what one account's state looks like on the compacted changelog
//! topic, and each input partition's watermark. Binary, little-endian, versioned; signals and
//! breaker cells are written by name (once per batch, or once per record), so a record means the
//! same after a policy change reorders signals or another instance interned its cells in another
//! order. Pure.
//!
//! Layout (documented for operators in `docs/changelog.md`):
//!
//! ```text
//! key   b'b' ++ batch number (u64, big-endian)     batch record, or a tombstone (no value)
//!       b'a' ++ account hash (u64, big-endian)     account record, or a tombstone (no value)
//!       b'w'                                      the partition's watermark record
//!
//! batch record, version 2 (record format 4, the default): many accounts' states in one record
//!   u8  batch version = 2
//!   then entries: u64 account hash, varint len (LEB128; 0: the account is gone),
//!                 len bytes account record of version 3 (below)
//!   then the name tables: u16 n, n × (varint len, len bytes UTF-8)   signals
//!                         u16 n, n × (varint len, len bytes UTF-8)   breaker cells
//!   u32 where the name tables begin (byte offset in the value)
//!
//! batch record, version 1 (record format 3)
//!   u8  batch version = 1
//!   then entries to the end: u64 account hash, u32 len (0xFFFF_FFFF: the account is gone),
//!                            len bytes account record of version 2 (below)
//!
//! account record, version 2 (formats 2 and 3; version 1 is still read)
//!   u8  version = 2
//!   u8  flags: 1 = window state follows, 2 = cooldown follows
//!   u8  n, then n × (u8 len, len bytes UTF-8)       names the record refers to by index
//!   window:   u32 touched_s, f32 slow_cur, f32 slow_prev, u32 slow_bucket,
//!             u8 n, n × u8 name   (signal kinds of the current slow bucket)
//!             u8 n, n × u8 name   (signal kinds of the previous slow bucket)
//!             u8 n, n × (u32 t_s, u16 risk_q, u8 signal name, u8 cell name)
//!             u16 len, len bytes   (newest evidence ids, oldest first, packed as in
//!                                   `core::evidence`: a UUID in 17 bytes; version 1: the
//!                                   ids as text joined by '\n')
//!   cooldown: u32 until_s (event time), i64 decided_at_ms (engine clock), u8 cell name
//!
//! account record, version 3 (only inside a batch of version 2): version 2 without the version
//! byte and the names; a signal is an index into the batch's signal table, a cell into its cell
//! table, and the evidence ids' length is a varint
//!
//! watermark record, version 1
//!   u8 version = 1, i64 newest event time of the partition (ms)
//! ```

use std::borrow::Cow;

use smallvec::SmallVec;

use super::accounts::AccountView;
use super::evidence;

/// Version of the account records written.
pub const VERSION: u8 = 2;
/// The first version: evidence ids as text.
const VERSION_1: u8 = 1;
/// Record format 3: account records of version 2 inside batch records of version 1.
pub const BATCHED: u8 = 3;
/// Record format 4 (the default written): batch records of version 2, whose account records
/// (version 3) name signals and cells by index into the batch's name tables.
pub const NAMED_BATCHES: u8 = 4;
/// Record formats that can be written (`pipeline.changelog_record_version`; every one is read):
/// 1 and 2 one Kafka record per account, 3 and 4 batches of them.
pub const WRITABLE_VERSIONS: [u8; 4] = [VERSION_1, VERSION, BATCHED, NAMED_BATCHES];
/// Version of the account records inside batches of version 2 (never a record of its own).
const NAMED_RECORD: u8 = 3;
/// Version of the batch records of format 3.
const BATCH_VERSION: u8 = 1;
/// Version of the batch records of format 4 (name tables at the end).
const NAMED_BATCH_VERSION: u8 = 2;
/// An entry's length that says the account is gone (batch version 1).
const GONE: u32 = u32::MAX;

/// Whether record format `version` writes batch records.
pub fn batched(version: u8) -> bool {
    version >= BATCHED
}
/// Version of the watermark records.
const WATERMARK_VERSION: u8 = 1;
const HAS_WINDOW: u8 = 1;
const HAS_COOLDOWN: u8 = 2;
pub const WATERMARK_KEY: &[u8] = b"w";

/// What a changelog key names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// A batch of account states (its number; the numbers of a partition grow with the log).
    Batch(u64),
    Account(u64),
    Watermark,
    /// Not a state record (a producer fence, or a record of a newer version): skipped.
    Other,
}

pub fn account_key(key: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'a';
    k[1..].copy_from_slice(&key.to_be_bytes());
    k
}

pub fn batch_key(number: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = b'b';
    k[1..].copy_from_slice(&number.to_be_bytes());
    k
}

pub fn parse_key(k: &[u8]) -> Key {
    match k {
        [b'b', rest @ ..] if rest.len() == 8 => Key::Batch(u64::from_be_bytes(rest.try_into().unwrap_or_default())),
        [b'a', rest @ ..] if rest.len() == 8 => Key::Account(u64::from_be_bytes(rest.try_into().unwrap_or_default())),
        b"w" => Key::Watermark,
        _ => Key::Other,
    }
}

/// One entry of the short window, names by index into [`AccountRecord::names`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecEntry {
    pub t: u32,
    pub risk_q: u16,
    pub signal: u8,
    pub cell: u8,
}

#[derive(Debug, Clone, PartialEq)]
pub struct WindowRecord<'a> {
    pub touched_s: u32,
    pub slow_cur: f32,
    pub slow_prev: f32,
    pub slow_bucket: u32,
    pub kinds_cur: SmallVec<[u8; 8]>,
    pub kinds_prev: SmallVec<[u8; 8]>,
    pub entries: SmallVec<[RecEntry; 4]>,
    /// Evidence ids, packed ([`evidence`]).
    pub ids: Cow<'a, [u8]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CooldownRecord {
    pub until_s: u32,
    pub decided_at_ms: i64,
    pub cell: u8,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct AccountRecord<'a> {
    pub names: SmallVec<[&'a str; 8]>,
    pub window: Option<WindowRecord<'a>>,
    pub cooldown: Option<CooldownRecord>,
}

impl<'a> AccountRecord<'a> {
    /// Index of `name` in the record's name table, added if missing.
    pub fn name(&mut self, name: &'a str) -> u8 {
        match self.names.iter().position(|n| *n == name) {
            Some(i) => i as u8,
            None => {
                self.names.push(name);
                (self.names.len() - 1) as u8
            }
        }
    }

    pub fn name_of(&self, i: u8) -> Option<&'a str> {
        self.names.get(i as usize).copied()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("changelog record version {0} is not known to this version of resetguard")]
    Version(u8),
    #[error("changelog record truncated at byte {0}")]
    Truncated(usize),
    #[error("changelog record has a name that is not UTF-8")]
    Utf8,
    #[error("changelog record refers to name {0}, past its name table")]
    Name(u8),
    #[error("changelog record's evidence ids are not well-formed")]
    Evidence,
    #[error("changelog record has bytes left over at byte {0}")]
    Trailing(usize),
}

/// Appends the record to `out` as `version` (one of [`WRITABLE_VERSIONS`]; version 1 writes the
/// evidence ids as text joined by '\n', for readers that know only version 1).
pub fn encode(r: &AccountRecord<'_>, version: u8, out: &mut Vec<u8>) {
    let version = if version == VERSION_1 { VERSION_1 } else { VERSION };
    let flags = if r.window.is_some() { HAS_WINDOW } else { 0 } | if r.cooldown.is_some() { HAS_COOLDOWN } else { 0 };
    out.push(version);
    out.push(flags);
    out.push(r.names.len().min(255) as u8);
    for n in r.names.iter().take(255) {
        let b = &n.as_bytes()[..n.len().min(255)];
        out.push(b.len() as u8);
        out.extend_from_slice(b);
    }
    if let Some(w) = &r.window {
        out.extend_from_slice(&w.touched_s.to_le_bytes());
        out.extend_from_slice(&w.slow_cur.to_le_bytes());
        out.extend_from_slice(&w.slow_prev.to_le_bytes());
        out.extend_from_slice(&w.slow_bucket.to_le_bytes());
        for kinds in [&w.kinds_cur, &w.kinds_prev] {
            out.push(kinds.len().min(255) as u8);
            out.extend(kinds.iter().take(255));
        }
        out.push(w.entries.len().min(255) as u8);
        for e in w.entries.iter().take(255) {
            out.extend_from_slice(&e.t.to_le_bytes());
            out.extend_from_slice(&e.risk_q.to_le_bytes());
            out.push(e.signal);
            out.push(e.cell);
        }
        // At most 10 ids of at most 515 bytes each: far below the u16 length.
        let text;
        let ids: &[u8] = if version == VERSION_1 {
            text = evidence::to_strings(&w.ids).join("\n");
            text.as_bytes()
        } else {
            &w.ids
        };
        let ids = &ids[..ids.len().min(u16::MAX as usize)];
        out.extend_from_slice(&(ids.len() as u16).to_le_bytes());
        out.extend_from_slice(ids);
    }
    if let Some(c) = &r.cooldown {
        out.extend_from_slice(&c.until_s.to_le_bytes());
        out.extend_from_slice(&c.decided_at_ms.to_le_bytes());
        out.push(c.cell);
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self.at.checked_add(n).ok_or(DecodeError::Truncated(self.at))?;
        let s = self.b.get(self.at..end).ok_or(DecodeError::Truncated(self.at))?;
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }
    fn arr<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn str(&mut self, n: usize) -> Result<&'a str, DecodeError> {
        std::str::from_utf8(self.take(n)?).map_err(|_| DecodeError::Utf8)
    }
    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let b = self.u8()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError::Truncated(self.at))
    }
}

pub fn decode(bytes: &[u8]) -> Result<AccountRecord<'_>, DecodeError> {
    let mut r = Reader { b: bytes, at: 0 };
    let version = r.u8()?;
    if version != VERSION && version != VERSION_1 {
        return Err(DecodeError::Version(version));
    }
    let flags = r.u8()?;
    let mut rec = AccountRecord::default();
    for _ in 0..r.u8()? {
        let n = r.u8()? as usize;
        rec.names.push(r.str(n)?);
    }
    decode_state(&mut r, version, flags, None, rec)
}

/// Reads an account record of version 3 with its batch's name tables; the result names what it
/// refers to in a table of its own, as version 2 does.
fn decode_named<'a>(bytes: &'a [u8], signals: &[&'a str], cells: &[&'a str]) -> Result<AccountRecord<'a>, DecodeError> {
    let mut r = Reader { b: bytes, at: 0 };
    let flags = r.u8()?;
    let rec = decode_state(&mut r, NAMED_RECORD, flags, Some((signals, cells)), AccountRecord::default())?;
    if r.at != bytes.len() {
        return Err(DecodeError::Trailing(r.at));
    }
    Ok(rec)
}

/// Reads the window state and the cooldown of an account record of `version` after its header.
/// A name index refers to `rec`'s own table (`tables` none, versions 1 and 2), or to the batch's
/// signal or cell table (version 3), whose names join `rec`'s table as they are read.
fn decode_state<'a>(
    r: &mut Reader<'a>,
    version: u8,
    flags: u8,
    tables: Option<(&[&'a str], &[&'a str])>,
    mut rec: AccountRecord<'a>,
) -> Result<AccountRecord<'a>, DecodeError> {
    // 0: a signal, 1: a cell.
    let name = |rec: &mut AccountRecord<'a>, kind: usize, i: u8| match tables {
        None if (i as usize) < rec.names.len() => Ok(i),
        None => Err(DecodeError::Name(i)),
        Some(t) => {
            let table = if kind == 0 { t.0 } else { t.1 };
            let n = table.get(i as usize).ok_or(DecodeError::Name(i))?;
            // A record's own table holds 256 names: one more would wrap its index.
            let at = rec.name(n);
            if rec.name_of(at) == Some(*n) {
                Ok(at)
            } else {
                Err(DecodeError::Name(i))
            }
        }
    };
    if flags & HAS_WINDOW != 0 {
        let touched_s = u32::from_le_bytes(r.arr()?);
        let slow_cur = f32::from_le_bytes(r.arr()?);
        let slow_prev = f32::from_le_bytes(r.arr()?);
        let slow_bucket = u32::from_le_bytes(r.arr()?);
        let mut kinds = [SmallVec::new(), SmallVec::new()];
        for k in &mut kinds {
            for _ in 0..r.u8()? {
                let i = r.u8()?;
                k.push(name(&mut rec, 0, i)?);
            }
        }
        let [kinds_cur, kinds_prev] = kinds;
        let mut entries = SmallVec::new();
        for _ in 0..r.u8()? {
            let t = u32::from_le_bytes(r.arr()?);
            let risk_q = u16::from_le_bytes(r.arr()?);
            let (s, c) = (r.u8()?, r.u8()?);
            let signal = name(&mut rec, 0, s)?;
            let cell = name(&mut rec, 1, c)?;
            entries.push(RecEntry { t, risk_q, signal, cell });
        }
        let n = if version == NAMED_RECORD {
            usize::try_from(r.varint()?).map_err(|_| DecodeError::Truncated(r.at))?
        } else {
            u16::from_le_bytes(r.arr()?) as usize
        };
        let ids = if version == VERSION_1 {
            Cow::Owned(evidence::from_joined(r.str(n)?))
        } else {
            let packed = r.take(n)?;
            if evidence::items(packed).map(<[u8]>::len).sum::<usize>() != n {
                return Err(DecodeError::Evidence);
            }
            Cow::Borrowed(packed)
        };
        rec.window =
            Some(WindowRecord { touched_s, slow_cur, slow_prev, slow_bucket, kinds_cur, kinds_prev, entries, ids });
    }
    if flags & HAS_COOLDOWN != 0 {
        let until_s = u32::from_le_bytes(r.arr()?);
        let decided_at_ms = i64::from_le_bytes(r.arr()?);
        let c = r.u8()?;
        let cell = name(&mut rec, 1, c)?;
        rec.cooldown = Some(CooldownRecord { until_s, decided_at_ms, cell });
    }
    Ok(rec)
}

/// A batch record being written: entries are appended in place (no copy per account).
/// [`BatchWriter::named`] writes batch version 2 (record format 4), else version 1.
#[derive(Debug, Default)]
pub struct BatchWriter {
    buf: Vec<u8>,
    entries: u32,
    /// The name tables (batch version 2).
    names: Option<Box<BatchNames>>,
    /// The name tables are written at the end of `buf`.
    finished: bool,
}

/// The name tables of a batch being written: the engine's signal and cell ids to indices in
/// the batch's tables, each name written once.
#[derive(Debug)]
pub struct BatchNames {
    /// Engine id to table index + 1 (0: not in the table yet).
    signals: [u16; 256],
    cells: [u16; 256],
    /// `varint len, bytes` per name, in index order.
    signal_table: Vec<u8>,
    cell_table: Vec<u8>,
    signal_count: u16,
    cell_count: u16,
}

impl Default for BatchNames {
    fn default() -> Self {
        BatchNames {
            signals: [0; 256],
            cells: [0; 256],
            signal_table: Vec::new(),
            cell_table: Vec::new(),
            signal_count: 0,
            cell_count: 0,
        }
    }
}

impl BatchNames {
    /// The table index of the engine's signal `id` (named by `name` if new).
    pub fn signal<'n>(&mut self, id: u8, name: impl FnOnce(u8) -> &'n str) -> u8 {
        Self::index(&mut self.signals[id as usize], &mut self.signal_table, &mut self.signal_count, || name(id))
    }

    /// The table index of the engine's cell `id` (named by `name` if new).
    pub fn cell<'n>(&mut self, id: u8, name: impl FnOnce(u8) -> &'n str) -> u8 {
        Self::index(&mut self.cells[id as usize], &mut self.cell_table, &mut self.cell_count, || name(id))
    }

    fn index<'n>(slot: &mut u16, table: &mut Vec<u8>, count: &mut u16, name: impl FnOnce() -> &'n str) -> u8 {
        if *slot == 0 {
            let n = name();
            put_varint(n.len() as u64, table);
            table.extend_from_slice(n.as_bytes());
            // At most 256 ids of each kind: the index fits a byte.
            *count += 1;
            *slot = *count;
        }
        (*slot - 1) as u8
    }

    fn write(&self, out: &mut Vec<u8>) {
        for (count, table) in [(self.signal_count, &self.signal_table), (self.cell_count, &self.cell_table)] {
            out.extend_from_slice(&count.to_le_bytes());
            out.extend_from_slice(table);
        }
    }

    fn clear(&mut self) {
        self.signals.fill(0);
        self.cells.fill(0);
        self.signal_table.clear();
        self.cell_table.clear();
        self.signal_count = 0;
        self.cell_count = 0;
    }
}

impl BatchWriter {
    /// A writer of batch version 2 (record format 4): names once per batch.
    pub fn named() -> Self {
        BatchWriter { names: Some(Box::default()), ..Default::default() }
    }

    /// Whether it writes batch version 2.
    pub fn is_named(&self) -> bool {
        self.names.is_some()
    }

    /// Appends an account's record if `record` writes one into the buffer (returns true); else
    /// appends nothing. `record` gets the batch's name tables when it has them (batch version 2:
    /// a record of version 3, [`encode_named`]); without them it writes a record of version 2.
    /// The entry's length goes before it, as the batch's version writes lengths.
    pub fn put(&mut self, key: u64, record: impl FnOnce(&mut Vec<u8>, Option<&mut BatchNames>) -> bool) -> bool {
        let (start, entries) = (self.buf.len(), self.entries);
        self.start_entry(key);
        let at = self.buf.len();
        // Version 2: the length as a varint, one byte reserved and widened when longer.
        let reserved = if self.names.is_some() { 1 } else { 4 };
        self.buf.resize(at + reserved, 0);
        if !record(&mut self.buf, self.names.as_deref_mut()) {
            self.buf.truncate(start);
            self.entries = entries;
            return false;
        }
        let len = self.buf.len() - at - reserved;
        if self.names.is_some() {
            let mut v = [0u8; 10];
            let n = varint(len as u64, &mut v);
            if n > 1 {
                // Longer than the reserved byte (a record of 128 bytes or more): move it along.
                let end = self.buf.len();
                self.buf.resize(end + n - 1, 0);
                self.buf.copy_within(at + 1..end, at + n);
            }
            self.buf[at..at + n].copy_from_slice(&v[..n]);
        } else {
            self.buf[at..at + 4].copy_from_slice(&(len as u32).to_le_bytes());
        }
        true
    }

    /// Appends that the account is gone.
    pub fn gone(&mut self, key: u64) {
        self.start_entry(key);
        if self.names.is_some() {
            self.buf.push(0);
        } else {
            self.buf.extend_from_slice(&GONE.to_le_bytes());
        }
    }

    fn start_entry(&mut self, key: u64) {
        debug_assert!(!self.finished, "an entry after the batch's value was taken");
        if self.buf.is_empty() {
            self.buf.push(if self.names.is_some() { NAMED_BATCH_VERSION } else { BATCH_VERSION });
        }
        self.buf.extend_from_slice(&key.to_le_bytes());
        self.entries += 1;
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }

    /// Bytes of the record so far (with a named batch's tables and their offset).
    pub fn bytes(&self) -> usize {
        match (&self.names, self.finished) {
            (Some(n), false) if !self.buf.is_empty() => {
                self.buf.len() + 2 + n.signal_table.len() + 2 + n.cell_table.len() + 4
            }
            _ => self.buf.len(),
        }
    }

    /// The record's value: its entries, then (batch version 2) its name tables. No entry may
    /// follow until [`BatchWriter::clear`].
    pub fn finish(&mut self) -> &[u8] {
        if let (Some(names), false) = (&self.names, self.finished) {
            let at = self.buf.len() as u32;
            names.write(&mut self.buf);
            self.buf.extend_from_slice(&at.to_le_bytes());
            self.finished = true;
        }
        &self.buf
    }

    /// Empties it for the next record, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.entries = 0;
        self.finished = false;
        if let Some(names) = &mut self.names {
            names.clear();
        }
    }
}

/// LEB128: 7 bits per byte, low first, the high bit set on all but the last. Returns the bytes
/// used.
fn varint(mut v: u64, out: &mut [u8; 10]) -> usize {
    let mut n = 0;
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out[n] = b;
            return n + 1;
        }
        out[n] = b | 0x80;
        n += 1;
    }
}

fn put_varint(v: u64, out: &mut Vec<u8>) {
    let mut b = [0u8; 10];
    let n = varint(v, &mut b);
    out.extend_from_slice(&b[..n]);
}

/// Appends an account's state as an account record of version 3 (inside a batch of version 2):
/// signals and cells, given by the engine's ids, are written as indices into `names`. `signal`
/// and `cell` name the engine's ids.
pub fn encode_named<'n>(
    window: Option<&AccountView<'_>>,
    cooldown: Option<&CooldownRecord>,
    names: &mut BatchNames,
    signal: &dyn Fn(u8) -> &'n str,
    cell: &dyn Fn(u8) -> &'n str,
    out: &mut Vec<u8>,
) {
    let flags = if window.is_some() { HAS_WINDOW } else { 0 } | if cooldown.is_some() { HAS_COOLDOWN } else { 0 };
    // The fixed-size parts are written a block at a time, into room reserved once.
    let ids = window.and_then(|w| w.ids).unwrap_or_default();
    let ring = window.map_or(0, |w| w.ring.len().min(255));
    out.reserve(1 + 16 + 2 + 64 + 1 + ring * 8 + 10 + ids.len() + 13);
    out.push(flags);
    if let Some(w) = window {
        let mut head = [0u8; 16];
        head[0..4].copy_from_slice(&w.touched_s.to_le_bytes());
        head[4..8].copy_from_slice(&w.slow.cur.to_le_bytes());
        head[8..12].copy_from_slice(&w.slow.prev.to_le_bytes());
        head[12..16].copy_from_slice(&w.slow.bucket.to_le_bytes());
        out.extend_from_slice(&head);
        for mut bits in [w.slow.kinds_cur, w.slow.kinds_prev] {
            out.push(bits.count_ones() as u8);
            while bits != 0 {
                let b = bits.trailing_zeros() as u8;
                bits &= bits - 1;
                out.push(names.signal(b, signal));
            }
        }
        out.push(ring as u8);
        for e in w.ring.iter().take(255) {
            let t = e.t.to_le_bytes();
            let r = e.risk_q.to_le_bytes();
            let entry = [t[0], t[1], t[2], t[3], r[0], r[1], names.signal(e.signal, signal), names.cell(e.cell, cell)];
            out.extend_from_slice(&entry);
        }
        put_varint(ids.len() as u64, out);
        out.extend_from_slice(ids);
    }
    if let Some(c) = cooldown {
        let mut tail = [0u8; 13];
        tail[0..4].copy_from_slice(&c.until_s.to_le_bytes());
        tail[4..12].copy_from_slice(&c.decided_at_ms.to_le_bytes());
        tail[12] = names.cell(c.cell, cell);
        out.extend_from_slice(&tail);
    }
}

/// A batch record being read ([`read_batch`]).
#[derive(Debug)]
pub struct Batch<'a> {
    /// The entries (after the version byte, before a version 2 batch's tables).
    body: &'a [u8],
    named: bool,
    signals: SmallVec<[&'a str; 16]>,
    cells: SmallVec<[&'a str; 16]>,
    /// The record cannot be read at all.
    failed: Option<DecodeError>,
}

/// Reads a batch record's header (and a version 2 batch's name tables); its entries come from
/// [`Batch::entries`].
pub fn read_batch(v: &[u8]) -> Batch<'_> {
    let mut b = Batch { body: &[], named: false, signals: SmallVec::new(), cells: SmallVec::new(), failed: None };
    match v.first() {
        None => b.failed = Some(DecodeError::Truncated(0)),
        Some(&BATCH_VERSION) => b.body = &v[1..],
        Some(&NAMED_BATCH_VERSION) => {
            b.named = true;
            if let Err(e) = b.read_tables(v) {
                b.failed = Some(e);
            }
        }
        Some(&other) => b.failed = Some(DecodeError::Version(other)),
    }
    b
}

impl<'a> Batch<'a> {
    fn read_tables(&mut self, v: &'a [u8]) -> Result<(), DecodeError> {
        let tail = v.len().checked_sub(4).filter(|&t| t >= 1).ok_or(DecodeError::Truncated(v.len()))?;
        let at = u32::from_le_bytes(v[tail..].try_into().unwrap_or_default()) as usize;
        if at < 1 || at > tail {
            return Err(DecodeError::Truncated(v.len()));
        }
        self.body = &v[1..at];
        let mut r = Reader { b: &v[..tail], at };
        for table in [&mut self.signals, &mut self.cells] {
            for _ in 0..u16::from_le_bytes(r.arr()?) {
                let n = usize::try_from(r.varint()?).map_err(|_| DecodeError::Truncated(r.at))?;
                table.push(r.str(n)?);
            }
        }
        if r.at != tail {
            return Err(DecodeError::Trailing(r.at));
        }
        Ok(())
    }

    /// The entries, in order; an error ends them (what came before is good).
    pub fn entries(&self) -> impl Iterator<Item = Result<BatchEntry<'_>, DecodeError>> + '_ {
        let mut r = Reader { b: self.body, at: 0 };
        let mut failed = self.failed.clone();
        let names = self.named.then_some((&self.signals[..], &self.cells[..]));
        std::iter::from_fn(move || {
            if let Some(e) = failed.take() {
                r.at = r.b.len();
                return Some(Err(e));
            }
            if r.at >= r.b.len() {
                return None;
            }
            let entry = (|| {
                let key = u64::from_le_bytes(r.arr()?);
                let len = match names {
                    Some(_) => match r.varint()? {
                        0 => return Ok(BatchEntry::Gone(key)),
                        n => usize::try_from(n).map_err(|_| DecodeError::Truncated(r.at))?,
                    },
                    None => match u32::from_le_bytes(r.arr()?) {
                        GONE => return Ok(BatchEntry::Gone(key)),
                        n => n as usize,
                    },
                };
                Ok(BatchEntry::Put(key, Stored { bytes: r.take(len)?, names }))
            })();
            if entry.is_err() {
                r.at = r.b.len();
            }
            Some(entry)
        })
    }
}

/// One entry of a batch record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEntry<'a> {
    /// The account's state.
    Put(u64, Stored<'a>),
    Gone(u64),
}

/// An account record as stored in a batch: version 2 (batch version 1), or version 3 with the
/// batch's name tables (batch version 2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored<'a> {
    bytes: &'a [u8],
    names: Option<(&'a [&'a str], &'a [&'a str])>,
}

impl<'a> Stored<'a> {
    pub fn decode(&self) -> Result<AccountRecord<'a>, DecodeError> {
        match self.names {
            Some((signals, cells)) => decode_named(self.bytes, signals, cells),
            None => decode(self.bytes),
        }
    }

    /// The record's bytes as stored.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }
}

pub fn encode_watermark(newest_event_ms: i64) -> [u8; 9] {
    let mut v = [0u8; 9];
    v[0] = WATERMARK_VERSION;
    v[1..].copy_from_slice(&newest_event_ms.to_le_bytes());
    v
}

pub fn decode_watermark(v: &[u8]) -> Result<i64, DecodeError> {
    match v {
        [WATERMARK_VERSION, rest @ ..] if rest.len() == 8 => {
            Ok(i64::from_le_bytes(rest.try_into().unwrap_or_default()))
        }
        [WATERMARK_VERSION, ..] => Err(DecodeError::Truncated(v.len())),
        [other, ..] => Err(DecodeError::Version(*other)),
        [] => Err(DecodeError::Truncated(0)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::accounts::{Entry, Slow};

    fn sample<'a>() -> AccountRecord<'a> {
        let mut r = AccountRecord::default();
        let s = r.name("credential_stuffing");
        let c = r.name("auth-service");
        let d = r.name("new_device");
        r.window = Some(WindowRecord {
            touched_s: 1_700_000_000,
            slow_cur: 0.75,
            slow_prev: 0.25,
            slow_bucket: 19_675,
            kinds_cur: SmallVec::from_slice(&[s, d]),
            kinds_prev: SmallVec::from_slice(&[d]),
            entries: SmallVec::from_slice(&[
                RecEntry { t: 1_699_999_000, risk_q: 65535, signal: s, cell: c },
                RecEntry { t: 1_699_999_100, risk_q: 12, signal: d, cell: c },
            ]),
            ids: Cow::Owned(evidence::from_joined("e-1\ne-2")),
        });
        r.cooldown = Some(CooldownRecord { until_s: 1_700_086_400, decided_at_ms: 1_700_000_000_123, cell: c });
        r
    }

    #[test]
    fn an_account_record_round_trips() {
        let mut buf = Vec::new();
        let r = sample();
        encode(&r, VERSION, &mut buf);
        assert_eq!(decode(&buf).unwrap(), r);
        // One window entry costs 8 bytes; names are written once per record.
        assert_eq!(buf.len(), 3 + (1 + 19) + (1 + 12) + (1 + 10) + 16 + 3 + 2 + 1 + 16 + 2 + 8 + 13);
    }

    #[test]
    fn a_version_1_record_with_text_ids_is_still_read() {
        let mut buf = Vec::new();
        encode(&sample(), VERSION, &mut buf);
        // The same record as version 1 wrote it: the ids field as text joined by '\n'.
        let ids_at = buf.len() - 13 - 8;
        let mut v1 = buf[..ids_at - 2].to_vec();
        v1[0] = 1;
        v1.extend_from_slice(&7u16.to_le_bytes());
        v1.extend_from_slice(b"e-1\ne-2");
        v1.extend_from_slice(&buf[buf.len() - 13..]);
        assert_eq!(decode(&v1).unwrap(), sample());
        // And written as version 1 when asked (a rolling upgrade): the same bytes.
        let mut written = Vec::new();
        encode(&sample(), 1, &mut written);
        assert_eq!(written, v1);
        // A packed field whose items do not fill it is refused.
        let mut bad = buf.clone();
        bad[ids_at] = 9;
        assert_eq!(decode(&bad), Err(DecodeError::Evidence));
    }

    #[test]
    fn cooldown_only_and_empty_records_round_trip() {
        let mut buf = Vec::new();
        let mut r = sample();
        r.window = None;
        encode(&r, VERSION, &mut buf);
        assert_eq!(decode(&buf).unwrap(), r);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let mut buf = Vec::new();
        encode(&sample(), VERSION, &mut buf);
        for n in 0..buf.len() {
            assert!(decode(&buf[..n]).is_err(), "prefix of {n} bytes decoded");
        }
    }

    #[test]
    fn unknown_versions_and_dangling_names_are_refused() {
        let mut buf = Vec::new();
        encode(&sample(), VERSION, &mut buf);
        buf[0] = 3;
        assert_eq!(decode(&buf), Err(DecodeError::Version(3)));
        let mut r = sample();
        r.cooldown.as_mut().unwrap().cell = 9;
        let mut buf = Vec::new();
        encode(&r, VERSION, &mut buf);
        assert_eq!(decode(&buf), Err(DecodeError::Name(9)));
    }

    /// The entries as (key, stored bytes or gone).
    fn entries(v: &[u8]) -> Vec<Result<(u64, Option<Vec<u8>>), DecodeError>> {
        let b = read_batch(v);
        let e = b.entries().map(|e| {
            e.map(|e| match e {
                BatchEntry::Put(k, s) => (k, Some(s.bytes().to_vec())),
                BatchEntry::Gone(k) => (k, None),
            })
        });
        e.collect()
    }

    #[test]
    fn a_batch_round_trips_and_a_damaged_one_stops_at_the_damage() {
        let mut w = BatchWriter::default();
        let mut one = Vec::new();
        encode(&sample(), VERSION, &mut one);
        w.put(7, |out, _| {
            encode(&sample(), VERSION, out);
            true
        });
        w.gone(9);
        w.put(u64::MAX - 1, |out, _| {
            out.extend_from_slice(b"x");
            true
        });
        assert!(!w.put(5, |out, _| {
            out.extend_from_slice(b"half-written");
            false
        }));
        assert_eq!(w.entries(), 3);
        let v = w.finish().to_vec();
        assert_eq!(
            entries(&v),
            vec![Ok((7, Some(one.clone()))), Ok((9, None)), Ok((u64::MAX - 1, Some(b"x".to_vec())))]
        );
        let b = read_batch(&v);
        let first = b.entries().next().unwrap().unwrap();
        let BatchEntry::Put(_, s) = first else { panic!("{first:?}") };
        assert_eq!(s.decode().unwrap(), sample());
        // Every truncation yields the entries before it, then one error (unless it falls
        // between two entries), never a panic.
        let ends = [1, 1 + 12 + one.len(), 1 + 12 + one.len() + 12];
        for n in 1..v.len() {
            let got = entries(&v[..n]);
            let ok = got.iter().take_while(|e| e.is_ok()).count();
            match ends.iter().position(|&e| e == n) {
                Some(whole) => assert!(got.len() == whole && ok == whole, "prefix of {n} bytes: {got:?}"),
                None => assert!(ok < 3 && got.len() == ok + 1, "prefix of {n} bytes: {got:?}"),
            }
        }
        assert_eq!(entries(&[]).len(), 1);
        assert_eq!(entries(&[3, 0]), vec![Err(DecodeError::Version(3))]);
        w.clear();
        assert_eq!((w.entries(), w.bytes()), (0, 0));
    }

    fn view<'a>(ring: &'a [Entry], ids: &'a [u8]) -> AccountView<'a> {
        AccountView {
            partition: 0,
            ring,
            ids: Some(ids),
            slow: Slow { cur: 0.75, prev: 0.25, bucket: 19_675, kinds_cur: 0b1001, kinds_prev: 0b1000 },
            touched_s: 1_700_000_000,
        }
    }

    /// A batch of version 2 writes each name once, and its records read back as the same
    /// account records a version 2 record holds.
    #[test]
    fn a_named_batch_writes_each_name_once_and_reads_back_the_same_records() {
        let signals = ["credential_stuffing", "x1", "x2", "new_device"];
        let cells = ["auth-service", "device-intel"];
        let signal = |i: u8| signals[i as usize];
        let cell = |i: u8| cells[i as usize];
        let ids = evidence::from_joined("e-1\ne-2");
        let ring = [
            Entry { t: 1_699_999_000, risk_q: 65535, signal: 0, cell: 0 },
            Entry { t: 1_699_999_100, risk_q: 12, signal: 3, cell: 0 },
        ];
        let cooldown = CooldownRecord { until_s: 1_700_086_400, decided_at_ms: 1_700_000_000_123, cell: 0 };
        let mut w = BatchWriter::named();
        for key in [7, 8] {
            assert!(w.put(key, |out, names| {
                encode_named(Some(&view(&ring, &ids)), Some(&cooldown), names.unwrap(), &signal, &cell, out);
                true
            }));
        }
        w.gone(9);
        // A cooldown of another cell only; a long record (its length takes two bytes).
        let long_ids: Vec<u8> = (0..10)
            .flat_map(|i| {
                let mut b = Vec::new();
                evidence::push(&mut b, &format!("{i:0>40}"));
                b
            })
            .collect();
        let other = CooldownRecord { cell: 1, ..cooldown };
        w.put(10, |out, names| {
            encode_named(None, Some(&other), names.unwrap(), &signal, &cell, out);
            true
        });
        w.put(11, |out, names| {
            encode_named(Some(&view(&ring, &long_ids)), None, names.unwrap(), &signal, &cell, out);
            true
        });
        assert!(!w.put(12, |out, _| {
            out.push(1);
            false
        }));
        assert_eq!(w.entries(), 5);
        let v = w.finish().to_vec();
        assert_eq!(w.finish(), &v[..], "finishing twice adds nothing");
        for name in ["credential_stuffing", "new_device", "auth-service", "device-intel"] {
            assert_eq!(v.windows(name.len()).filter(|b| *b == name.as_bytes()).count(), 1, "{name}");
        }
        let b = read_batch(&v);
        let got: Vec<_> = b.entries().map(|e| e.unwrap()).collect();
        let keys: Vec<u64> = got
            .iter()
            .map(|e| match e {
                BatchEntry::Put(k, _) | BatchEntry::Gone(k) => *k,
            })
            .collect();
        assert_eq!(keys, [7, 8, 9, 10, 11]);
        let rec = |i: usize| match got[i] {
            BatchEntry::Put(_, s) => s.decode().unwrap(),
            gone => panic!("{gone:?}"),
        };
        assert_eq!(resolved(&rec(0)), resolved(&sample()));
        assert_eq!(resolved(&rec(1)), resolved(&sample()));
        let mut cooldown_only = AccountRecord::default();
        let c = cooldown_only.name("device-intel");
        cooldown_only.cooldown = Some(CooldownRecord { cell: c, ..cooldown });
        assert_eq!(rec(3), cooldown_only);
        assert_eq!(rec(4).window.unwrap().ids.as_ref(), &long_ids[..]);
        // The same record as version 2 is larger by its version byte, its names, and the
        // second byte of its ids' length.
        let mut v2 = Vec::new();
        encode(&sample(), VERSION, &mut v2);
        let BatchEntry::Put(_, s) = got[0] else { unreachable!() };
        assert_eq!(v2.len() - s.bytes().len(), 1 + 1 + (1 + 19) + (1 + 12) + (1 + 10) + 1);
        // Any truncation of the whole value loses its tables: an error, never a panic.
        for n in 0..v.len() {
            assert!(entries(&v[..n]).iter().any(Result::is_err), "prefix of {n} bytes");
        }
        // The entries cut anywhere, with the tables and their offset intact: the whole entries
        // before the cut decode as written, then one error (or nothing, at an entry's end).
        let at = u32::from_le_bytes(v[v.len() - 4..].try_into().unwrap()) as usize;
        let whole: Vec<_> = entries(&v).into_iter().map(Result::unwrap).collect();
        for cut in 1..at {
            let mut c = v[..cut].to_vec();
            c.extend_from_slice(&v[at..v.len() - 4]);
            c.extend_from_slice(&(cut as u32).to_le_bytes());
            let got = entries(&c);
            let ok: Vec<_> = got.iter().take_while(|e| e.is_ok()).map(|e| e.clone().unwrap()).collect();
            assert_eq!(ok[..], whole[..ok.len()], "cut at {cut}");
            assert!(got.len() <= ok.len() + 1, "cut at {cut}: {got:?}");
            let b = read_batch(&c);
            for e in b.entries().flatten() {
                if let BatchEntry::Put(_, s) = e {
                    let _ = s.decode();
                }
            }
        }
        // A length near u64::MAX is an error, not an overflow.
        let mut huge = vec![NAMED_BATCH_VERSION];
        huge.extend_from_slice(&[0; 8]);
        huge.extend_from_slice(&[0xFF; 9]);
        huge.push(0x01);
        huge.extend_from_slice(&[0, 0, 0, 0]);
        huge.extend_from_slice(&(huge.len() as u32 - 4).to_le_bytes());
        assert!(entries(&huge).iter().any(Result::is_err), "{huge:?}");
        let mut bad = v.clone();
        let at = bad.len() - 4;
        bad[at..].copy_from_slice(&(v.len() as u32).to_le_bytes());
        assert!(entries(&bad).iter().any(Result::is_err));
        // A record naming an index past its batch's table is refused.
        let mut w = BatchWriter::named();
        w.put(1, |out, names| {
            encode_named(Some(&view(&ring, &ids)), None, names.unwrap(), &signal, &cell, out);
            true
        });
        let mut v = w.finish().to_vec();
        let at = 1 + 8 + 1 + 1 + 16 + 1; // the first kind's index
        v[at] = 9;
        let b = read_batch(&v);
        let BatchEntry::Put(_, s) = b.entries().next().unwrap().unwrap() else { unreachable!() };
        assert_eq!(s.decode(), Err(DecodeError::Name(9)));
    }

    /// The record with its names in place of their indices (the order of a record's name table
    /// means nothing).
    fn resolved(r: &AccountRecord<'_>) -> String {
        let n = |i: u8| r.name_of(i).unwrap_or("?");
        let mut out = String::new();
        if let Some(w) = &r.window {
            let kinds = |k: &[u8]| k.iter().map(|&i| n(i)).collect::<Vec<_>>();
            let entries: Vec<_> = w.entries.iter().map(|e| (e.t, e.risk_q, n(e.signal), n(e.cell))).collect();
            out += &format!(
                "{} {} {} {} {:?} {:?} {entries:?} {:?}",
                w.touched_s,
                w.slow_cur,
                w.slow_prev,
                w.slow_bucket,
                kinds(&w.kinds_cur),
                kinds(&w.kinds_prev),
                w.ids
            );
        }
        if let Some(c) = &r.cooldown {
            out += &format!(" cooldown {} {} {}", c.until_s, c.decided_at_ms, n(c.cell));
        }
        out
    }

    /// A source name of 64 four-byte characters (256 bytes) is written whole; a record that
    /// names more than 256 distinct names is refused instead of wrapping its indices.
    #[test]
    fn long_names_are_kept_and_too_many_names_refused() {
        let long = "\u{1F600}".repeat(64);
        let cells: Vec<String> = (0..251).map(|i| if i == 0 { long.clone() } else { format!("source-{i}") }).collect();
        let signal = |_: u8| "new_device";
        let cell = |i: u8| cells[i as usize].as_str();
        let ring: Vec<Entry> = (0..251).map(|i| Entry { t: 10, risk_q: 1, signal: 0, cell: i as u8 }).collect();
        let ids = evidence::from_joined("e-1");
        let mut w = BatchWriter::named();
        w.put(1, |out, names| {
            encode_named(Some(&view(&ring[..1], &ids)), None, names.unwrap(), &signal, &cell, out);
            true
        });
        let v = w.finish().to_vec();
        let b = read_batch(&v);
        let Some(Ok(BatchEntry::Put(_, s))) = b.entries().next() else { panic!("{v:?}") };
        let rec = s.decode().unwrap();
        let cell_of_entry = rec.window.as_ref().unwrap().entries[0].cell;
        assert_eq!(rec.name_of(cell_of_entry), Some(long.as_str()));
        // 251 cells and 32 signals in one record: more than a record's 256 names.
        let signals: Vec<String> = (0..32).map(|i| format!("signal-{i}")).collect();
        let signal = |i: u8| signals[i as usize].as_str();
        let ring: Vec<Entry> =
            (0..251).map(|i| Entry { t: 10, risk_q: 1, signal: (i % 32) as u8, cell: i as u8 }).collect();
        let mut w = BatchWriter::named();
        w.put(1, |out, names| {
            encode_named(Some(&view(&ring, &ids)), None, names.unwrap(), &signal, &cell, out);
            true
        });
        let v = w.finish().to_vec();
        let b = read_batch(&v);
        let Some(Ok(BatchEntry::Put(_, s))) = b.entries().next() else { panic!("{v:?}") };
        assert!(matches!(s.decode(), Err(DecodeError::Name(_))), "{:?}", s.decode().map(|r| r.names.len()));
    }

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, 16_383, 16_384, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            put_varint(v, &mut out);
            let mut r = Reader { b: &out, at: 0 };
            assert_eq!(r.varint(), Ok(v));
            assert_eq!(r.at, out.len());
        }
        assert!(Reader { b: &[0x80; 11], at: 0 }.varint().is_err());
    }

    #[test]
    fn keys_and_watermarks() {
        assert_eq!(parse_key(&batch_key(42)), Key::Batch(42));
        assert_eq!(parse_key(&account_key(0xdead_beef)), Key::Account(0xdead_beef));
        assert_eq!(parse_key(b"w"), Key::Watermark);
        assert_eq!(parse_key(b"resetguard-fence"), Key::Other);
        assert_eq!(decode_watermark(&encode_watermark(-5)), Ok(-5));
        assert!(decode_watermark(&[1, 2]).is_err());
    }
}
