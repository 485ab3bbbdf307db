//! Grammar-aware fuzzing of the input decoder (`core::event::decode`), see FUZZING.md.
//!
//! Every generated input is checked for two things: no path panics, and the fast path agrees with
//! the serde_json reference path (`decode_reference`). Agreement is what
//! `tests/decode_equivalence.rs` checks: `decode` gives exactly what `decode_reference` gives (the
//! same event, every field, `risk` bit for bit, borrowed vs. owned strings; or the same rejection,
//! reason and detail), and whenever the fast path alone (`decode_fast`) accepts an input, the
//! reference accepts it with the same event. `occurred_at` values also go through
//! `parse_rfc3339_ms` against chrono's RFC 3339 parser (the hand-written fast shape is shared by
//! both decode paths, so only this comparison can catch a divergence there).
//!
//! The generator works at the level of the JSON grammar of the contract:
//!
//! 1. a valid login-risk event as a list of members (key, value) with layout choices (field
//!    order, whitespace, string escape styles, optional fields, offsets and fractions in
//!    `occurred_at`, the shapes of `risk` producers write);
//! 2. zero to four structured mutations: a field set to an edge or wrong-typed value (numbers at
//!    the edges of f64 and of the fast path's integer significand, timestamps with odd offsets,
//!    leap seconds and fractions, strings at their length limits in 1- to 4-byte characters,
//!    deeply nested `attributes`), members removed, duplicated or unknown (near-miss names,
//!    escaped keys), odd escapes (`\u` surrogates lone, reversed, paired; invalid escapes; raw
//!    control characters), punctuation errors, non-JSON whitespace, other top-level shapes,
//!    and padding of the message or of `attributes` to exactly its byte limit ± 2;
//! 3. zero to three byte-level mutations of the result (truncation, bit flips, invalid UTF-8
//!    sequences, deletions, repeats), and sometimes other policy limits or wall clocks.
//!
//! Some cases instead start from the contract mutations of `tests/common/events.rs`
//! (`arb_mutation`). A second test sweeps rich events exhaustively: truncation at every
//! position, every bit flipped, every byte deleted, invalid UTF-8 inserted everywhere.
//!
//! Settings (environment):
//! * `RESETGUARD_FUZZ_CASES`: generated cases, at least (default 25,000: a few seconds in release).
//! * `RESETGUARD_FUZZ_SECONDS`: also keep going until this many seconds have passed.
//! * `RESETGUARD_FUZZ_SEED`: the seed (decimal or `0x` hex), default `DEFAULT_SEED`.
//! * `RESETGUARD_FUZZ_DUMP`: print the first this many inputs and their outcome (to look at the
//!   generator's output).
//!
//! The run is split into batches of proptest runs; batch `b` draws from a ChaCha RNG seeded by
//! (seed, b) alone, so a finding is reproduced by re-running with the printed seed. On a failure
//! proptest shrinks the case, and the message shows the minimal input's bytes.

mod common;

use std::borrow::Cow;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use chrono::{Datelike, Timelike};
use common::events::{
    account_name, arb_mutation, nested_attributes, rfc3339_with_offset, Ev, Mutation, Rng, ANCIENT_TIMESTAMPS,
    BAD_TIMESTAMPS, DEFAULT_SIGNALS, SOURCES, T0,
};
use proptest::prelude::*;
use proptest::strategy::Union;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use resetguard::core::event::{
    decode, decode_fast, decode_reference, parse_rfc3339_ms, Event, RejectReason, Rejection,
};
use resetguard::core::Policy;
use serde_json::Value;

/// Wall clock: a minute after `T0` (as in `tests/decode_equivalence.rs`).
const NOW: i64 = T0 + 60_000;
/// The default policy's `decision.max_future_skew` (5 minutes), in ms.
const SKEW_MS: i64 = 300_000;
const DEFAULT_CASES: u64 = 25_000;
const DEFAULT_SEED: u64 = 0x5eed_0fde_c0de;
/// Cases per proptest run (one batch).
const BATCH: u64 = 25_000;

/// Every member name of schema v1.
const KEYS: [&str; 12] = [
    "event_id",
    "account_id",
    "occurred_at",
    "source",
    "signal",
    "risk",
    "ip",
    "country",
    "device_id",
    "user_agent",
    "attributes",
    "schema_version",
];
const F_EVENT_ID: usize = 0;
const F_ACCOUNT_ID: usize = 1;
const F_OCCURRED_AT: usize = 2;
const F_SOURCE: usize = 3;
const F_SIGNAL: usize = 4;
const F_RISK: usize = 5;
const F_IP: usize = 6;
const F_COUNTRY: usize = 7;
const F_DEVICE_ID: usize = 8;
const F_USER_AGENT: usize = 9;
const F_ATTRIBUTES: usize = 10;
const F_SCHEMA_VERSION: usize = 11;

/// (min, max) characters of the string fields, by field index (0 for the non-strings).
const BOUNDS: [(usize, usize); 12] =
    [(1, 128), (1, 256), (1, 64), (1, 64), (1, 64), (0, 0), (0, 64), (0, 8), (0, 256), (0, 1024), (0, 0), (0, 0)];

// ---------------------------------------------------------------------------------------------
// The grammar: values as they will be written
// ---------------------------------------------------------------------------------------------

const ASCII_ID: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:@/";
/// Characters of 2 to 4 bytes, non-characters, separators, the BOM, the largest scalar value.
const WIDE: [char; 14] = [
    '\u{e9}',
    '\u{17c}',
    '\u{df}',
    '\u{20ac}',
    '\u{8d26}',
    '\u{2028}',
    '\u{feff}',
    '\u{fffd}',
    '\u{ffff}',
    '\u{1f600}',
    '\u{1d11e}',
    '\u{10ffff}',
    '\u{a0}',
    '\u{85}',
];
/// C0 controls, DEL, and C1 controls (which the contract does not count as control characters).
const CONTROL: [char; 10] = ['\u{0}', '\u{1}', '\t', '\n', '\r', '\u{8}', '\u{1f}', '\u{7f}', '\u{80}', '\u{9f}'];

/// Generated text: `len` characters of a class, drawn from `seed`. Classes: 0 identifier ASCII,
/// 1 printable ASCII (quotes, backslashes, solidus), 2 multi-byte only, 3 a mix of 0 and 2,
/// 4 mostly ASCII with control characters.
#[derive(Debug, Clone, Copy)]
struct Text {
    class: u8,
    len: usize,
    seed: u64,
}

impl Text {
    fn make(self) -> String {
        let mut rng = Rng::new(self.seed);
        let mut s = String::with_capacity(self.len * 2);
        let ascii = |rng: &mut Rng| char::from(*rng.pick(ASCII_ID));
        for _ in 0..self.len {
            let c = match self.class {
                0 => ascii(&mut rng),
                1 => char::from(0x20 + rng.below(95) as u8),
                2 => *rng.pick(&WIDE),
                3 if rng.below(3) == 0 => *rng.pick(&WIDE),
                3 => ascii(&mut rng),
                _ if rng.below(6) == 0 => *rng.pick(&CONTROL),
                _ => char::from(0x20 + rng.below(95) as u8),
            };
            s.push(c);
        }
        s
    }
}

/// A verbatim piece of a string literal.
#[derive(Debug, Clone, Copy)]
enum Snip {
    Text(&'static str),
    /// `\uXXXX`, followed by a second one when present (upper-case hex digits when `upper`).
    U {
        first: u16,
        second: Option<u16>,
        upper: bool,
    },
}

impl Snip {
    fn push(self, out: &mut String) {
        match self {
            Snip::Text(t) => out.push_str(t),
            Snip::U { first, second, upper } => {
                let digits: &[u8; 16] = if upper { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
                for u in std::iter::once(first).chain(second) {
                    out.push_str("\\u");
                    for shift in [12, 8, 4, 0] {
                        out.push(char::from(digits[usize::from(u >> shift & 0xf)]));
                    }
                }
            }
        }
    }
}

/// A JSON string literal: its decoded `text` written in an escape `style`, with verbatim `odd`
/// snippets (escapes, raw bytes) inserted before the character at each position.
///
/// Styles: 0 as serde_json writes it, 1 every UTF-16 unit as lower-case `\uXXXX`, 2 every other
/// character escaped, 3 upper-case `\uXXXX`, 4 raw (only `"` and `\` escaped: control characters
/// stay raw, which JSON forbids), 5 ASCII only (non-ASCII as `\u`, `/` as `\/`).
#[derive(Debug, Clone)]
struct Str {
    text: String,
    style: u8,
    odd: Vec<(usize, Snip)>,
}

fn plain(text: &str) -> Str {
    Str { text: text.to_string(), style: 0, odd: Vec::new() }
}

fn unicode_escape(out: &mut String, c: char, upper: bool) {
    let digits: &[u8; 16] = if upper { b"0123456789ABCDEF" } else { b"0123456789abcdef" };
    let mut units = [0u16; 2];
    for u in c.encode_utf16(&mut units) {
        out.push_str("\\u");
        for shift in [12, 8, 4, 0] {
            out.push(char::from(digits[usize::from(*u >> shift & 0xf)]));
        }
    }
}

fn push_char(out: &mut String, c: char, style: u8, i: usize) {
    let short = match c {
        '"' => Some("\\\""),
        '\\' => Some("\\\\"),
        '\n' => Some("\\n"),
        '\r' => Some("\\r"),
        '\t' => Some("\\t"),
        '\u{8}' => Some("\\b"),
        '\u{c}' => Some("\\f"),
        _ => None,
    };
    match style % 6 {
        0 => match short {
            Some(e) => out.push_str(e),
            None if c < ' ' => unicode_escape(out, c, false),
            None => out.push(c),
        },
        1 => unicode_escape(out, c, false),
        2 if i % 2 == 1 => match short {
            Some(e) => out.push_str(e),
            None => unicode_escape(out, c, false),
        },
        2 => push_char(out, c, 0, i),
        3 => unicode_escape(out, c, true),
        4 => match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            _ => out.push(c),
        },
        _ => match (short, c) {
            (Some(e), _) => out.push_str(e),
            (None, '/') => out.push_str("\\/"),
            (None, c) if c < ' ' || !c.is_ascii() => unicode_escape(out, c, false),
            (None, c) => out.push(c),
        },
    }
}

fn push_str_lit(out: &mut String, s: &Str) {
    out.push('"');
    // The common case: nothing to escape.
    if s.odd.is_empty() && matches!(s.style, 0 | 4) && !s.text.bytes().any(|b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(&s.text);
        out.push('"');
        return;
    }
    let mut n = 0;
    for (i, c) in s.text.chars().enumerate() {
        for (_, snippet) in s.odd.iter().filter(|(p, _)| *p == i) {
            snippet.push(out);
        }
        push_char(out, c, s.style, i);
        n = i + 1;
    }
    for (_, snippet) in s.odd.iter().filter(|(p, _)| *p >= n) {
        snippet.push(out);
    }
    out.push('"');
}

/// A JSON value as it will be written; possibly outside the grammar (`Raw`).
#[derive(Debug, Clone)]
enum J {
    S(Str),
    /// Number text, written verbatim (valid grammar or not).
    Num(String),
    /// `true`, `false`, `null` or a near miss.
    Word(&'static str),
    Arr(Vec<J>),
    Obj(Vec<(Str, J)>),
    /// `depth` levels around `inner`: level `l` is `{"k":` when bit `l % 64` of `kinds` is set,
    /// else `[`.
    Nest {
        depth: usize,
        kinds: u64,
        inner: Box<J>,
    },
    /// Verbatim text (token soup, unterminated strings, ...).
    Raw(&'static str),
}

/// Whitespace between tokens, cycled through a pool (an empty pool writes none).
struct Ws<'a> {
    pool: &'a [&'static str],
    i: usize,
}

impl Ws<'_> {
    fn put(&mut self, out: &mut String) {
        if let Some(w) = self.pool.get(self.i % self.pool.len().max(1)) {
            out.push_str(w);
        }
        self.i += 1;
    }
}

fn render_j(j: &J, out: &mut String, ws: &mut Ws<'_>) {
    match j {
        J::S(s) => push_str_lit(out, s),
        J::Num(n) => out.push_str(n),
        J::Word(w) | J::Raw(w) => out.push_str(w),
        J::Arr(items) => {
            out.push('[');
            ws.put(out);
            for (i, x) in items.iter().enumerate() {
                if i > 0 {
                    ws.put(out);
                    out.push(',');
                    ws.put(out);
                }
                render_j(x, out, ws);
            }
            ws.put(out);
            out.push(']');
        }
        J::Obj(members) => {
            out.push('{');
            ws.put(out);
            for (i, (k, v)) in members.iter().enumerate() {
                if i > 0 {
                    ws.put(out);
                    out.push(',');
                    ws.put(out);
                }
                push_str_lit(out, k);
                ws.put(out);
                out.push(':');
                ws.put(out);
                render_j(v, out, ws);
            }
            ws.put(out);
            out.push('}');
        }
        J::Nest { depth, kinds, inner } => {
            let object = |l: usize| kinds >> (l % 64) & 1 == 1;
            for l in 0..*depth {
                out.push_str(if object(l) { "{\"k\":" } else { "[" });
            }
            render_j(inner, out, ws);
            for l in (0..*depth).rev() {
                out.push(if object(l) { '}' } else { ']' });
            }
        }
    }
}

/// What stands at the top level of the message.
#[derive(Debug, Clone)]
enum Top {
    Object,
    /// The member values as an array, in order.
    Array,
    /// Another value instead of the object.
    Value(J),
    /// Whitespace only.
    Empty,
    /// The object twice in a row.
    Twice,
    /// The object inside this many arrays.
    Wrapped(usize),
}

/// One message: members and layout.
#[derive(Debug, Clone)]
struct Doc {
    members: Vec<(Str, J)>,
    ws: Vec<&'static str>,
    top: Top,
    /// Punctuation damage: (kind, member index), see `render_object`.
    punct: Option<(u8, usize)>,
    prefix: &'static str,
    suffix: &'static str,
}

impl Doc {
    fn find(&self, field: usize) -> Option<usize> {
        self.members.iter().position(|(k, _)| k.text == KEYS[field])
    }

    /// Sets the value of `field`, adding the member at the end when absent.
    fn set(&mut self, field: usize, value: J) {
        match self.find(field) {
            Some(i) => self.members[i].1 = value,
            None => self.members.push((plain(KEYS[field]), value)),
        }
    }

    fn get_str_mut(&mut self, field: usize) -> Option<&mut Str> {
        let i = self.find(field)?;
        match &mut self.members[i].1 {
            J::S(s) => Some(s),
            _ => None,
        }
    }
}

/// The rendered message, and where the last `attributes` value lies in it.
struct Rendered {
    text: String,
    attributes: Option<(usize, usize)>,
}

fn render_object(doc: &Doc, out: &mut String, ws: &mut Ws<'_>, attributes: &mut Option<(usize, usize)>) {
    let (kind, at) = match doc.punct {
        Some((kind, at)) => (Some(kind), at % doc.members.len().max(1)),
        None => (None, 0),
    };
    ws.put(out);
    out.push('{');
    ws.put(out);
    if kind == Some(1) {
        out.push(',');
    }
    for (i, (k, v)) in doc.members.iter().enumerate() {
        let here = i == at;
        if i > 0 {
            ws.put(out);
            match kind {
                Some(2) if here => out.push_str(",,"),
                Some(3) if here => {}
                Some(8) if here => out.push(';'),
                _ => out.push(','),
            }
            ws.put(out);
        }
        push_str_lit(out, k);
        ws.put(out);
        match kind {
            Some(4) if here => out.push('='),
            Some(5) if here => {}
            Some(9) if here => out.push_str("::"),
            _ => out.push(':'),
        }
        ws.put(out);
        let start = out.len();
        render_j(v, out, ws);
        if k.text == "attributes" {
            *attributes = Some((start, out.len()));
        }
    }
    if kind == Some(0) {
        out.push(',');
    }
    ws.put(out);
    match kind {
        Some(6) => {}
        Some(7) => out.push_str("}}"),
        _ => out.push('}'),
    }
    ws.put(out);
}

fn render_doc(doc: &Doc) -> Rendered {
    let mut out = String::with_capacity(512);
    let mut attributes = None;
    let mut ws = Ws { pool: &doc.ws, i: 0 };
    out.push_str(doc.prefix);
    match &doc.top {
        Top::Object => render_object(doc, &mut out, &mut ws, &mut attributes),
        Top::Array => {
            let values = J::Arr(doc.members.iter().map(|(_, v)| v.clone()).collect());
            render_j(&values, &mut out, &mut ws);
        }
        Top::Value(j) => render_j(j, &mut out, &mut ws),
        Top::Empty => ws.put(&mut out),
        Top::Twice => {
            render_object(doc, &mut out, &mut ws, &mut attributes);
            render_object(doc, &mut out, &mut ws, &mut attributes);
        }
        Top::Wrapped(n) => {
            out.push_str(&"[".repeat(*n));
            render_object(doc, &mut out, &mut ws, &mut attributes);
            out.push_str(&"]".repeat(*n));
        }
    }
    out.push_str(doc.suffix);
    Rendered { text: out, attributes }
}

// ---------------------------------------------------------------------------------------------
// Structured mutations
// ---------------------------------------------------------------------------------------------

/// A change at the level of the JSON grammar, applied to a valid event.
#[derive(Debug, Clone)]
enum Mut {
    /// The field's value replaced (the member added when absent).
    Set {
        field: usize,
        value: J,
    },
    /// Every member of the field removed.
    Remove(usize),
    /// The member repeated at position `at`, with its own value or another one.
    Duplicate {
        field: usize,
        value: Option<J>,
        at: usize,
    },
    /// A member that is not in the contract.
    Unknown {
        key: Str,
        value: J,
        at: usize,
    },
    /// The key written with escapes (the same name once decoded).
    KeyStyle {
        field: usize,
        style: u8,
        odd: Option<(usize, Snip)>,
    },
    /// A snippet inserted into the field's string value.
    Odd {
        field: usize,
        pos: usize,
        snippet: Snip,
    },
    Shuffle(u64),
    Punct {
        kind: u8,
        at: usize,
    },
    Affix {
        prefix: &'static str,
        suffix: &'static str,
    },
    Ws(Vec<&'static str>),
    Top(Top),
    /// Strings padded with `unit` characters until the message is the policy's limit + `delta` bytes.
    PadMessage {
        unit: u8,
        delta: i8,
    },
    /// `attributes` padded until its raw text is the policy's limit + `delta` bytes.
    PadAttributes {
        unit: u8,
        delta: i8,
    },
}

/// Padding units: (character, escape style, bytes when written).
const PAD_UNITS: [(char, u8, usize); 6] =
    [('x', 0, 1), ('\u{e9}', 0, 2), ('\u{20ac}', 0, 3), ('\u{1f600}', 0, 4), ('\u{e9}', 1, 6), ('\u{1f600}', 1, 12)];
const XS: &str = "xxxxxxxxxxxxxxxx";

fn apply_mut(doc: &mut Doc, m: &Mut, pad: &mut Option<Mut>) {
    match m {
        Mut::Set { field, value } => doc.set(*field, value.clone()),
        Mut::Remove(field) => doc.members.retain(|(k, _)| k.text != KEYS[*field]),
        Mut::Duplicate { field, value, at } => {
            let current = doc.find(*field).map(|i| doc.members[i].1.clone());
            let v = value.clone().or(current).unwrap_or(J::Word("null"));
            let at = at % (doc.members.len() + 1);
            doc.members.insert(at, (plain(KEYS[*field]), v));
        }
        Mut::Unknown { key, value, at } => {
            let at = at % (doc.members.len() + 1);
            doc.members.insert(at, (key.clone(), value.clone()));
        }
        Mut::KeyStyle { field, style, odd } => {
            if let Some(i) = doc.find(*field) {
                let k = &mut doc.members[i].0;
                k.style = *style;
                k.odd.extend(odd.iter().copied());
            }
        }
        Mut::Odd { field, pos, snippet } => {
            if let Some(s) = doc.get_str_mut(*field) {
                s.odd.push((*pos, *snippet));
            }
        }
        Mut::Shuffle(seed) => {
            let mut rng = Rng::new(*seed);
            for i in (1..doc.members.len()).rev() {
                doc.members.swap(i, rng.below(i as u64 + 1) as usize);
            }
        }
        Mut::Punct { kind, at } => doc.punct = Some((*kind, *at)),
        Mut::Affix { prefix, suffix } => {
            doc.prefix = prefix;
            doc.suffix = suffix;
        }
        Mut::Ws(pool) => doc.ws = pool.clone(),
        Mut::Top(top) => doc.top = top.clone(),
        Mut::PadMessage { .. } | Mut::PadAttributes { .. } => *pad = Some(m.clone()),
    }
}

/// A string of `chars` padding units, plus `rem` verbatim ASCII bytes.
fn pad_str(unit: u8, chars: usize, rem: usize) -> Str {
    let (c, style, _) = PAD_UNITS[usize::from(unit) % PAD_UNITS.len()];
    let mut odd = Vec::new();
    let mut rem = rem;
    while rem > 0 {
        let n = rem.min(XS.len());
        odd.push((0, Snip::Text(&XS[..n])));
        rem -= n;
    }
    Str { text: std::iter::repeat_n(c, chars).collect(), style, odd }
}

/// Pads the message or `attributes` to an exact byte length (see `Mut::PadMessage`).
fn apply_pad(doc: &mut Doc, pad: &Mut, policy: &Policy) {
    match *pad {
        Mut::PadAttributes { unit, delta } => {
            doc.set(F_ATTRIBUTES, J::Obj(vec![(plain("pad"), J::S(plain("")))]));
            let Some((start, end)) = render_doc(doc).attributes else { return };
            let target = policy.max_attributes_bytes as i64 + i64::from(delta);
            let need = target - (end - start) as i64;
            if need > 0 {
                let b = PAD_UNITS[usize::from(unit) % PAD_UNITS.len()].2;
                let need = need as usize;
                let s = pad_str(unit, need / b, need % b);
                doc.set(F_ATTRIBUTES, J::Obj(vec![(plain("pad"), J::S(s))]));
            }
        }
        Mut::PadMessage { unit, delta } => {
            let sinks = [(F_USER_AGENT, 1024usize), (F_DEVICE_ID, 256), (F_IP, 64)];
            for (f, _) in sinks {
                doc.set(f, J::S(plain("")));
            }
            let base = render_doc(doc).text.len() as i64;
            let target = policy.max_message_bytes as i64 + i64::from(delta);
            let Ok(mut need) = usize::try_from(target - base) else { return };
            let b = PAD_UNITS[usize::from(unit) % PAD_UNITS.len()].2;
            let mut fill = [0usize; 3];
            for (i, (_, cap)) in sinks.iter().enumerate() {
                fill[i] = (*cap).min(need / b);
                need -= fill[i] * b;
            }
            // What the sinks cannot take within their limits goes to the first one, beyond.
            fill[0] += need / b;
            let rem = need % b;
            // The verbatim remainder goes where a character still fits.
            let spare = sinks.iter().zip(fill).position(|((_, cap), n)| n + rem <= *cap).unwrap_or(0);
            for (i, (f, _)) in sinks.iter().enumerate() {
                doc.set(*f, J::S(pad_str(unit, fill[i], if i == spare { rem } else { 0 })));
            }
        }
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Timestamps
// ---------------------------------------------------------------------------------------------

/// An `occurred_at` value: an instant written with an offset, a fraction and optional damage.
#[derive(Debug, Clone)]
struct Ts {
    ms: i64,
    /// The offset written (and applied to the local time), in minutes.
    tz_min: i32,
    /// Fraction digits (the first three are the milliseconds, further ones from `sub`); 13 writes
    /// a lone `.`.
    frac: u8,
    sub: u64,
    /// Date-time separator: `T`, `t`, space, `_`.
    sep: u8,
    /// 0 `Z` (or the offset when it is not 0), 1 `z`, 2 `±hh:mm`, 3 `-00:00`, 4 `±hhmm`, 5 `±hh`,
    /// 6 nothing, 7 U+2212 minus, 8 ` Z`, 9 `+00:00`.
    zone: u8,
    /// Second written as 60.
    leap: bool,
    /// The date replaced: (year, month, day), for the calendar's edges.
    date: Option<(u16, u8, u8)>,
    /// One component (year, month, day, hour, minute, second, offset hour, offset minute)
    /// replaced by a value.
    edit: Option<(u8, u16)>,
    /// After the zone: nothing, space, `x`, newline, `Z`.
    tail: u8,
}

fn render_ts(t: &Ts) -> String {
    let Some(utc) = chrono::DateTime::from_timestamp_millis(t.ms) else { return "invalid".to_string() };
    let local = utc.naive_utc().checked_add_signed(chrono::TimeDelta::minutes(i64::from(t.tz_min)));
    let Some(local) = local else { return "invalid".to_string() };
    let off = t.tz_min.unsigned_abs();
    let mut parts: [u32; 8] = [
        local.year().max(0) as u32,
        local.month(),
        local.day(),
        local.hour(),
        local.minute(),
        local.second(),
        off / 60,
        off % 60,
    ];
    if t.leap {
        parts[5] = 60;
    }
    if let Some((y, m, d)) = t.date {
        parts[0] = u32::from(y);
        parts[1] = u32::from(m);
        parts[2] = u32::from(d);
    }
    if let Some((which, v)) = t.edit {
        let which = usize::from(which) % 8;
        parts[which] = u32::from(v) % if which == 0 { 10_000 } else { 100 };
    }
    let sep = ["T", "t", " ", "_"][usize::from(t.sep) % 4];
    let mut s =
        format!("{:04}-{:02}-{:02}{sep}{:02}:{:02}:{:02}", parts[0], parts[1], parts[2], parts[3], parts[4], parts[5]);
    match t.frac {
        0 => {}
        13.. => s.push('.'),
        n => {
            let mut digits = format!("{:03}", t.ms.rem_euclid(1000));
            let _ = write!(digits, "{:019}", t.sub % 10_000_000_000_000_000_000);
            s.push('.');
            s.push_str(&digits[..usize::from(n)]);
        }
    }
    let sign = if t.tz_min < 0 { '-' } else { '+' };
    let (oh, om) = (parts[6], parts[7]);
    match t.zone % 10 {
        0 if t.tz_min == 0 && t.edit.is_none_or(|(w, _)| w % 8 < 6) => s.push('Z'),
        0 | 2 => {
            let _ = write!(s, "{sign}{oh:02}:{om:02}");
        }
        1 => s.push('z'),
        3 => s.push_str("-00:00"),
        4 => {
            let _ = write!(s, "{sign}{oh:02}{om:02}");
        }
        5 => {
            let _ = write!(s, "{sign}{oh:02}");
        }
        6 => {}
        7 => {
            let _ = write!(s, "\u{2212}{oh:02}:{om:02}");
        }
        8 => s.push_str(" Z"),
        _ => s.push_str("+00:00"),
    }
    s.push_str(["", " ", "x", "\n", "Z"][usize::from(t.tail) % 5]);
    s
}

/// Timestamps a producer writes: around `T0`, at the future-skew boundary, offsets, fractions.
fn arb_valid_ts() -> BoxedStrategy<Ts> {
    let boundary = NOW + SKEW_MS;
    (
        prop_oneof![
            6 => T0 - 3_600_000..=NOW + 240_000,
            2 => boundary - 3..=boundary + 3,
            1 => T0 - 86_400_000 * 400..=T0,
        ],
        prop_oneof![3 => Just(0i32), 1 => -(23 * 60 + 59)..=23 * 60 + 59i32],
        prop::sample::select(vec![0u8, 3, 3, 3, 1, 2, 6, 9]),
        any::<u64>(),
    )
        .prop_map(|(ms, tz_min, frac, sub)| Ts {
            ms,
            tz_min,
            frac,
            sub,
            sep: 0,
            zone: 0,
            leap: false,
            date: None,
            edit: None,
            tail: 0,
        })
        .boxed()
}

/// Timestamps from anywhere in years 1 to 9999, with odd offsets, leap seconds, long or empty
/// fractions, other separators and zones, out-of-range components and trailing bytes.
fn arb_edge_ts() -> BoxedStrategy<Ts> {
    let boundary = NOW + SKEW_MS;
    (
        prop_oneof![
            3 => T0 - 3_600_000..=boundary + 3_600_000i64,
            2 => boundary - 3..=boundary + 3,
            2 => -62_135_596_800_000i64..=253_402_300_799_999,
            1 => -2_208_988_800_000i64 - 86_400_000..=-2_208_988_800_000 + 86_400_000, // 1900-01-01
            1 => -86_400_000i64..=86_400_000,                                        // 1970-01-01
            1 => prop::sample::select(vec![1_483_228_799_000i64, 1_435_708_799_000, 951_782_400_000, 4_107_542_399_999]),
        ],
        prop_oneof![2 => Just(0i32), 2 => -(23 * 60 + 59)..=23 * 60 + 59i32, 1 => -(30 * 60)..=30 * 60i32],
        0u8..=13,
        any::<u64>(),
        prop_oneof![6 => Just(0u8), 1 => 1u8..4],
        0u8..10,
        prop::bool::weighted(0.15),
        prop_oneof![
            3 => Just(None),
            1 => (
                prop::sample::select(vec![1u16, 1899, 1900, 1969, 1970, 2000, 2023, 2024, 2025, 2026, 2100, 2400, 9999]),
                prop_oneof![3 => Just(2u8), 3 => 1u8..=12, 1 => prop::sample::select(vec![0u8, 13])],
                prop::sample::select(vec![0u8, 1, 28, 29, 30, 31, 32]),
            )
                .prop_map(Some),
        ],
        prop_oneof![
            5 => Just(None),
            1 => (0u8..8, prop_oneof![0u16..=99, Just(0), Just(60), Just(24), Just(1899), Just(1900), 0u16..=9999])
                .prop_map(Some),
        ],
        prop_oneof![8 => Just(0u8), 1 => 1u8..5],
    )
        .prop_map(|(ms, tz_min, frac, sub, sep, zone, leap, date, edit, tail)| Ts {
            ms,
            tz_min,
            frac,
            sub,
            sep,
            zone,
            leap,
            date,
            edit,
            tail,
        })
        .boxed()
}

// ---------------------------------------------------------------------------------------------
// Value generators
// ---------------------------------------------------------------------------------------------

/// Escapes that decode to ordinary characters.
const ODD_VALID: [&str; 12] = [
    "\\ud83d\\ude00",
    "\\uD83D\\uDE00",
    "\\udbff\\udfff",
    "\\ud800\\udc00",
    "\\u00e9",
    "\\u00E9",
    "\\/",
    "\\\"",
    "\\\\",
    "\\uFEFF",
    "\\u2028",
    "\\u0041",
];
/// Escapes and raw characters of every kind, most of them invalid somewhere.
const ODD_ANY: [&str; 38] = [
    "\\ud83d",
    "\\ude00",
    "\\ude00\\ud83d",
    "\\ud83d\\u0041",
    "\\ud83dx",
    "\\ud83d\\n",
    "\\ud83d\\ud83d",
    "\\udbff",
    "\\uDC00",
    "\\u0000",
    "\\u001f",
    "\\u007f",
    "\\u0085",
    "\\u0020",
    "\\uffff",
    "\\n",
    "\\t",
    "\\b\\f\\n\\r\\t",
    "\\x41",
    "\\U0041",
    "\\u12",
    "\\u12G4",
    "\\u",
    "\\",
    "\\'",
    "\\a",
    "\\0",
    "\\ ",
    "\\u{41}",
    "\\u+041",
    "\t",
    "\n",
    "\u{0}",
    "\u{1f}",
    "\u{7f}",
    "\"",
    "\u{2028}",
    "\u{feff}",
];

/// UTF-16 code units around the interesting boundaries: surrogates (D800-DBFF high, DC00-DFFF
/// low) and their neighbours, controls, non-characters, anything.
fn arb_unit() -> BoxedStrategy<u16> {
    let boundaries = vec![0xd7ffu16, 0xd800, 0xdbff, 0xdc00, 0xdfff, 0xe000, 0, 0x1f, 0x20, 0x7f, 0x80, 0xfffe, 0xffff];
    prop_oneof![
        4 => prop::sample::select(boundaries),
        2 => 0xd7feu16..=0xe001,
        1 => 0xdbfeu16..=0xdc01,
        1 => 0u16..=0x20,
        1 => 0x7eu16..=0xa0,
        1 => 0xfffdu16..=0xffff,
        1 => any::<u16>(),
    ]
    .boxed()
}

/// Snippets for inside string literals; `invalid`: invalid ones too.
fn arb_snippet(invalid: bool) -> BoxedStrategy<Snip> {
    let pair = (0xd800u16..=0xdbff, 0xdc00u16..=0xdfff, any::<bool>()).prop_map(|(first, second, upper)| Snip::U {
        first,
        second: Some(second),
        upper,
    });
    let valid = prop_oneof![
        3 => prop::sample::select(ODD_VALID.to_vec()).prop_map(Snip::Text),
        1 => pair,
        1 => (prop_oneof![0x20u16..=0xd7ff, 0xe000u16..=0xffff], any::<bool>())
            .prop_map(|(first, upper)| Snip::U { first, second: None, upper }),
    ];
    if invalid {
        let units = (arb_unit(), prop::option::of(arb_unit()), any::<bool>())
            .prop_map(|(first, second, upper)| Snip::U { first, second, upper });
        // A high surrogate and a unit from around the low surrogates' range.
        let high = prop_oneof![prop::sample::select(vec![0xd800u16, 0xdbff, 0xd83d]), 0xd800u16..=0xdbff];
        let half_pairs = (high, arb_unit(), any::<bool>()).prop_map(|(first, second, upper)| Snip::U {
            first,
            second: Some(second),
            upper,
        });
        prop_oneof![
            2 => valid,
            3 => prop::sample::select(ODD_ANY.to_vec()).prop_map(Snip::Text),
            2 => units,
            2 => half_pairs,
        ]
        .boxed()
    } else {
        valid.boxed()
    }
}

/// Text of a string field with (min, max) characters. `edgy`: lengths at and around the limits,
/// control characters, all classes.
fn arb_text(min: usize, max: usize, edgy: bool) -> BoxedStrategy<Text> {
    let typical = min.max(1)..=max.clamp(1, 24);
    if edgy {
        let near: Vec<usize> =
            vec![0, 1, min.saturating_sub(1), min, min + 1, max.saturating_sub(1), max, max + 1, max + 2, max * 4 + 1];
        let len = prop_oneof![3 => typical, 4 => prop::sample::select(near), 1 => 0..=max + 8];
        (prop_oneof![2 => Just(0u8), 1 => Just(1), 2 => Just(2), 1 => Just(3), 2 => Just(4)], len, any::<u64>())
            .prop_map(|(class, len, seed)| Text { class, len, seed })
            .boxed()
    } else {
        let len = prop_oneof![12 => typical, 1 => prop::sample::select(vec![min.max(1), max.max(1)])];
        (prop_oneof![10 => Just(0u8), 1 => Just(1), 1 => Just(2), 2 => Just(3)], len, any::<u64>())
            .prop_map(|(class, len, seed)| Text { class, len, seed })
            .boxed()
    }
}

fn arb_str(min: usize, max: usize, edgy: bool) -> BoxedStrategy<Str> {
    let style = if edgy { (0u8..6).boxed() } else { prop_oneof![12 => Just(0u8), 1 => 1u8..6].boxed() };
    let odd = if edgy {
        prop_oneof![3 => Just(vec![]), 2 => prop::collection::vec((0usize..300, arb_snippet(true)), 1..=2)].boxed()
    } else {
        prop_oneof![20 => Just(vec![]), 1 => prop::collection::vec((0usize..40, arb_snippet(false)), 1..=1)].boxed()
    };
    (arb_text(min, max, edgy), style, odd).prop_map(|(t, style, odd)| Str { text: t.make(), style, odd }).boxed()
}

fn ts_str(ts: Ts, style: u8) -> J {
    J::S(Str { text: render_ts(&ts), style, odd: Vec::new() })
}

/// `risk` as producers write it: valid, mostly in serde_json's shortest form.
fn arb_valid_risk() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (0.0..=1.0f64).prop_map(|r| Value::from(r).to_string()),
        2 => (0u32..=10_000).prop_map(|n| Value::from(f64::from(n) / 10_000.0).to_string()),
        1 => prop::sample::select(vec![
            "0", "1", "0.0", "1.0", "1.00", "0.5", "5e-1", "0.5E+0", "1E0", "0e0", "0.0e-0", "0.000001", "1e-22",
            "0.9999999999999999", "1.0000000000000000", "0.1e1", "10e-1", "100e-2",
        ])
        .prop_map(str::to_string),
    ]
    .boxed()
}

/// Numbers at the edges: of [0, 1], of f64, of the fast path's u64 significand and ±22 exponent,
/// of the number grammar.
const EDGE_NUMBERS: [&str; 62] = [
    "-0",
    "-0.0",
    "-0e0",
    "-1",
    "1e308",
    "1e309",
    "-1e308",
    "1.7976931348623157e308",
    "1.7976931348623159e308",
    "2.2250738585072014e-308",
    "4.9e-324",
    "5e-324",
    "2e-324",
    "1e-400",
    "1e400",
    "1.0000000000000002",
    "1.0000000000000001",
    "1.00000000000000009",
    "1.000000000000000065",
    "0.99999999999999999",
    "0.36992193657909411",
    "9007199254740993e-16",
    "18446744073709551615e-19",
    "18446744073709551616e-20",
    "0.18446744073709551615",
    "0.18446744073709551616",
    "1e22",
    "1e-22",
    "1e23",
    "1e-23",
    "10000000000000000000000e-22",
    "1e+22",
    "1E-022",
    "1e-0022",
    "0e999999999999",
    "1e-2147483648",
    "1e2147483648",
    "1.0e",
    "1.0e+",
    "1.",
    ".5",
    "00",
    "01",
    "00.5",
    "+0.5",
    "0x1",
    "NaN",
    "Infinity",
    "-Infinity",
    "1_0",
    "0.5.5",
    "0..5",
    "0,5",
    "--1",
    "-",
    "1e1e1",
    "0.5 ",
    "\u{661}",
    "1.0000001",
    "1.1",
    "2",
    "0.00000000000000000000000000000000000000000000000001",
];

/// A number from the grammar's parts: sign, integer digits (0 to 22, leading zeros possible),
/// fraction digits (none, empty, up to 25), exponent (none, empty, up to 5 digits).
#[derive(Debug, Clone)]
struct NumParts {
    neg: bool,
    int: u8,
    frac: Option<u8>,
    exp: Option<(bool, u8, u8)>,
    seed: u64,
}

impl NumParts {
    fn make(&self) -> String {
        let mut rng = Rng::new(self.seed);
        let mut s = String::new();
        if self.neg {
            s.push('-');
        }
        let digit = |rng: &mut Rng| char::from(b'0' + rng.below(10) as u8);
        // Mostly "0" or "1" for the integer part, so that the value often lands near [0, 1].
        match self.int {
            0 => {}
            1 => s.push(if rng.below(3) == 0 { '1' } else { '0' }),
            n => (0..n).for_each(|_| s.push(digit(&mut rng))),
        }
        if let Some(f) = self.frac {
            s.push('.');
            (0..f).for_each(|_| s.push(digit(&mut rng)));
        }
        if let Some((upper, sign, digits)) = self.exp {
            s.push(if upper { 'E' } else { 'e' });
            s.push_str(["", "+", "-"][usize::from(sign) % 3]);
            (0..digits).for_each(|_| s.push(digit(&mut rng)));
        }
        s
    }
}

/// Numbers around the fast path's limits: 1 to 21 significant digits (u64 holds 19 to 20), a
/// decimal exponent around ±22 after the fraction digits are counted.
fn arb_exponent_edge() -> BoxedStrategy<String> {
    (any::<u64>(), 1usize..=21, any::<bool>(), 0usize..=21, -25i32..=25, 0u8..3)
        .prop_map(|(sig, n, zero, point, exp, form)| {
            let digits: String = format!("{sig:020}{}", sig % 10).chars().rev().take(n).collect();
            let (int, frac) = if zero { ("0", digits.as_str()) } else { digits.split_at(point.clamp(1, n)) };
            let int = if int.len() > 1 && int.starts_with('0') { "1" } else { int };
            let mut s = int.to_string();
            if !frac.is_empty() {
                s.push('.');
                s.push_str(frac);
            }
            match form {
                0 => s,
                1 => format!("{s}e{exp}"),
                _ => format!("{s}E{exp:+03}"),
            }
        })
        .boxed()
}

/// Numbers within a few ulps of 1.0 (from above and below), written in several ways: where a
/// rounding difference decides between accepted and `risk_out_of_range`.
fn arb_near_one() -> BoxedStrategy<String> {
    (any::<bool>(), 13usize..=19, 1usize..=3, any::<u64>(), 0u8..4)
        .prop_map(|(above, run, tail, seed, form)| {
            let mut rng = Rng::new(seed);
            let tail: String = (0..tail).map(|_| char::from(b'0' + rng.below(10) as u8)).collect();
            let (int, frac) = if above {
                ("1", format!("{}{tail}", "0".repeat(run)))
            } else {
                ("0", format!("{}{tail}", "9".repeat(run)))
            };
            match form {
                0 => format!("{int}.{frac}"),
                1 => format!("{int}{frac}e-{}", frac.len()),
                2 => format!("{int}{}.{}e-1", &frac[..1], &frac[1..]),
                _ => format!("0.{int}{frac}e1"),
            }
        })
        .boxed()
}

fn arb_edge_number() -> BoxedStrategy<String> {
    let parts = (
        prop::bool::weighted(0.1),
        prop_oneof![6 => Just(1u8), 1 => Just(0u8), 2 => 2u8..=22],
        prop_oneof![1 => Just(None), 4 => (0u8..=25).prop_map(Some)],
        prop_oneof![3 => Just(None), 1 => (any::<bool>(), 0u8..3, 0u8..=5).prop_map(Some)],
        any::<u64>(),
    )
        .prop_map(|(neg, int, frac, exp, seed)| NumParts { neg, int, frac, exp, seed }.make());
    prop_oneof![
        2 => prop::sample::select(EDGE_NUMBERS.to_vec()).prop_map(str::to_string),
        3 => parts,
        2 => arb_exponent_edge(),
        2 => arb_near_one(),
        1 => (-2.0..=2.0f64).prop_map(|r| Value::from(r).to_string()),
    ]
    .boxed()
}

/// Values of the wrong type for (almost) any field, and broken tokens.
fn arb_wrong() -> BoxedStrategy<J> {
    prop_oneof![
        3 => prop::sample::select(vec!["true", "false", "null"]).prop_map(J::Word),
        2 => prop::sample::select(vec!["123", "-1.5e3", "0", "1", "0.5", "4294967296"]).prop_map(|n| J::Num(n.to_string())),
        2 => prop::sample::select(vec!["x", "0.5", "1", "null", "", "2026-05-28T20:26:40Z"]).prop_map(|s| J::S(plain(s))),
        1 => Just(J::Arr(vec![])),
        1 => Just(J::Arr(vec![J::S(plain("x")), J::Num("0.5".to_string())])),
        1 => Just(J::Obj(vec![])),
        1 => Just(J::Obj(vec![(plain("a"), J::Num("1".to_string()))])),
        1 => (1usize..300, any::<u64>()).prop_map(|(depth, kinds)| J::Nest { depth, kinds, inner: Box::new(J::Word("null")) }),
        2 => prop::sample::select(vec![
            "nul", "tru", "fals", "NULL", "True", "NaN", "'x'", "", "\"x", "\"", "x", "-", "[", "{", "]", "}", ",",
            ":", "[1,]", "{\"a\"}", "\"a\":1", "undefined", "0x10", "\"\\", "nulll",
        ])
        .prop_map(J::Raw),
    ]
    .boxed()
}

/// A valid JSON value for inside `attributes` (strings with valid or, with `edgy`, any escapes).
fn arb_json(edgy: bool) -> BoxedStrategy<J> {
    let leaf = prop_oneof![
        2 => prop::sample::select(vec!["true", "false", "null"]).prop_map(J::Word),
        2 => prop::sample::select(vec!["0", "-0", "1", "-1.5E-3", "1e308", "1e999", "-1e-999", "123456789012345678901234567890", "0.1", "2.5e+10"])
            .prop_map(|n| J::Num(n.to_string())),
        3 => arb_str(0, 12, edgy).prop_map(J::S),
    ];
    leaf.prop_recursive(4, 24, 4, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(J::Arr),
            prop::collection::vec((arb_str(0, 6, edgy), inner), 0..4).prop_map(J::Obj),
        ]
    })
    .boxed()
}

fn arb_valid_attributes() -> BoxedStrategy<J> {
    prop::collection::vec((arb_str(1, 8, false), arb_json(false)), 0..5).prop_map(J::Obj).boxed()
}

/// Nesting depths around every limit: the policy's 8, the fast path's 64, serde_json's 128, and
/// far beyond (the stack).
fn arb_depth() -> BoxedStrategy<usize> {
    prop_oneof![
        3 => 1usize..=10,
        2 => 62usize..=67,
        2 => 126usize..=130,
        1 => 250usize..=260,
        1 => 1000usize..=1100,
        1 => 5000usize..=8000,
    ]
    .boxed()
}

fn arb_edge_attributes() -> BoxedStrategy<J> {
    let inner = prop_oneof![
        Just(J::Word("1")),
        Just(J::Obj(vec![])),
        Just(J::Arr(vec![])),
        Just(J::S(plain("]}"))),
        Just(J::S(Str { text: String::new(), style: 0, odd: vec![(0, Snip::Text("\\\"[{"))] })),
    ];
    prop_oneof![
        3 => arb_json(true),
        3 => (arb_depth(), any::<u64>(), prop::bool::weighted(0.85), inner).prop_map(|(depth, kinds, object, inner)| J::Nest {
            depth,
            kinds: if object { kinds | 1 } else { kinds & !1 },
            inner: Box::new(inner),
        }),
        2 => prop::collection::vec((arb_str(0, 6, true), arb_json(true)), 0..4).prop_map(J::Obj),
        1 => arb_wrong(),
    ]
    .boxed()
}

/// Names near the contract's: case, spaces, prefixes, suffixes, other spellings.
const UNKNOWN_KEYS: [&str; 36] = [
    "ipv9",
    "Event_id",
    "EVENT_ID",
    "event_id ",
    " event_id",
    "event_i",
    "event_idd",
    "",
    "a",
    "ac",
    "acc",
    "s",
    "sc",
    "so",
    "si",
    "sign",
    "r",
    "risk2",
    "riskk",
    "i",
    "c",
    "d",
    "u",
    "attributes_",
    "attribute",
    "schema_version2",
    "schema",
    "x",
    "\u{ff45}vent_id",
    "event\u{0}id",
    "eventId",
    "occurredAt",
    "accountId",
    "$schema",
    "__proto__",
    "o",
];

const SIGNAL_NEAR_MISSES: [&str; 12] = [
    "Failed_login",
    "failed_login ",
    " failed_login",
    "failed-login",
    "failedlogin",
    "failed_logi",
    "FAILED_LOGIN",
    "telepathy",
    "failed_login\u{a0}",
    "\u{fb01}led_login",
    "new_device\u{0}",
    "unusual_time\u{7f}",
];

const SCHEMA_VERSIONS: [&str; 20] = [
    "1",
    "0",
    "2",
    "01",
    "1.0",
    "1e0",
    "-1",
    "-0",
    "null",
    "4294967295",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999",
    "\"1\"",
    "true",
    "[1]",
    "+1",
    "1.5",
    "10e-1",
    "65537",
];

/// Near misses of `null` (the fast path looks for `null` in the nullable members).
const NEAR_NULL: [&str; 14] = [
    "nul",
    "nu",
    "n",
    "Null",
    "NULL",
    "nulL",
    "null0",
    "nullnull",
    "null null",
    "nil",
    "None",
    "\"null\"",
    "null,",
    "n\\u0075ll",
];

fn arb_near_null() -> BoxedStrategy<J> {
    prop::sample::select(NEAR_NULL.to_vec()).prop_map(J::Raw).boxed()
}

/// An edge or wrong value for one field.
fn arb_edge_value(field: usize) -> BoxedStrategy<J> {
    let (min, max) = BOUNDS[field];
    let specific: BoxedStrategy<J> = match field {
        F_OCCURRED_AT => prop_oneof![
            4 => (arb_edge_ts(), prop_oneof![5 => Just(0u8), 1 => 0u8..6]).prop_map(|(t, style)| ts_str(t, style)),
            1 => prop::sample::select(BAD_TIMESTAMPS.to_vec()).prop_map(|s| J::S(plain(s))),
            1 => prop::sample::select(ANCIENT_TIMESTAMPS.to_vec()).prop_map(|s| J::S(plain(s))),
            1 => arb_str(min, max, true).prop_map(J::S),
        ]
        .boxed(),
        F_SIGNAL => prop_oneof![
            2 => prop::sample::select(SIGNAL_NEAR_MISSES.to_vec()).prop_map(|s| J::S(plain(s))),
            2 => (prop::sample::select(DEFAULT_SIGNALS.to_vec()), 0u8..6).prop_map(|(s, style)| J::S(Str { text: s.to_string(), style, odd: vec![] })),
            2 => arb_str(min, max, true).prop_map(J::S),
        ]
        .boxed(),
        F_RISK => arb_edge_number().prop_map(J::Num).boxed(),
        F_ATTRIBUTES => prop_oneof![6 => arb_edge_attributes(), 1 => arb_near_null()].boxed(),
        F_SCHEMA_VERSION => prop_oneof![
            3 => prop::sample::select(SCHEMA_VERSIONS.to_vec()).prop_map(|s| J::Num(s.to_string())),
            1 => arb_near_null(),
        ]
        .boxed(),
        F_IP | F_COUNTRY | F_DEVICE_ID | F_USER_AGENT => {
            prop_oneof![4 => arb_str(min, max, true).prop_map(J::S), 1 => arb_near_null()].boxed()
        }
        _ => arb_str(min, max, true).prop_map(J::S).boxed(),
    };
    prop_oneof![4 => specific, 1 => arb_wrong()].boxed()
}

// ---------------------------------------------------------------------------------------------
// Documents, mutations, cases
// ---------------------------------------------------------------------------------------------

const WS_VALID: [&str; 6] = [" ", "\n", "\t", "\r\n", "  ", " \t\r\n "];
/// Whitespace JSON does not allow (Unicode and ASCII), mixed with the allowed kinds.
const WS_ANY: [&str; 10] = [" ", "\n", "", "\u{c}", "\u{b}", "\u{a0}", "\u{feff}", "\u{2028}", "\u{3000}", "\u{85}"];

fn opt_member(value: BoxedStrategy<J>) -> BoxedStrategy<Option<J>> {
    prop_oneof![6 => Just(None), 1 => Just(Some(J::Word("null"))), 3 => value.prop_map(Some)].boxed()
}

/// A valid event (strings within their limits, a known signal, a valid time, risk in [0, 1]).
fn arb_doc() -> BoxedStrategy<Doc> {
    let s = |f: usize| arb_str(BOUNDS[f].0, BOUNDS[f].1, false);
    let strings = (
        s(F_EVENT_ID),
        prop_oneof![
            2 => (0usize..1000).prop_map(|i| plain(&account_name(i))),
            1 => s(F_ACCOUNT_ID),
        ],
        prop_oneof![
            3 => prop::sample::select(SOURCES.to_vec()).prop_map(plain),
            1 => s(F_SOURCE),
        ],
        (prop::sample::select(DEFAULT_SIGNALS.to_vec()), prop_oneof![12 => Just(0u8), 1 => 1u8..6])
            .prop_map(|(sig, style)| Str { text: sig.to_string(), style, odd: vec![] }),
    );
    let core = (strings, arb_valid_ts(), prop_oneof![12 => Just(0u8), 1 => 1u8..6], arb_valid_risk());
    let optional = (
        opt_member(
            prop_oneof![Just(J::S(plain("192.0.2.1"))), Just(J::S(plain("2001:db8::1"))), s(F_IP).prop_map(J::S)]
                .boxed(),
        ),
        opt_member(prop_oneof![Just(J::S(plain("PL"))), s(F_COUNTRY).prop_map(J::S)].boxed()),
        opt_member(s(F_DEVICE_ID).prop_map(J::S).boxed()),
        opt_member(
            prop_oneof![Just(J::S(plain("Mozilla/5.0 (X11; Linux x86_64)"))), s(F_USER_AGENT).prop_map(J::S)].boxed(),
        ),
        opt_member(arb_valid_attributes()),
        prop_oneof![6 => Just(None), 1 => Just(Some(J::Num("1".to_string()))), 1 => Just(Some(J::Word("null")))],
    );
    let layout = (
        prop_oneof![6 => Just(vec![]), 1 => prop::collection::vec(prop::sample::select(WS_VALID.to_vec()), 1..6)],
        prop_oneof![2 => Just(None), 1 => any::<u64>().prop_map(Some)],
    );
    (core, optional, layout)
        .prop_map(|(((event_id, account_id, source, signal), ts, ts_style, risk), optional, (ws, shuffle))| {
            let (ip, country, device_id, user_agent, attributes, schema_version) = optional;
            let mut members = vec![
                (plain("event_id"), J::S(event_id)),
                (plain("account_id"), J::S(account_id)),
                (plain("occurred_at"), ts_str(ts, ts_style)),
                (plain("source"), J::S(source)),
                (plain("signal"), J::S(signal)),
                (plain("risk"), J::Num(risk)),
            ];
            for (f, v) in [
                (F_IP, ip),
                (F_COUNTRY, country),
                (F_DEVICE_ID, device_id),
                (F_USER_AGENT, user_agent),
                (F_ATTRIBUTES, attributes),
                (F_SCHEMA_VERSION, schema_version),
            ] {
                if let Some(v) = v {
                    members.push((plain(KEYS[f]), v));
                }
            }
            let mut doc = Doc { members, ws, top: Top::Object, punct: None, prefix: "", suffix: "" };
            if let Some(seed) = shuffle {
                apply_mut(&mut doc, &Mut::Shuffle(seed), &mut None);
            }
            doc
        })
        .boxed()
}

fn arb_mut() -> BoxedStrategy<Mut> {
    let set =
        Union::new((0..KEYS.len()).map(|f| arb_edge_value(f).prop_map(move |value| Mut::Set { field: f, value })));
    let field = 0usize..KEYS.len();
    let string_field = prop::sample::select(vec![
        F_EVENT_ID,
        F_ACCOUNT_ID,
        F_OCCURRED_AT,
        F_SOURCE,
        F_SIGNAL,
        F_IP,
        F_COUNTRY,
        F_DEVICE_ID,
        F_USER_AGENT,
    ]);
    let unknown_key = prop_oneof![
        3 => prop::sample::select(UNKNOWN_KEYS.to_vec()).prop_map(plain),
        1 => arb_str(0, 16, true),
    ];
    let top = prop_oneof![
        Just(Top::Array),
        Just(Top::Empty),
        Just(Top::Twice),
        (1usize..200).prop_map(Top::Wrapped),
        prop_oneof![arb_wrong(), arb_json(true)].prop_map(Top::Value),
    ];
    let affixes =
        vec!["", " ", "\n", "\u{feff}", "\u{a0}", "\u{b}", "\u{c}", "x", ",", "}", "{}", "null", "\u{0}", "\"", "]"];
    prop_oneof![
        12 => set,
        2 => field.clone().prop_map(Mut::Remove),
        2 => (field.clone(), prop_oneof![2 => Just(None), 1 => arb_wrong().prop_map(Some)], any::<usize>())
            .prop_map(|(field, value, at)| Mut::Duplicate { field, value, at }),
        2 => (unknown_key, prop_oneof![arb_wrong(), arb_json(false)], any::<usize>())
            .prop_map(|(key, value, at)| Mut::Unknown { key, value, at }),
        1 => (field.clone(), 1u8..6, prop_oneof![3 => Just(None), 1 => (0usize..16, arb_snippet(true)).prop_map(Some)])
            .prop_map(|(field, style, odd)| Mut::KeyStyle { field, style, odd }),
        4 => (string_field, 0usize..80, arb_snippet(true)).prop_map(|(field, pos, snippet)| Mut::Odd { field, pos, snippet }),
        1 => any::<u64>().prop_map(Mut::Shuffle),
        1 => (0u8..10, any::<usize>()).prop_map(|(kind, at)| Mut::Punct { kind, at }),
        1 => (prop::sample::select(affixes.clone()), prop::sample::select(affixes))
            .prop_map(|(prefix, suffix)| Mut::Affix { prefix, suffix }),
        1 => prop::collection::vec(prop::sample::select(WS_ANY.to_vec()), 1..4).prop_map(Mut::Ws),
        1 => top.prop_map(Mut::Top),
        1 => (0u8..6, -2i8..=2).prop_map(|(unit, delta)| Mut::PadMessage { unit, delta }),
        1 => (0u8..6, -2i8..=2).prop_map(|(unit, delta)| Mut::PadAttributes { unit, delta }),
    ]
    .boxed()
}

/// Byte sequences to insert: invalid UTF-8 of every kind (stray continuation bytes, overlong
/// forms, UTF-16 surrogates, beyond U+10FFFF, truncated sequences: the first 15), then valid
/// UTF-8 and JSON-significant bytes.
const INSERTS: [&[u8]; 24] = [
    b"\xff",
    b"\xfe",
    b"\x80",
    b"\xbf",
    b"\xc0\x80",
    b"\xc1\xbf",
    b"\xe0\x80\x80",
    b"\xed\xa0\x80",
    b"\xed\xbf\xbf",
    b"\xf0\x80\x80\x80",
    b"\xf4\x90\x80\x80",
    b"\xf5\x80\x80\x80",
    b"\xc3",
    b"\xe2\x82",
    b"\xf0\x9f\x98",
    b"\xc3\xa9",
    b"\"",
    b"\\",
    b"{",
    b"}",
    b",",
    b"\x00",
    b"\\u",
    b"\xef\xbb\xbf",
];
const BYTES: [u8; 24] = [
    b'{', b'}', b'[', b']', b'"', b',', b':', b'\\', b' ', b'0', b'9', b'-', b'.', b'e', b'n', b't', 0, 0x1f, 0x7f,
    0x80, 0xc3, 0xff, b'/', b'u',
];

/// A byte-level change of the rendered message (positions modulo its length).
#[derive(Debug, Clone)]
enum ByteMut {
    Truncate(usize),
    Flip { at: usize, bit: u8 },
    Set { at: usize, byte: u8 },
    Insert { at: usize, bytes: &'static [u8] },
    Delete { at: usize, len: usize },
    Repeat { from: usize, len: usize, to: usize },
}

fn arb_byte_mut() -> BoxedStrategy<ByteMut> {
    prop_oneof![
        2 => any::<usize>().prop_map(ByteMut::Truncate),
        2 => (any::<usize>(), 0u8..8).prop_map(|(at, bit)| ByteMut::Flip { at, bit }),
        2 => (any::<usize>(), prop::sample::select(BYTES.to_vec())).prop_map(|(at, byte)| ByteMut::Set { at, byte }),
        1 => (any::<usize>(), prop::sample::select(INSERTS[..15].to_vec())).prop_map(|(at, bytes)| ByteMut::Insert { at, bytes }),
        2 => (any::<usize>(), prop::sample::select(INSERTS[15..].to_vec())).prop_map(|(at, bytes)| ByteMut::Insert { at, bytes }),
        1 => (any::<usize>(), 1usize..=8).prop_map(|(at, len)| ByteMut::Delete { at, len }),
        1 => (any::<usize>(), 1usize..=24, any::<usize>()).prop_map(|(from, len, to)| ByteMut::Repeat { from, len, to }),
    ]
    .boxed()
}

fn apply_byte_mut(b: &mut Vec<u8>, m: &ByteMut) {
    let pos = |at: usize, n: usize| at % (n + 1);
    match *m {
        ByteMut::Truncate(at) => b.truncate(pos(at, b.len())),
        ByteMut::Flip { at, bit } => {
            if !b.is_empty() {
                let i = at % b.len();
                b[i] ^= 1 << (bit % 8);
            }
        }
        ByteMut::Set { at, byte } => {
            if !b.is_empty() {
                let i = at % b.len();
                b[i] = byte;
            }
        }
        ByteMut::Insert { at, bytes } => {
            let i = pos(at, b.len());
            b.splice(i..i, bytes.iter().copied());
        }
        ByteMut::Delete { at, len } => {
            let i = pos(at, b.len());
            let end = (i + len).min(b.len());
            b.drain(i..end);
        }
        ByteMut::Repeat { from, len, to } => {
            let i = pos(from, b.len());
            let end = (i + len).min(b.len());
            let chunk = b[i..end].to_vec();
            let to = pos(to, b.len());
            b.splice(to..to, chunk);
        }
    }
}

/// Other policy limits and wall clocks than the defaults.
#[derive(Debug, Clone, Default)]
struct Knobs {
    now: Option<i64>,
    /// `max_message_bytes` as the message's own length plus this (after all mutations).
    message_delta: Option<i8>,
    max_message: Option<usize>,
    max_attributes_bytes: Option<usize>,
    max_attributes_depth: Option<usize>,
    skew_ms: Option<u64>,
}

fn arb_knobs() -> BoxedStrategy<Knobs> {
    let tweaked = (
        prop::option::of(prop::sample::select(vec![
            0,
            -1,
            1,
            i64::MAX,
            i64::MIN,
            T0 - 86_400_000,
            NOW + 3_153_600_000_000,
        ])),
        prop::option::weighted(0.3, -2i8..=2),
        prop::option::weighted(0.2, prop::sample::select(vec![0usize, 1, 2, 64, 200, 1000, 100_000])),
        prop::option::of(prop::sample::select(vec![0usize, 1, 2, 10, 100, 4095, 4096, 100_000])),
        prop::option::of(prop::sample::select(vec![0usize, 1, 2, 7, 8, 9, 63, 64, 65, 127, 128, 129, 10_000])),
        prop::option::weighted(0.3, prop::sample::select(vec![0u64, 1, 999, 1000, 86_400_000])),
    )
        .prop_map(|(now, message_delta, max_message, max_attributes_bytes, max_attributes_depth, skew_ms)| Knobs {
            now,
            message_delta,
            max_message,
            max_attributes_bytes,
            max_attributes_depth,
            skew_ms,
        });
    prop_oneof![9 => Just(Knobs::default()), 1 => tweaked].boxed()
}

/// Where a case starts from.
#[derive(Debug, Clone)]
enum Origin {
    /// A generated event and grammar-level mutations.
    Grammar { doc: Doc, muts: Vec<Mut> },
    /// A contract mutation of `tests/common/events.rs` applied to a plain event.
    Contract { account: usize, source: usize, signal: usize, risk: f64, offset_ms: i64, mutation: Mutation },
}

#[derive(Debug, Clone)]
struct Case {
    origin: Origin,
    bytes: Vec<ByteMut>,
    knobs: Knobs,
    /// One more timestamp, compared with chrono on its own (cheap: many more of them).
    timestamp: Ts,
}

fn arb_case() -> BoxedStrategy<Case> {
    let muts = prop_oneof![
        3 => Just(vec![]),
        4 => prop::collection::vec(arb_mut(), 1..=1),
        3 => prop::collection::vec(arb_mut(), 2..=4),
    ];
    let grammar = (arb_doc(), muts).prop_map(|(doc, muts)| Origin::Grammar { doc, muts });
    let contract =
        (0usize..40, 0..SOURCES.len(), 0..DEFAULT_SIGNALS.len(), 0.0..=1.0f64, -600_000i64..=0, arb_mutation())
            .prop_map(|(account, source, signal, risk, offset_ms, mutation)| Origin::Contract {
                account,
                source,
                signal,
                risk,
                offset_ms,
                mutation,
            });
    let bytes = prop_oneof![13 => Just(vec![]), 7 => prop::collection::vec(arb_byte_mut(), 1..=3)];
    (prop_oneof![17 => grammar, 3 => contract], bytes, arb_knobs(), arb_edge_ts())
        .prop_map(|(origin, bytes, knobs, timestamp)| Case { origin, bytes, knobs, timestamp })
        .boxed()
}

/// A case made concrete: the message, the policy and wall clock to decode it with, and the
/// `occurred_at` text generated for it (if any).
struct Input<'p> {
    bytes: Vec<u8>,
    policy: Cow<'p, Policy>,
    now: i64,
    occurred_at: Option<String>,
}

fn build<'p>(case: &Case, base: &'p Policy) -> Input<'p> {
    let k = &case.knobs;
    let mut policy = Cow::Borrowed(base);
    if k.max_message.is_some()
        || k.max_attributes_bytes.is_some()
        || k.max_attributes_depth.is_some()
        || k.skew_ms.is_some()
    {
        let p = policy.to_mut();
        if let Some(v) = k.max_message {
            p.max_message_bytes = v;
        }
        if let Some(v) = k.max_attributes_bytes {
            p.max_attributes_bytes = v;
        }
        if let Some(v) = k.max_attributes_depth {
            p.max_attributes_depth = v;
        }
        if let Some(ms) = k.skew_ms {
            p.max_future_skew = Duration::from_millis(ms);
        }
    }
    let now = k.now.unwrap_or(NOW);
    let (mut bytes, occurred_at) = match &case.origin {
        Origin::Grammar { doc, muts } => {
            let mut doc = doc.clone();
            let mut pad = None;
            for m in muts {
                apply_mut(&mut doc, m, &mut pad);
            }
            if let Some(pad) = pad {
                apply_pad(&mut doc, &pad, &policy);
            }
            let occurred_at = doc.get_str_mut(F_OCCURRED_AT).map(|s| s.text.clone());
            (render_doc(&doc).text.into_bytes(), occurred_at)
        }
        Origin::Contract { account, source, signal, risk, offset_ms, mutation } => {
            let ev = Ev::new(
                &format!("e-{account}-{offset_ms}"),
                &account_name(*account),
                T0 + offset_ms,
                SOURCES[*source],
                DEFAULT_SIGNALS[*signal],
                *risk,
            );
            (mutation.apply(&ev, now).bytes, None)
        }
    };
    for m in &case.bytes {
        apply_byte_mut(&mut bytes, m);
    }
    if let Some(d) = k.message_delta {
        policy.to_mut().max_message_bytes = (bytes.len() as i64 + i64::from(d)).max(0) as usize;
    }
    Input { bytes, policy, now, occurred_at }
}

// ---------------------------------------------------------------------------------------------
// The check
// ---------------------------------------------------------------------------------------------

/// Everything observable about a decode result.
#[derive(Debug, PartialEq)]
enum Seen {
    Ok {
        event_id: (String, bool),
        account_id: (String, bool),
        occurred_at_ms: i64,
        source: (String, bool),
        signal: u8,
        risk_bits: u32,
    },
    Err(RejectReason, String),
}

#[allow(clippy::ptr_arg)] // the variant (borrowed or owned) is the point
fn cow(c: &Cow<'_, str>) -> (String, bool) {
    (c.to_string(), matches!(c, Cow::Borrowed(_)))
}

fn seen(r: &Result<Event<'_>, Rejection>) -> Seen {
    match r {
        Ok(e) => Seen::Ok {
            event_id: cow(&e.event_id),
            account_id: cow(&e.account_id),
            occurred_at_ms: e.occurred_at_ms,
            source: cow(&e.source),
            signal: e.signal,
            risk_bits: e.risk.to_bits(),
        },
        Err(r) => Seen::Err(r.reason, r.detail.clone()),
    }
}

#[derive(Debug, Default)]
struct Stats {
    cases: u64,
    accepted: u64,
    fast_accepted: u64,
    /// Valid events exactly `max_message_bytes` long.
    accepted_at_limit: u64,
    reasons: BTreeMap<RejectReason, u64>,
    timestamps: u64,
    timestamps_valid: u64,
    bytes: u64,
}

impl Stats {
    fn distinct(&self) -> usize {
        self.reasons.len()
    }

    fn missing(&self) -> Vec<&'static str> {
        RejectReason::ALL.iter().filter(|r| !self.reasons.contains_key(r)).map(|r| r.as_str()).collect()
    }

    fn reasons_line(&self) -> String {
        self.reasons.iter().map(|(r, n)| format!("{}={n}", r.as_str())).collect::<Vec<_>>().join(" ")
    }
}

fn chrono_ms(s: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(s).ok().map(|t| t.timestamp_millis())
}

/// The properties for one input (a panic anywhere is a failure too).
fn check_bytes(bytes: &[u8], policy: &Policy, now: i64, stats: &mut Stats) -> Result<(), TestCaseError> {
    let reference = seen(&decode_reference(bytes, policy, now));
    let got = seen(&decode(bytes, policy, now));
    if got != reference {
        return Err(TestCaseError::fail(format!(
            "decode vs decode_reference: {got:?} vs {reference:?} on {}",
            show(bytes)
        )));
    }
    if let Some(fast) = decode_fast(bytes, policy, now) {
        let fast = seen(&Ok(fast));
        if fast != reference {
            return Err(TestCaseError::fail(format!(
                "decode_fast vs decode_reference: {fast:?} vs {reference:?} on {}",
                show(bytes)
            )));
        }
        stats.fast_accepted += 1;
    }
    stats.cases += 1;
    stats.bytes += bytes.len() as u64;
    match reference {
        Seen::Ok { .. } => {
            stats.accepted += 1;
            stats.accepted_at_limit += u64::from(bytes.len() == policy.max_message_bytes);
        }
        Seen::Err(r, _) => *stats.reasons.entry(r).or_default() += 1,
    }
    Ok(())
}

fn check_case(case: &Case, base: &Policy, stats: &RefCell<Stats>, dump: u64) -> Result<(), TestCaseError> {
    let input = build(case, base);
    let mut stats = stats.borrow_mut();
    if stats.cases < dump {
        let r = decode_reference(&input.bytes, &input.policy, input.now);
        println!("{:?} {}", r.map(|_| ()).map_err(|e| e.reason), show(&input.bytes));
    }
    for ts in input.occurred_at.iter().chain(std::iter::once(&render_ts(&case.timestamp))) {
        let (fast, chrono) = (parse_rfc3339_ms(ts), chrono_ms(ts));
        if fast != chrono {
            return Err(TestCaseError::fail(format!("parse_rfc3339_ms {fast:?} vs chrono {chrono:?} on {ts:?}")));
        }
        stats.timestamps += 1;
        stats.timestamps_valid += u64::from(chrono.is_some());
    }
    check_bytes(&input.bytes, &input.policy, input.now, &mut stats)
}

/// Input bytes for a failure message: escaped, and as a Rust byte string literal.
fn show(bytes: &[u8]) -> String {
    if bytes.len() > 4096 {
        format!("{} bytes, starting b\"{}\"", bytes.len(), bytes[..512].escape_ascii())
    } else {
        format!("b\"{}\"", bytes.escape_ascii())
    }
}

// ---------------------------------------------------------------------------------------------
// The runs
// ---------------------------------------------------------------------------------------------

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim().replace('_', "");
    let parsed = match v.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => v.parse(),
    };
    Some(parsed.unwrap_or_else(|e| panic!("{name}={v:?}: {e}")))
}

/// ChaCha seed of one batch: a function of the run's seed and the batch number only.
fn batch_seed(seed: u64, batch: u64) -> [u8; 32] {
    let mut rng = Rng::new(seed ^ batch.wrapping_mul(0xd1b5_4a32_d192_ed03));
    let mut out = [0u8; 32];
    for chunk in out.chunks_mut(8) {
        chunk.copy_from_slice(&rng.next_u64().to_le_bytes());
    }
    out
}

/// The fuzz run: at least `RESETGUARD_FUZZ_CASES` cases and, when set, `RESETGUARD_FUZZ_SECONDS`.
#[test]
fn grammar_fuzz_decode_paths_agree() {
    let cases = env_u64("RESETGUARD_FUZZ_CASES").unwrap_or(DEFAULT_CASES);
    let seconds = env_u64("RESETGUARD_FUZZ_SECONDS").map(Duration::from_secs);
    let seed = env_u64("RESETGUARD_FUZZ_SEED").unwrap_or(DEFAULT_SEED);
    let dump = env_u64("RESETGUARD_FUZZ_DUMP").unwrap_or(0);
    let base = Policy::default_with_version("fuzz");
    let strategy = arb_case();
    let stats = RefCell::new(Stats::default());
    let start = Instant::now();
    let mut last_report = Instant::now();
    let (mut done, mut batch) = (0u64, 0u64);
    println!(
        "decoder_fuzz: seed {seed:#x}, at least {cases} cases{}",
        match seconds {
            Some(s) => format!(" and {} s", s.as_secs()),
            None => String::new(),
        }
    );
    while done < cases || seconds.is_some_and(|s| start.elapsed() < s) {
        let n = if done < cases { (cases - done).min(BATCH) } else { BATCH };
        let config = Config {
            cases: u32::try_from(n).unwrap_or(u32::MAX),
            failure_persistence: None,
            max_shrink_iters: 20_000,
            max_shrink_time: 300_000,
            ..Config::default()
        };
        let rng = TestRng::from_seed(RngAlgorithm::ChaCha, &batch_seed(seed, batch));
        let mut runner = TestRunner::new_with_rng(config, rng);
        let result = runner.run(&strategy, |case| check_case(&case, &base, &stats, dump));
        match result {
            Ok(()) => {}
            Err(TestError::Fail(reason, case)) => {
                let input = build(&case, &base);
                panic!(
                    "decoder fuzz finding (seed {seed:#x}, batch {batch}): {reason}\nminimal case: {case:#?}\n\
                     input: {}\nmax_message_bytes {}, max_attributes_bytes {}, max_attributes_depth {}, \
                     max_future_skew {:?}, now {}",
                    show(&input.bytes),
                    input.policy.max_message_bytes,
                    input.policy.max_attributes_bytes,
                    input.policy.max_attributes_depth,
                    input.policy.max_future_skew,
                    input.now
                );
            }
            Err(e) => panic!("decoder fuzz aborted (seed {seed:#x}, batch {batch}): {e}"),
        }
        done += n;
        batch += 1;
        if last_report.elapsed() >= Duration::from_secs(60) {
            last_report = Instant::now();
            let s = stats.borrow();
            println!(
                "decoder_fuzz: {done} cases in {:.0} s ({:.0}/s), {} distinct reasons",
                start.elapsed().as_secs_f64(),
                done as f64 / start.elapsed().as_secs_f64(),
                s.distinct()
            );
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let s = stats.into_inner();
    println!(
        "decoder_fuzz: seed {seed:#x}: {} cases in {elapsed:.1} s ({:.0}/s, {batch} batches, {:.0} bytes on average)",
        s.cases,
        s.cases as f64 / elapsed,
        s.bytes as f64 / s.cases.max(1) as f64
    );
    println!(
        "  accepted {} ({:.1} %), {} of them by the fast path alone, {} exactly max_message_bytes long",
        s.accepted,
        100.0 * s.accepted as f64 / s.cases.max(1) as f64,
        s.fast_accepted,
        s.accepted_at_limit
    );
    println!("  occurred_at values compared with chrono: {} ({} valid)", s.timestamps, s.timestamps_valid);
    println!("  rejection reasons hit ({} of {}): {}", s.distinct(), RejectReason::ALL.len(), s.reasons_line());
    println!("  not hit: {:?}", s.missing());
    // The generator must keep reaching every corner of the contract; with too few cases (a
    // deliberately tiny run) only the basic checks apply. 17 of the 18 reasons: `too_deep` cannot
    // occur (FUZZING.md).
    assert_eq!(s.cases, done, "every generated case is checked");
    if s.cases >= 10_000 {
        assert!(s.distinct() >= 17, "only {} distinct rejection reasons: {}", s.distinct(), s.reasons_line());
        assert!(s.accepted_at_limit > 0, "no valid event at the size limit");
        assert!(s.accepted * 10 >= s.cases, "too few valid events: {} of {}", s.accepted, s.cases);
        assert!(
            s.fast_accepted * 2 >= s.accepted,
            "the fast path took {} of {} valid events",
            s.fast_accepted,
            s.accepted
        );
        assert!(s.timestamps_valid * 5 >= s.timestamps, "too few valid timestamps");
    }
}

// ---------------------------------------------------------------------------------------------
// Exhaustive sweeps of a few rich events
// ---------------------------------------------------------------------------------------------

/// Events using every member and many features at once (escapes, surrogate pairs, nesting,
/// offsets and fractions, whitespace), plus the plain shape.
fn rich_events() -> Vec<Vec<u8>> {
    let plain_ev = Ev::new("e-1", "acct-1", T0, "auth-service", "failed_login", 0.5).bytes();
    let rich = format!(
        concat!(
            " {{ \"event_id\" : \"e\\u002d\\ud83d\\ude00-1\" ,\n\t\"account_id\":\"użytkownik-\\\"7\\\"\",",
            "\"occurred_at\":\"{}\",\"source\":\"d\\u00e9tecteur-\u{df}\",\"signal\":\"impossible_travel\",",
            "\"risk\":0.36992193657909,\"ip\":\"2001:db8::1\",\"country\":null,\"device_id\":\"dev-\\/1\",",
            "\"user_agent\":\"Mozilla/5.0 (X11; Linux x86_64)\",\"attributes\":{{\"a\":[1,-0.5e3,{{\"b\":\"\\ud800\"}}],",
            "\"c\":{{\"d\":[true,false,null]}},\"e\":\"]}}\\\\\"}},\"schema_version\":1 }}\r\n"
        ),
        rfc3339_with_offset(T0 - 1234, 330).replace(".766", ".766123456")
    )
    .into_bytes();
    let reordered = format!(
        "{{\"schema_version\":null,\"attributes\":{},\"risk\":1E0,\"signal\":\"new_device\",\"source\":\"s\",\
         \"occurred_at\":\"2026-05-28T20:26:40.5-00:00\",\"account_id\":\"{}\",\"event_id\":\"{}\"}}",
        nested_attributes(8),
        "\u{8d26}".repeat(256),
        "x".repeat(128)
    )
    .into_bytes();
    vec![plain_ev, rich, reordered]
}

/// Truncation at every position, every bit flipped, every byte deleted or replaced, every
/// invalid UTF-8 sequence inserted everywhere: same properties as the fuzz run.
#[test]
fn exhaustive_sweeps_of_rich_events() {
    let policy = Policy::default_with_version("fuzz");
    let mut stats = Stats::default();
    let mut failures = Vec::new();
    let mut run = |b: &[u8], stats: &mut Stats| {
        if let Err(e) = check_bytes(b, &policy, NOW, stats) {
            failures.push(e.to_string());
        }
    };
    for base in rich_events() {
        // Each base event is valid as it stands.
        let ok = decode_reference(&base, &policy, NOW);
        assert!(ok.is_ok(), "{:?} on {}", ok.err(), show(&base));
        run(&base, &mut stats);
        for at in 0..=base.len() {
            run(&base[..at], &mut stats);
            for ins in INSERTS {
                let mut b = base.clone();
                b.splice(at..at, ins.iter().copied());
                run(&b, &mut stats);
            }
        }
        for at in 0..base.len() {
            for bit in 0..8 {
                let mut b = base.clone();
                b[at] ^= 1 << bit;
                run(&b, &mut stats);
            }
            for byte in BYTES {
                let mut b = base.clone();
                b[at] = byte;
                run(&b, &mut stats);
            }
            let mut b = base.clone();
            b.remove(at);
            run(&b, &mut stats);
        }
    }
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
    println!("sweeps: {} inputs, {} accepted, reasons: {}", stats.cases, stats.accepted, stats.reasons_line());
    assert!(stats.distinct() >= 8, "{}", stats.reasons_line());
}

// ---------------------------------------------------------------------------------------------
// Witnesses
// ---------------------------------------------------------------------------------------------

/// The minimal inputs by which this fuzzer caught bugs injected on purpose into a copy of the fast
/// path (FUZZING.md, "Does it find bugs?"), replayed on every run. Each one sits on an edge where
/// the fast path must agree with serde_json.
#[test]
fn witnesses_of_injected_bugs() {
    const HEAD: &str = "{\"event_id\":\"_\",\"account_id\":\"acct-0\",\"occurred_at\":\"2026-05-28T19:26:40Z\",\
                        \"source\":\"auth-service\",\"signal\":\"breached_password\",\"risk\":0.0";
    let closed = |s: String| format!("{s}}}").into_bytes();
    let witnesses: Vec<(&str, Vec<u8>)> = vec![
        ("plain", closed(HEAD.to_string())),
        ("duplicate member", closed(format!("{{\"event_id\":\"_\",{}", &HEAD[1..]))),
        ("high surrogate and \\ue000", closed(HEAD.replacen("\"_\"", "\"\\ud83d\\ue000_\"", 1))),
        ("`nul` for null", closed(format!("{HEAD},\"attributes\":nul"))),
        ("raw U+001F in an optional string", closed(format!("{HEAD},\"ip\":\"\u{1f}192.0.2.1\",\"attributes\":{{}}"))),
        ("form feed as whitespace", format!("\u{c}{HEAD}}}\u{c}").into_bytes()),
        ("21-digit significand", closed(HEAD.replacen("0.0", "0.113195659824100000000", 1))),
        ("offset +00:01", closed(HEAD.replacen("19:26:40Z", "19:27:40+00:01", 1))),
        ("1900-02-29", closed(HEAD.replacen("2026-05-28T19:26:40Z", "1900-02-29T19:26:40+00:00", 1))),
        ("100-year leap rule", closed(HEAD.replacen("2026-05-28", "2100-02-29", 1))),
        ("400-year leap rule", closed(HEAD.replacen("2026-05-28", "2000-02-29", 1))),
        ("`nul` for a nullable string", closed(format!("{HEAD},\"country\":nul"))),
        ("raw U+001F in a key inside attributes", closed(format!("{HEAD},\"attributes\":{{\"\u{1f}_\":[]}}"))),
        ("21 digits and an exponent", closed(HEAD.replacen("0.0", "0.099999999999999999509e1", 1))),
    ];
    let policy = Policy::default_with_version("fuzz");
    let mut stats = Stats::default();
    for (name, bytes) in &witnesses {
        if let Err(e) = check_bytes(bytes, &policy, NOW, &mut stats) {
            panic!("{name}: {e}");
        }
        // The message one byte over the size limit, and exactly at it.
        for delta in [-1i64, 0] {
            let mut p = policy.clone();
            p.max_message_bytes = (bytes.len() as i64 + delta) as usize;
            if let Err(e) = check_bytes(bytes, &p, NOW, &mut stats) {
                panic!("{name} (limit {delta:+}): {e}");
            }
        }
    }
    for ts in ["1900-02-29T19:26:40+00:00", "2100-02-29T00:00:00Z", "2000-02-29T00:00:00Z", "2026-05-28T19:27:40+00:01"]
    {
        assert_eq!(parse_rfc3339_ms(ts), chrono_ms(ts), "{ts}");
    }
    // Valid as written: the plain one, the 21-digit risks, the offset and 2000-02-29.
    assert_eq!(stats.accepted, 5 * 2, "{stats:?}");
}
