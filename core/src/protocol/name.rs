//! [`Name`]: a stream name or symbol shared by every event of its stream, and [`Names`], the table
//! that hands out one `Name` per distinct text.
//!
//! Why: every market event carries its stream name (`btcusdt@depth`) and symbol (`BTCUSDT`). As
//! `String`s these were two heap allocations per event when decoded, two frees when the event was
//! dropped, and more copies on the way (the recovery's queue, the adapter's counters): about a tenth
//! of keel's instructions per depth message (docs/BENCHMARKS.md figure 4). A connection decodes with
//! its own [`Names`], so each text is allocated once per run and every event holds a counted
//! reference to it; cloning a `Name` is one atomic increment.
//!
//! A `Name` reads like a `String`: it derefs to `str`, compares with `str`, `&str` and `String`,
//! prints and (de)serializes as its text.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::borrow::Borrow;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// An immutable, cheaply cloned string: a stream name or an upper-case symbol.
///
/// Two `Name`s from one [`Names`] table with the same text share one allocation, so comparing them
/// (`==`, `cmp`) checks the pointer first and reads the text only when the pointers differ: a map
/// keyed by `Name` and looked up with an event's `Name` (the connection's gap tracker, stall watch and
/// counters, the recovery's books) finds its entry without a `memcmp`. Order and equality are the
/// text's, so this agrees with looking up by `&str` (`Borrow<str>`); the hash is the text's too.
#[derive(Clone)]
pub struct Name(Arc<str>);

/// The text's hash, as `str` hashes it (what `Borrow<str>` lookups need).
impl std::hash::Hash for Name {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        (*self.0).hash(state)
    }
}

impl PartialEq for Name {
    #[inline]
    fn eq(&self, other: &Name) -> bool {
        Arc::ptr_eq(&self.0, &other.0) || *self.0 == *other.0
    }
}
impl Eq for Name {}

impl PartialOrd for Name {
    #[inline]
    fn partial_cmp(&self, other: &Name) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Name {
    #[inline]
    fn cmp(&self, other: &Name) -> std::cmp::Ordering {
        if Arc::ptr_eq(&self.0, &other.0) { std::cmp::Ordering::Equal } else { self.0.cmp(&other.0) }
    }
}

impl Name {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Default for Name {
    fn default() -> Name {
        Name::from("")
    }
}

impl Deref for Name {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Name {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for Name {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Name {
    fn from(s: &str) -> Name {
        Name(Arc::from(s))
    }
}

impl From<String> for Name {
    fn from(s: String) -> Name {
        Name(Arc::from(s))
    }
}

impl From<&String> for Name {
    fn from(s: &String) -> Name {
        Name(Arc::from(s.as_str()))
    }
}

impl From<&Name> for Name {
    fn from(s: &Name) -> Name {
        s.clone()
    }
}

impl From<Name> for String {
    fn from(s: Name) -> String {
        s.0.to_string()
    }
}

impl PartialEq<str> for Name {
    fn eq(&self, other: &str) -> bool {
        &*self.0 == other
    }
}

impl PartialEq<&str> for Name {
    fn eq(&self, other: &&str) -> bool {
        &*self.0 == *other
    }
}

impl PartialEq<String> for Name {
    fn eq(&self, other: &String) -> bool {
        *self.0 == **other
    }
}

impl PartialEq<Name> for str {
    fn eq(&self, other: &Name) -> bool {
        self == &*other.0
    }
}

impl PartialEq<Name> for &str {
    fn eq(&self, other: &Name) -> bool {
        *self == &*other.0
    }
}

impl PartialEq<Name> for String {
    fn eq(&self, other: &Name) -> bool {
        **self == *other.0
    }
}

impl Serialize for Name {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Name {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Name, D::Error> {
        String::deserialize(d).map(Name::from)
    }
}

/// What a map keyed by [`Name`] can be looked up with: a `Name` (which finds an entry holding the same
/// allocation by pointer) or a `&str`; [`NameKey::to_name`] makes the key of a new entry.
pub trait NameKey: std::hash::Hash + Ord
where
    Name: Borrow<Self>,
{
    /// The `Name` to store (a clone of a `Name`, a new allocation for a `str`).
    fn to_name(&self) -> Name;
    /// The text.
    fn text(&self) -> &str;
}

impl NameKey for str {
    fn to_name(&self) -> Name {
        Name::from(self)
    }
    fn text(&self) -> &str {
        self
    }
}

impl NameKey for Name {
    fn to_name(&self) -> Name {
        self.clone()
    }
    fn text(&self) -> &str {
        self.as_str()
    }
}

/// At most this many texts are kept: Binance allows 1 024 streams per connection, each with a
/// symbol. Past it (a server sending ever new names) each new text is allocated per event, as a
/// `String` was, instead of growing the table without bound.
pub const MAX_NAMES: usize = 4096;

/// One [`Name`] per distinct text, for a connection's decoder.
#[derive(Debug, Clone)]
pub struct Names {
    // Sorted: a lookup compares O(log n) texts, and the common case (the text of the previous
    // lookup: one stream, its symbol) is checked first.
    sorted: Vec<Name>,
    last: [Option<Name>; 2],
    limit: usize,
}

impl Default for Names {
    fn default() -> Names {
        Names::new()
    }
}

impl Names {
    /// An empty table (for a connection: up to [`MAX_NAMES`] texts).
    pub fn new() -> Names {
        Names { sorted: Vec::new(), last: [None, None], limit: MAX_NAMES }
    }

    /// A table that keeps nothing: every [`Self::get`] allocates its `Name` (for decoding one frame,
    /// where keeping the texts would only cost).
    pub fn unshared() -> Names {
        Names { sorted: Vec::new(), last: [None, None], limit: 0 }
    }

    /// The `Name` of `text`: the same one (a clone of it) every time, up to [`MAX_NAMES`] texts.
    #[inline]
    pub fn get(&mut self, text: &str) -> Name {
        for n in self.last.iter().flatten() {
            if **n == *text {
                return n.clone();
            }
        }
        self.get_slow(text)
    }

    fn get_slow(&mut self, text: &str) -> Name {
        let name = match self.sorted.binary_search_by(|n| (**n).cmp(text)) {
            Ok(at) => self.sorted[at].clone(),
            Err(_) if self.sorted.len() >= self.limit => return Name::from(text),
            Err(at) => {
                let name = Name::from(text);
                self.sorted.insert(at, name.clone());
                name
            }
        };
        // The two most recent texts: a frame's stream name and its symbol.
        self.last.swap(0, 1);
        self.last[0] = Some(name.clone());
        name
    }

    /// Texts held.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    /// No text held yet.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cmp::Ordering;

    #[test]
    fn reads_like_a_string() {
        let n = Name::from("btcusdt@depth");
        assert_eq!(n, "btcusdt@depth");
        assert_eq!("btcusdt@depth", n);
        assert_eq!(n, "btcusdt@depth".to_string());
        assert_eq!(format!("{n} {n:?}"), "btcusdt@depth \"btcusdt@depth\"");
        assert_eq!(n.split('@').next(), Some("btcusdt"));
        assert_eq!(serde_json::to_string(&n).ok().as_deref(), Some("\"btcusdt@depth\""));
        assert_eq!(serde_json::from_str::<Name>("\"BTCUSDT\"").ok(), Some(Name::from("BTCUSDT")));
        assert_eq!(ron::to_string(&n).ok().as_deref(), Some("\"btcusdt@depth\""));
        assert_eq!(Name::default(), "");
    }

    #[test]
    fn order_and_equality_are_the_texts_whether_shared_or_not() {
        let (a, a2, b) = (Name::from("a@depth"), Name::from("a@depth"), Name::from("b@depth"));
        assert!(!Arc::ptr_eq(&a.0, &a2.0));
        assert_eq!(
            (a == a2, a.cmp(&a2), a == a.clone(), a.cmp(&a.clone())),
            (true, Ordering::Equal, true, Ordering::Equal)
        );
        assert_eq!((a.cmp(&b), b.cmp(&a), a == b), (Ordering::Less, Ordering::Greater, false));
        // A map keyed by Name answers a Name of another allocation and a &str alike.
        let map = std::collections::BTreeMap::from([(a.clone(), 1), (b.clone(), 2)]);
        assert_eq!((map.get(&a2), map.get("b@depth"), map.get(&Name::from("c"))), (Some(&1), Some(&2), None));
        let hashed = std::collections::HashMap::from([(a.clone(), 1), (b.clone(), 2)]);
        assert_eq!((hashed.get(&a2), hashed.get("b@depth"), hashed.get("c")), (Some(&1), Some(&2), None));
        assert_eq!(
            (a.to_name(), NameKey::text(&a), "x".to_name(), NameKey::text("x")),
            (a2, "a@depth", Name::from("x"), "x")
        );
    }

    #[test]
    fn one_allocation_per_text() {
        let mut names = Names::new();
        let texts = ["b@depth", "B", "a@aggTrade", "A", "b@depth", "B", "c@trade", "a@aggTrade", "B"];
        let got: Vec<Name> = texts.iter().map(|t| names.get(t)).collect();
        for (t, n) in texts.iter().zip(&got) {
            assert_eq!(n, t);
        }
        assert_eq!(names.len(), 5);
        // The same text gives the same allocation, whether it was one of the last two or not.
        assert!(Arc::ptr_eq(&got[0].0, &got[4].0));
        assert!(Arc::ptr_eq(&got[1].0, &got[8].0));
        assert!(Arc::ptr_eq(&got[2].0, &got[7].0));
    }

    #[test]
    fn the_table_is_bounded() {
        let mut names = Names::new();
        for i in 0..MAX_NAMES + 10 {
            let text = format!("s{i}");
            assert_eq!(names.get(&text), text.as_str());
        }
        assert_eq!(names.len(), MAX_NAMES);
        assert_eq!(names.get("s0"), "s0");
        let late = format!("s{}", MAX_NAMES + 5);
        assert_eq!(names.get(&late), late.as_str());
        assert_eq!(names.len(), MAX_NAMES);
        let mut none = Names::unshared();
        assert_eq!((none.get("a"), none.get("a"), none.len()), (Name::from("a"), Name::from("a"), 0));
    }
}
