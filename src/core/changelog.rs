//! The changelog record format: what one account's state looks like on the compacted changelog
//! topic, and each input partition's watermark. Binary, little-endian, versioned; names (signals,
//! breaker cells) are written as strings once per record, so a record means the same after a
//! policy change reorders signals or another instance interned its cells in another order. Pure.
//!
//! Layout (documented for operators in `docs/changelog.md`):
//!
//! ```text
//! key   b'b' ++ batch number (u64, big-endian)     batch record, or a tombstone (no value)
//!       b'a' ++ account hash (u64, big-endian)     account record, or a tombstone (no value)
//!       b'w'                                      the partition's watermark record
//!
//! batch record, version 1 (record format 3, the default): many accounts' states in one record
//!   u8  batch version = 1
//!   then entries to the end: u64 account hash, u32 len (0xFFFF_FFFF: the account is gone),
//!                            len bytes account record (below)
//!
//! account record, version 2 (version 1 is still read)
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
//! watermark record, version 1
//!   u8 version = 1, i64 newest event time of the partition (ms)
//! ```

use std::borrow::Cow;

use smallvec::SmallVec;

use super::evidence;

/// Version of the account records written.
pub const VERSION: u8 = 2;
/// The first version: evidence ids as text.
const VERSION_1: u8 = 1;
/// Record format 3: account records of version 2 inside batch records (the default written).
pub const BATCHED: u8 = 3;
/// Record formats that can be written (`pipeline.changelog_record_version`; every one is read):
/// 1 and 2 one Kafka record per account, 3 batches of them.
pub const WRITABLE_VERSIONS: [u8; 3] = [VERSION_1, VERSION, BATCHED];
/// Version of the batch records.
const BATCH_VERSION: u8 = 1;
/// An entry's length that says the account is gone.
const GONE: u32 = u32::MAX;
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
        let s = self.b.get(self.at..self.at + n).ok_or(DecodeError::Truncated(self.at))?;
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
    let names = rec.names.len();
    let check = |i: u8| if (i as usize) < names { Ok(i) } else { Err(DecodeError::Name(i)) };
    if flags & HAS_WINDOW != 0 {
        let touched_s = u32::from_le_bytes(r.arr()?);
        let slow_cur = f32::from_le_bytes(r.arr()?);
        let slow_prev = f32::from_le_bytes(r.arr()?);
        let slow_bucket = u32::from_le_bytes(r.arr()?);
        let mut kinds = [SmallVec::new(), SmallVec::new()];
        for k in &mut kinds {
            for _ in 0..r.u8()? {
                k.push(check(r.u8()?)?);
            }
        }
        let [kinds_cur, kinds_prev] = kinds;
        let mut entries = SmallVec::new();
        for _ in 0..r.u8()? {
            let t = u32::from_le_bytes(r.arr()?);
            let risk_q = u16::from_le_bytes(r.arr()?);
            let signal = check(r.u8()?)?;
            let cell = check(r.u8()?)?;
            entries.push(RecEntry { t, risk_q, signal, cell });
        }
        let n = u16::from_le_bytes(r.arr()?) as usize;
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
        let cell = check(r.u8()?)?;
        rec.cooldown = Some(CooldownRecord { until_s, decided_at_ms, cell });
    }
    Ok(rec)
}

/// A batch record being written: entries are appended in place (no copy per account).
#[derive(Debug, Default)]
pub struct BatchWriter {
    buf: Vec<u8>,
    entries: u32,
}

impl BatchWriter {
    /// Appends an account's record, written by `record` into the buffer.
    pub fn put(&mut self, key: u64, record: impl FnOnce(&mut Vec<u8>)) {
        self.put_if(key, |out| {
            record(out);
            true
        });
    }

    /// Appends an account's record if `record` writes one (returns true); else appends nothing.
    pub fn put_if(&mut self, key: u64, record: impl FnOnce(&mut Vec<u8>) -> bool) -> bool {
        let (start, entries) = (self.buf.len(), self.entries);
        self.start_entry(key);
        let at = self.buf.len();
        self.buf.extend_from_slice(&0u32.to_le_bytes());
        if !record(&mut self.buf) {
            self.buf.truncate(start);
            self.entries = entries;
            return false;
        }
        let len = (self.buf.len() - at - 4) as u32;
        self.buf[at..at + 4].copy_from_slice(&len.to_le_bytes());
        true
    }

    /// Appends that the account is gone.
    pub fn gone(&mut self, key: u64) {
        self.start_entry(key);
        self.buf.extend_from_slice(&GONE.to_le_bytes());
    }

    fn start_entry(&mut self, key: u64) {
        if self.buf.is_empty() {
            self.buf.push(BATCH_VERSION);
        }
        self.buf.extend_from_slice(&key.to_le_bytes());
        self.entries += 1;
    }

    pub fn entries(&self) -> u32 {
        self.entries
    }

    pub fn bytes(&self) -> usize {
        self.buf.len()
    }

    /// The record's value so far.
    pub fn value(&self) -> &[u8] {
        &self.buf
    }

    /// Empties it for the next record, keeping its allocation.
    pub fn clear(&mut self) {
        self.buf.clear();
        self.entries = 0;
    }
}

/// One entry of a batch record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchEntry<'a> {
    /// The account's state: an account record ([`decode`]).
    Put(u64, &'a [u8]),
    Gone(u64),
}

/// The entries of a batch record, in order; an error ends them (what came before is good).
pub fn batch_entries(v: &[u8]) -> impl Iterator<Item = Result<BatchEntry<'_>, DecodeError>> + '_ {
    let mut r = Reader { b: v, at: 0 };
    let mut failed = match r.u8() {
        Ok(BATCH_VERSION) => None,
        Ok(other) => Some(DecodeError::Version(other)),
        Err(e) => Some(e),
    };
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
            match u32::from_le_bytes(r.arr()?) {
                GONE => Ok(BatchEntry::Gone(key)),
                n => Ok(BatchEntry::Put(key, r.take(n as usize)?)),
            }
        })();
        if entry.is_err() {
            r.at = r.b.len();
        }
        Some(entry)
    })
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

    #[test]
    fn a_batch_round_trips_and_a_damaged_one_stops_at_the_damage() {
        let mut w = BatchWriter::default();
        let mut one = Vec::new();
        encode(&sample(), VERSION, &mut one);
        w.put(7, |out| encode(&sample(), VERSION, out));
        w.gone(9);
        w.put(u64::MAX - 1, |out| out.extend_from_slice(b"x"));
        assert!(!w.put_if(5, |out| {
            out.extend_from_slice(b"half-written");
            false
        }));
        assert_eq!(w.entries(), 3);
        let v = w.value().to_vec();
        let got: Vec<_> = batch_entries(&v).collect();
        assert_eq!(
            got,
            vec![
                Ok(BatchEntry::Put(7, &one[..])),
                Ok(BatchEntry::Gone(9)),
                Ok(BatchEntry::Put(u64::MAX - 1, &b"x"[..]))
            ]
        );
        assert_eq!(decode(&one).unwrap(), sample());
        // Every truncation yields the entries before it, then one error (unless it falls
        // between two entries), never a panic.
        let ends = [1, 1 + 12 + one.len(), 1 + 12 + one.len() + 12];
        for n in 1..v.len() {
            let got: Vec<_> = batch_entries(&v[..n]).collect();
            let ok = got.iter().take_while(|e| e.is_ok()).count();
            match ends.iter().position(|&e| e == n) {
                Some(whole) => assert!(got.len() == whole && ok == whole, "prefix of {n} bytes: {got:?}"),
                None => assert!(ok < 3 && got.len() == ok + 1, "prefix of {n} bytes: {got:?}"),
            }
        }
        assert_eq!(batch_entries(&[]).count(), 1);
        assert_eq!(batch_entries(&[2, 0]).collect::<Vec<_>>(), vec![Err(DecodeError::Version(2))]);
        w.clear();
        assert_eq!((w.entries(), w.bytes()), (0, 0));
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
