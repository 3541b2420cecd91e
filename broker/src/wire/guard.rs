//! The pre-decode guard: walks a request body by its wire layout and checks every length
//! (arrays, strings, bytes, compact varints, tagged fields) against the bytes left in the
//! frame, before the codec reserves anything.
//!
//! Why: kafka-protocol 0.18 reserves `Vec::with_capacity(count)` from the count on the wire;
//! a 2^31-element array in an 18-byte frame aborts the process. After this walk every array
//! count is at most `remaining / min_element_size`, so the codec's reservations stay within
//! a small multiple of the frame's own size. The layouts are generated from the codec's own
//! decoders (layouts.rs), so the walk reads exactly what the codec will read.

use std::collections::HashMap;
use std::sync::OnceLock;

use super::layouts::LAYOUTS;

#[derive(Debug)]
enum Node {
    Fixed(usize),
    Str {
        compact: bool,
    },
    Bytes {
        compact: bool,
    },
    Array {
        compact: bool,
        elem: Vec<Node>,
        min: usize,
    },
    Optional(Vec<Node>),
    /// Known tags with their layout (`None`: the codec refuses the tag at this version).
    Tagged(Vec<(u32, Option<Vec<Node>>)>),
}

/// Why a body was refused; the text names the field kind and the numbers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub String);

impl std::fmt::Display for Malformed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parsed layouts and their index by (API key, version). Built once; read-only after, so
/// the shards share it without a lock.
struct Table {
    layouts: Vec<Vec<Node>>,
    index: HashMap<(i16, i16), usize>,
}

fn table() -> &'static Table {
    static TABLE: OnceLock<Table> = OnceLock::new();
    TABLE.get_or_init(|| {
        let mut t = Table {
            layouts: Vec::with_capacity(LAYOUTS.len()),
            index: HashMap::new(),
        };
        for &(key, lo, hi, layout) in LAYOUTS {
            for v in lo..=hi {
                t.index.insert((key, v), t.layouts.len());
            }
            t.layouts.push(parse_layout(layout));
        }
        t
    })
}

/// Whether the guard knows the layout of this request (every advertised one must).
pub fn knows(key: i16, version: i16) -> bool {
    table().index.contains_key(&(key, version))
}

/// Checks a request body (after the header). `Ok` means the codec can decode it without
/// reserving more than a small multiple of `body.len()`; it may still refuse it (UTF-8,
/// semantic checks), which is fine.
/// Returns the bytes the codec will read (it ignores any after them, and so does Kafka).
pub fn check(key: i16, version: i16, body: &[u8]) -> Result<usize, Malformed> {
    let t = table();
    let Some(&i) = t.index.get(&(key, version)) else {
        return Err(Malformed(format!(
            "no wire layout for API {key} v{version}"
        )));
    };
    let mut r = Reader(body);
    walk(&t.layouts[i], &mut r)?;
    Ok(body.len() - r.left())
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take(&mut self, n: usize, what: &str) -> Result<&[u8], Malformed> {
        if n > self.0.len() {
            return Err(Malformed(format!(
                "{what}: {n} bytes claimed, {} left",
                self.0.len()
            )));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn i16(&mut self, what: &str) -> Result<i16, Malformed> {
        let b = self.take(2, what)?;
        Ok(i16::from_be_bytes([b[0], b[1]]))
    }
    fn i32(&mut self, what: &str) -> Result<i32, Malformed> {
        let b = self.take(4, what)?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    /// The codec's unsigned varint: at most five bytes, high bits of the fifth dropped.
    fn uvarint(&mut self, what: &str) -> Result<u32, Malformed> {
        let mut value = 0u32;
        for i in 0..5 {
            let b = self.take(1, what)?[0] as u32;
            value |= (b & 0x7f) << (i * 7);
            if b < 0x80 {
                break;
            }
        }
        Ok(value)
    }
    fn left(&self) -> usize {
        self.0.len()
    }
}

fn walk(nodes: &[Node], r: &mut Reader<'_>) -> Result<(), Malformed> {
    for node in nodes {
        match node {
            Node::Fixed(n) => {
                r.take(*n, "field")?;
            }
            Node::Str { compact } => {
                let len = if *compact {
                    match r.uvarint("compact string length")? {
                        0 => continue,
                        n => (n - 1) as usize,
                    }
                } else {
                    match r.i16("string length")? {
                        -1 => continue,
                        n if n < 0 => return Err(Malformed(format!("string length {n}"))),
                        n => n as usize,
                    }
                };
                r.take(len, "string")?;
            }
            Node::Bytes { compact } => {
                let len = if *compact {
                    match r.uvarint("compact bytes length")? {
                        0 => continue,
                        n => (n - 1) as usize,
                    }
                } else {
                    match r.i32("bytes length")? {
                        -1 => continue,
                        n if n < 0 => return Err(Malformed(format!("bytes length {n}"))),
                        n => n as usize,
                    }
                };
                r.take(len, "bytes")?;
            }
            Node::Array { compact, elem, min } => {
                let count = if *compact {
                    match r.uvarint("compact array length")? {
                        0 => continue,
                        n => (n - 1) as usize,
                    }
                } else {
                    match r.i32("array length")? {
                        -1 => continue,
                        n if n < 0 => return Err(Malformed(format!("array length {n}"))),
                        n => n as usize,
                    }
                };
                // Every element takes at least `min` bytes (at least one, even for an
                // element that could be empty: no client sends millions of those).
                if count.saturating_mul(*min) > r.left() {
                    return Err(Malformed(format!(
                        "array of {count} elements (at least {min} bytes each), {} bytes left",
                        r.left()
                    )));
                }
                for _ in 0..count {
                    walk(elem, r)?;
                }
            }
            Node::Optional(inner) => {
                if r.take(1, "optional marker")?[0] == 1 {
                    walk(inner, r)?;
                }
            }
            Node::Tagged(known) => {
                let count = r.uvarint("tagged field count")? as usize;
                // A tag and its size are at least a byte each.
                if count.saturating_mul(2) > r.left() {
                    return Err(Malformed(format!(
                        "{count} tagged fields, {} bytes left",
                        r.left()
                    )));
                }
                for _ in 0..count {
                    let tag = r.uvarint("tag")?;
                    let size = r.uvarint("tag size")? as usize;
                    match known.iter().find(|(t, _)| *t == tag) {
                        // The codec decodes known tags in place, not bounded by `size`.
                        Some((_, Some(layout))) => walk(layout, r)?,
                        Some((_, None)) => {
                            return Err(Malformed(format!("tag {tag} is not valid here")));
                        }
                        None => {
                            r.take(size, "tagged field")?;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Parses the layout language (see layouts.rs' generator). The layouts are ours and fixed,
/// so a parse failure is a bug caught by the tests, not an input error.
fn parse_layout(s: &str) -> Vec<Node> {
    let mut p = Parser {
        s: s.as_bytes(),
        i: 0,
    };
    let nodes = p.seq();
    assert!(p.i == p.s.len(), "layout {s:?}: trailing input at {}", p.i);
    nodes
}

struct Parser<'a> {
    s: &'a [u8],
    i: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }
    fn skip_ws(&mut self) {
        while self.peek() == Some(b' ') {
            self.i += 1;
        }
    }
    fn expect(&mut self, c: u8) {
        assert_eq!(
            self.peek(),
            Some(c),
            "layout: expected {:?} at {}",
            c as char,
            self.i
        );
        self.i += 1;
    }
    fn number(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
        std::str::from_utf8(&self.s[start..self.i])
            .unwrap()
            .parse()
            .unwrap()
    }
    /// Nodes up to a closing `)` or `}` or the end.
    fn seq(&mut self) -> Vec<Node> {
        let mut out = Vec::new();
        loop {
            self.skip_ws();
            let Some(c) = self.peek() else { break };
            let node = match c {
                b')' | b'}' => break,
                b'0'..=b'9' => Node::Fixed(self.number()),
                b's' | b'S' => {
                    self.i += 1;
                    Node::Str { compact: c == b'S' }
                }
                b'y' | b'Y' => {
                    self.i += 1;
                    Node::Bytes { compact: c == b'Y' }
                }
                b'a' | b'A' | b'o' => {
                    self.i += 1;
                    self.expect(b'(');
                    let inner = self.seq();
                    self.expect(b')');
                    if c == b'o' {
                        Node::Optional(inner)
                    } else {
                        let min = min_size(&inner).max(1);
                        Node::Array {
                            compact: c == b'A',
                            elem: inner,
                            min,
                        }
                    }
                }
                b't' => {
                    self.i += 1;
                    self.expect(b'{');
                    let mut known = Vec::new();
                    loop {
                        self.skip_ws();
                        if self.peek() == Some(b'}') {
                            self.i += 1;
                            break;
                        }
                        let tag = self.number() as u32;
                        if self.peek() == Some(b'!') {
                            self.i += 1;
                            known.push((tag, None));
                        } else {
                            self.expect(b'(');
                            let inner = self.seq();
                            self.expect(b')');
                            known.push((tag, Some(inner)));
                        }
                    }
                    Node::Tagged(known)
                }
                other => panic!("layout: unexpected {:?} at {}", other as char, self.i),
            };
            out.push(node);
        }
        out
    }
}

/// The fewest bytes a value of this layout takes on the wire.
fn min_size(nodes: &[Node]) -> usize {
    nodes
        .iter()
        .map(|n| match n {
            Node::Fixed(n) => *n,
            Node::Str { compact: true } | Node::Bytes { compact: true } => 1,
            Node::Str { compact: false } => 2,
            Node::Bytes { compact: false } => 4,
            Node::Array { compact, .. } => {
                if *compact {
                    1
                } else {
                    4
                }
            }
            Node::Optional(_) | Node::Tagged(_) => 1,
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_layout_parses() {
        for &(key, lo, hi, layout) in LAYOUTS {
            assert!(lo <= hi, "{key}");
            let _ = parse_layout(layout);
        }
        assert!(knows(3, 1));
    }

    /// The frame from the issue: Metadata v1, an empty client id, 2^31-1 topics.
    #[test]
    fn metadata_length_bomb_is_refused() {
        let frame = [
            0x00, 0x00, 0x00, 0x0e, 0x00, 0x03, 0x00, 0x01, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00,
            0x7f, 0xff, 0xff, 0xff,
        ];
        // Past the size, API key, version, correlation id and the (empty) client id.
        let body = &frame[14..];
        let err = check(3, 1, body).unwrap_err();
        assert!(err.0.contains("2147483647"), "{err}");
    }

    #[test]
    fn compact_lengths_are_bounded() {
        // Metadata v9: compact array claiming 2^28 topics.
        let body = [0x81, 0x80, 0x80, 0x80, 0x01, 0, 0, 0];
        assert!(check(3, 9, &body).is_err());
        // ... and a compact string claiming 4 GB.
        let body = [0x02, 0x02, 0xff, 0xff, 0xff, 0xff, 0x0f];
        assert!(check(3, 9, &body).is_err());
    }
}

/// A valid, rich body for this request (two elements per array, every optional struct and
/// known tag present, every string "ab"), generated from its layout: the seeds of the fuzz
/// targets and the agreement test below. `None` for a request without a layout.
pub fn sample_body(key: i16, version: i16) -> Option<Vec<u8>> {
    let t = table();
    let i = *t.index.get(&(key, version))?;
    let mut body = Vec::new();
    synth(&t.layouts[i], &mut body);
    Some(body)
}

/// Every (API key, version) with a layout.
pub fn known_requests() -> Vec<(i16, i16)> {
    let mut v: Vec<_> = table().index.keys().copied().collect();
    v.sort();
    v
}

fn uvarint(out: &mut Vec<u8>, mut v: u32) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn synth(nodes: &[Node], out: &mut Vec<u8>) {
    for n in nodes {
        match n {
            Node::Fixed(n) => out.extend(std::iter::repeat_n(1u8, *n)),
            Node::Str { compact } | Node::Bytes { compact } => {
                let is_bytes = matches!(n, Node::Bytes { .. });
                match (compact, is_bytes) {
                    (true, _) => uvarint(out, 3),
                    (false, false) => out.extend(2i16.to_be_bytes()),
                    (false, true) => out.extend(2i32.to_be_bytes()),
                }
                out.extend(b"ab");
            }
            Node::Array { compact, elem, .. } => {
                if *compact {
                    uvarint(out, 3);
                } else {
                    out.extend(2i32.to_be_bytes());
                }
                synth(elem, out);
                synth(elem, out);
            }
            Node::Optional(inner) => {
                out.push(1);
                synth(inner, out);
            }
            Node::Tagged(known) => {
                let present: Vec<_> = known
                    .iter()
                    .filter_map(|(t, l)| l.as_ref().map(|l| (*t, l)))
                    .collect();
                uvarint(out, present.len() as u32);
                for (tag, layout) in present {
                    let mut value = Vec::new();
                    synth(layout, &mut value);
                    uvarint(out, tag);
                    uvarint(out, value.len() as u32);
                    out.extend(value);
                }
            }
        }
    }
}

/// The guard against the codec itself: for every layout, a rich body (two elements per
/// array, every optional struct and known tag present) is generated from the layout; the
/// codec must decode it, read exactly those bytes, and encode it back byte for byte. A
/// layout that disagrees with the codec in any field fails here.
#[cfg(test)]
mod agrees_with_codec {
    use super::*;
    use bytes::{Bytes, BytesMut};
    use kafka_protocol::messages::{ApiKey, RequestKind};

    #[test]
    fn every_layout_round_trips_through_the_codec() {
        let mut checked = 0;
        for &(key, lo, hi, _) in LAYOUTS {
            let Ok(api) = ApiKey::try_from(key) else {
                continue;
            };
            for v in lo..=hi {
                let body = sample_body(key, v).unwrap();
                assert_eq!(check(key, v, &body), Ok(body.len()), "{api:?} v{v}");
                let mut bytes = Bytes::from(body.clone());
                let decoded = RequestKind::decode(api, &mut bytes, v)
                    .unwrap_or_else(|e| panic!("{api:?} v{v}: codec refused {body:?}: {e:#}"));
                assert!(
                    bytes.is_empty(),
                    "{api:?} v{v}: codec left {} bytes",
                    bytes.len()
                );
                let mut again = BytesMut::new();
                decoded.encode(&mut again, v).unwrap();
                assert_eq!(
                    &again[..],
                    &body[..],
                    "{api:?} v{v}: re-encoded differently"
                );
                checked += 1;
            }
        }
        // 87 APIs, 287 (API, version) pairs with kafka-protocol 0.18.
        assert!(checked >= 280, "{checked}");
    }

    /// Every request corelog advertises has a layout.
    #[test]
    fn every_advertised_version_is_guarded() {
        for &(key, lo, hi) in crate::api::SUPPORTED {
            for v in lo..=hi {
                assert!(knows(key as i16, v), "{key:?} v{v}");
            }
        }
    }
}
