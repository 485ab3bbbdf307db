//! Evidence ids packed for memory: an account keeps the `event_id`s of its newest events, which
//! are mostly UUIDs (36 characters of text, 16 bytes of information). Packed, one id is one item:
//!
//! - `[UUID, 16 bytes]` for a UUID in canonical lowercase form (`8-4-4-4-12` hex digits), or
//! - `[len, len bytes]` for any other id up to 253 bytes, `[LONG, len as u16 LE, len bytes]`
//!   for a longer one (the contract bounds an id to 128 characters, up to 512 bytes).
//!
//! Items follow each other with no separator. The same bytes are the changelog's evidence field,
//! so a restore copies them as they are. Pure.

/// Tag of a packed canonical UUID.
const UUID: u8 = 0xFF;
/// Tag of a text id longer than [`SHORT`] bytes (a u16 length follows).
const LONG: u8 = 0xFE;
/// Longest id whose length fits the tag byte.
const SHORT: usize = 0xFD;

/// Byte offsets of the hyphens in a canonical UUID.
const HYPHENS: [usize; 4] = [8, 13, 18, 23];

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

/// The 16 bytes of a canonical lowercase UUID, `None` for anything else.
fn uuid_bytes(id: &str) -> Option<[u8; 16]> {
    let b = id.as_bytes();
    if b.len() != 36 || HYPHENS.iter().any(|&i| b[i] != b'-') {
        return None;
    }
    let mut out = [0u8; 16];
    let mut digits = b.iter().enumerate().filter(|(i, _)| !HYPHENS.contains(i)).map(|(_, &c)| c);
    for o in &mut out {
        let (hi, lo) = (hex(digits.next()?)?, hex(digits.next()?)?);
        *o = hi << 4 | lo;
    }
    Some(out)
}

/// Appends one id, packed, to `out`.
pub fn push(out: &mut Vec<u8>, id: &str) {
    match uuid_bytes(id) {
        Some(u) => {
            out.push(UUID);
            out.extend_from_slice(&u);
        }
        None if id.len() <= SHORT => {
            out.push(id.len() as u8);
            out.extend_from_slice(id.as_bytes());
        }
        None => {
            // Cut (on a character boundary) only past 64 KiB, which the contract never allows.
            let mut n = id.len().min(usize::from(u16::MAX));
            while !id.is_char_boundary(n) {
                n -= 1;
            }
            out.push(LONG);
            out.extend_from_slice(&(n as u16).to_le_bytes());
            out.extend_from_slice(&id.as_bytes()[..n]);
        }
    }
}

/// The packed items, each with its tag, oldest first. A truncated tail is not an item.
pub fn items(packed: &[u8]) -> impl Iterator<Item = &[u8]> + '_ {
    let mut at = 0;
    std::iter::from_fn(move || {
        let (head, len) = match *packed.get(at)? {
            UUID => (1, 16),
            LONG => (3, usize::from(u16::from_le_bytes([*packed.get(at + 1)?, *packed.get(at + 2)?]))),
            n => (1, usize::from(n)),
        };
        let item = packed.get(at..at + head + len)?;
        at += head + len;
        Some(item)
    })
}

/// Writes one item (as [`items`] returns it) as text into `out` (cleared first).
pub fn write_item(item: &[u8], out: &mut String) {
    out.clear();
    match item.split_first() {
        Some((&UUID, u)) => {
            const DIGITS: &[u8; 16] = b"0123456789abcdef";
            for (i, b) in u.iter().enumerate() {
                if matches!(i, 4 | 6 | 8 | 10) {
                    out.push('-');
                }
                out.push(DIGITS[usize::from(b >> 4)] as char);
                out.push(DIGITS[usize::from(b & 15)] as char);
            }
        }
        Some((&LONG, rest)) => out.push_str(&String::from_utf8_lossy(rest.get(2..).unwrap_or_default())),
        Some((_, text)) => out.push_str(&String::from_utf8_lossy(text)),
        None => {}
    }
}

/// Every id as text, oldest first.
pub fn to_strings(packed: &[u8]) -> Vec<String> {
    items(packed)
        .map(|item| {
            let mut s = String::new();
            write_item(item, &mut s);
            s
        })
        .collect()
}

/// How many ids are packed.
pub fn count(packed: &[u8]) -> usize {
    items(packed).count()
}

/// The newest `n` items of `packed` (a suffix of it).
pub fn newest(packed: &[u8], n: usize) -> &[u8] {
    let total = count(packed);
    let start: usize = items(packed).take(total.saturating_sub(n)).map(<[u8]>::len).sum();
    &packed[start..]
}

/// Packs ids joined by '\n' (the text form of the first changelog version).
pub fn from_joined(text: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for id in text.split('\n').filter(|i| !i.is_empty()) {
        push(&mut out, id);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_canonical_uuid_takes_17_bytes_and_comes_back_the_same() {
        let mut p = Vec::new();
        push(&mut p, "0f8fad5b-d9cb-469f-a165-70867728950e");
        push(&mut p, "e-2");
        push(&mut p, "0F8FAD5B-D9CB-469F-A165-70867728950E");
        assert_eq!(p.len(), 17 + 4 + 37, "lowercase packed, the rest as text");
        assert_eq!(
            to_strings(&p),
            vec!["0f8fad5b-d9cb-469f-a165-70867728950e", "e-2", "0F8FAD5B-D9CB-469F-A165-70867728950E"]
        );
        assert_eq!(count(&p), 3);
        assert_eq!(to_strings(newest(&p, 2)), vec!["e-2", "0F8FAD5B-D9CB-469F-A165-70867728950E"]);
        assert_eq!(newest(&p, 5), &p[..]);
        assert!(newest(&p, 0).is_empty());
    }

    #[test]
    fn near_uuids_stay_text() {
        for id in [
            "0f8fad5b-d9cb-469f-a165-70867728950",
            "0f8fad5bxd9cb-469f-a165-70867728950e",
            "0f8fad5b-d9cb-469f-a165-70867728950g",
        ] {
            let mut p = Vec::new();
            push(&mut p, id);
            assert_eq!(p[0] as usize, id.len());
            assert_eq!(to_strings(&p), vec![id.to_string()]);
        }
    }

    #[test]
    fn a_long_id_of_wide_characters_is_kept_whole() {
        let id = "é".repeat(128);
        let mut p = Vec::new();
        push(&mut p, &id);
        push(&mut p, "x");
        assert_eq!(p.len(), 3 + 256 + 2);
        assert_eq!(to_strings(&p), vec![id, "x".to_string()]);
    }

    #[test]
    fn joined_text_converts() {
        assert_eq!(to_strings(&from_joined("a\nb\n\nc")), vec!["a", "b", "c"]);
        assert!(from_joined("").is_empty());
    }

    proptest! {
        #[test]
        fn any_ids_round_trip(ids in proptest::collection::vec("[a-zA-Z0-9._:-]{1,128}|[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\\PC{1,128}", 0..12)) {
            let mut p = Vec::new();
            for id in &ids {
                push(&mut p, id);
            }
            prop_assert_eq!(to_strings(&p), ids.clone());
            prop_assert_eq!(count(&p), ids.len());
        }
    }
}
