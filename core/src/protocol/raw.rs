//! The decoding layer under [`super::decode`]: one flat, borrowed view of every field any Binance
//! stream frame may carry.
//!
//! serde parses the text once into [`RawFrame`] (no `serde_json::Value` tree, strings borrowed from the
//! input where possible). Every field is a [`Val`] that records whatever JSON shape arrived instead of
//! failing, so that the typed conversion in `super` can say *which* field was missing or had the wrong
//! type; serde's own messages only say "invalid type at column 42". Only syntax errors and duplicate
//! keys fail here.

use super::decimal::Decimal;
use serde::Deserialize;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// One field's value, whatever its JSON type was.
#[derive(Debug, Default)]
pub(super) enum Val<'a> {
    /// The key was not present.
    #[default]
    Absent,
    Null,
    Bool(bool),
    U64(u64),
    /// Only negative integers arrive here (serde_json reports non-negative ones as `U64`).
    I64(i64),
    F64,
    Str(Cow<'a, str>),
    /// An array of `[price, qty]` decimal-string pairs (an empty array also lands here).
    Levels(Vec<(Decimal, Decimal)>),
    /// A non-empty array of strings.
    Strings(Vec<String>),
    /// An array that is neither; the text says what was wrong with it.
    BadArray(String),
    Object,
}

impl Val<'_> {
    /// The JSON type, for error messages.
    pub(super) fn json_type(&self) -> &'static str {
        match self {
            Val::Absent => "absent",
            Val::Null => "null",
            Val::Bool(_) => "a boolean",
            Val::U64(_) | Val::I64(_) => "an integer",
            Val::F64 => "a fractional number",
            Val::Str(_) => "a string",
            Val::Levels(_) | Val::Strings(_) | Val::BadArray(_) => "an array",
            Val::Object => "an object",
        }
    }

    pub(super) fn is_absent(&self) -> bool {
        matches!(self, Val::Absent)
    }
}

/// Drains the rest of a sequence so that serde_json does not complain about unread elements.
fn drain_seq<'de, A: SeqAccess<'de>>(mut seq: A) -> Result<(), A::Error> {
    while seq.next_element::<IgnoredAny>()?.is_some() {}
    Ok(())
}

fn drain_map<'de, A: MapAccess<'de>>(mut map: A) -> Result<(), A::Error> {
    while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
    Ok(())
}

struct ValVisitor;

impl<'de> Visitor<'de> for ValVisitor {
    type Value = Val<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Val<'de>, E> {
        Ok(Val::Bool(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Val<'de>, E> {
        Ok(Val::U64(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Val<'de>, E> {
        Ok(match u64::try_from(v) {
            Ok(u) => Val::U64(u),
            Err(_) => Val::I64(v),
        })
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Val<'de>, E> {
        Ok(Val::F64)
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Val<'de>, E> {
        Ok(Val::Str(Cow::Owned(v)))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Val<'de>, E> {
        Ok(Val::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Val<'de>, A::Error> {
        let mut levels = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        let mut strings = Vec::new();
        let mut bad: Option<String> = None;
        let mut index = 0usize;
        while let Some(elem) = seq.next_element::<Elem>()? {
            if bad.is_none() {
                match elem {
                    Elem::Level(price, qty) if strings.is_empty() => levels.push((price, qty)),
                    Elem::Str(s) if levels.is_empty() => strings.push(s),
                    Elem::Bad(why) => bad = Some(format!("element {index}: {why}")),
                    _ => bad = Some(format!("element {index}: mixes [price, qty] pairs and strings")),
                }
            }
            index += 1;
        }
        Ok(match bad {
            Some(why) => Val::BadArray(why),
            None if !strings.is_empty() => Val::Strings(strings),
            None => Val::Levels(levels),
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Val<'de>, A::Error> {
        drain_map(map)?;
        Ok(Val::Object)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Val<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Val<'a>, D::Error> {
        deserializer.deserialize_any(ValVisitor)
    }
}

/// One element of an array field: a `[price, qty]` pair, a string (subscription lists), or junk.
enum Elem {
    Level(Decimal, Decimal),
    Str(String),
    Bad(String),
}

struct ElemVisitor;

impl<'de> Visitor<'de> for ElemVisitor {
    type Value = Elem;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a [price, qty] pair or a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Elem, E> {
        Ok(Elem::Str(v.to_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Elem, A::Error> {
        let price = seq.next_element::<Val<'de>>()?;
        let qty = seq.next_element::<Val<'de>>()?;
        let extra = seq.next_element::<IgnoredAny>()?.is_some();
        if extra {
            drain_seq(seq)?;
            return Ok(Elem::Bad("a level has more than two entries (expected [price, qty])".into()));
        }
        let part = |v: Option<Val<'de>>, what: &str| -> Result<Decimal, String> {
            match v {
                Some(Val::Str(s)) => Decimal::parse(&s).map_err(|e| format!("{what} {s:?} is not a decimal: {e}")),
                Some(other) => Err(format!("{what} is {}, expected a decimal string", other.json_type())),
                None => Err(format!("{what} is missing (expected [price, qty])")),
            }
        };
        Ok(match (part(price, "price"), part(qty, "quantity")) {
            (Ok(p), Ok(q)) => Elem::Level(p, q),
            (Err(e), _) | (_, Err(e)) => Elem::Bad(e),
        })
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Elem, A::Error> {
        drain_map(map)?;
        Ok(Elem::Bad("an object, expected [price, qty] or a string".into()))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Elem, E> {
        Ok(Elem::Bad("a boolean, expected [price, qty] or a string".into()))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Elem, E> {
        Ok(Elem::Bad("a number, expected [price, qty] or a string".into()))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Elem, E> {
        Ok(Elem::Bad("a number, expected [price, qty] or a string".into()))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Elem, E> {
        Ok(Elem::Bad("a number, expected [price, qty] or a string".into()))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Elem, E> {
        Ok(Elem::Bad("null, expected [price, qty] or a string".into()))
    }
}

impl<'de> Deserialize<'de> for Elem {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Elem, D::Error> {
        deserializer.deserialize_any(ElemVisitor)
    }
}

/// A field that should hold an object of type `T`; any other shape is recorded, not an error.
#[derive(Debug, Default)]
pub(super) enum Nested<T> {
    #[default]
    Absent,
    Value(T),
    /// Present with the wrong JSON type (named).
    Wrong(&'static str),
}

struct NestedVisitor<T>(std::marker::PhantomData<T>);

impl<'de, T: Deserialize<'de>> Visitor<'de> for NestedVisitor<T> {
    type Value = Nested<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Nested<T>, A::Error> {
        T::deserialize(de::value::MapAccessDeserializer::new(map)).map(Nested::Value)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Nested<T>, A::Error> {
        drain_seq(seq)?;
        Ok(Nested::Wrong("an array"))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Nested<T>, E> {
        Ok(Nested::Wrong("a boolean"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Nested<T>, E> {
        Ok(Nested::Wrong("an integer"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Nested<T>, E> {
        Ok(Nested::Wrong("an integer"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Nested<T>, E> {
        Ok(Nested::Wrong("a fractional number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Nested<T>, E> {
        Ok(Nested::Wrong("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Nested<T>, E> {
        Ok(Nested::Wrong("null"))
    }
    fn visit_none<E: de::Error>(self) -> Result<Nested<T>, E> {
        Ok(Nested::Wrong("null"))
    }
}

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Nested<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Nested<T>, D::Error> {
        deserializer.deserialize_any(NestedVisitor(std::marker::PhantomData))
    }
}

/// The `data` of a combined-stream envelope: one event, or the array of an all-market stream.
#[derive(Debug, Default)]
pub(super) enum Data<'a> {
    #[default]
    Absent,
    Object(Box<RawFrame<'a>>),
    /// Each element as found: an object, or the JSON type it was instead.
    Array(Vec<Nested<RawFrame<'a>>>),
    /// Present with another JSON type (named).
    Wrong(&'static str),
}

struct DataVisitor;

impl<'de> Visitor<'de> for DataVisitor {
    type Value = Data<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object or an array")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Data<'de>, A::Error> {
        RawFrame::deserialize(de::value::MapAccessDeserializer::new(map)).map(|r| Data::Object(Box::new(r)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Data<'de>, A::Error> {
        let mut elements = Vec::new();
        while let Some(e) = seq.next_element::<Nested<RawFrame<'de>>>()? {
            elements.push(e);
        }
        Ok(Data::Array(elements))
    }
    fn visit_bool<E: de::Error>(self, _: bool) -> Result<Data<'de>, E> {
        Ok(Data::Wrong("a boolean"))
    }
    fn visit_u64<E: de::Error>(self, _: u64) -> Result<Data<'de>, E> {
        Ok(Data::Wrong("an integer"))
    }
    fn visit_i64<E: de::Error>(self, _: i64) -> Result<Data<'de>, E> {
        Ok(Data::Wrong("an integer"))
    }
    fn visit_f64<E: de::Error>(self, _: f64) -> Result<Data<'de>, E> {
        Ok(Data::Wrong("a fractional number"))
    }
    fn visit_str<E: de::Error>(self, _: &str) -> Result<Data<'de>, E> {
        Ok(Data::Wrong("a string"))
    }
    fn visit_unit<E: de::Error>(self) -> Result<Data<'de>, E> {
        Ok(Data::Wrong("null"))
    }
    fn visit_none<E: de::Error>(self) -> Result<Data<'de>, E> {
        Ok(Data::Wrong("null"))
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Data<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Data<'a>, D::Error> {
        deserializer.deserialize_any(DataVisitor)
    }
}

/// Every top-level field of every frame kind keel decodes (unknown keys are skipped).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub(super) struct RawFrame<'a> {
    #[serde(borrow)]
    pub e: Val<'a>,
    #[serde(borrow)]
    pub E: Val<'a>,
    #[serde(borrow)]
    pub s: Val<'a>,
    #[serde(borrow)]
    pub a: Val<'a>,
    #[serde(borrow)]
    pub p: Val<'a>,
    #[serde(borrow)]
    pub q: Val<'a>,
    #[serde(borrow)]
    pub f: Val<'a>,
    #[serde(borrow)]
    pub l: Val<'a>,
    #[serde(borrow)]
    pub T: Val<'a>,
    #[serde(borrow)]
    pub m: Val<'a>,
    #[serde(borrow)]
    pub t: Val<'a>,
    #[serde(borrow)]
    pub U: Val<'a>,
    #[serde(borrow)]
    pub u: Val<'a>,
    #[serde(borrow)]
    pub b: Val<'a>,
    #[serde(borrow)]
    pub B: Val<'a>,
    #[serde(borrow)]
    pub A: Val<'a>,
    #[serde(borrow)]
    pub P: Val<'a>,
    #[serde(borrow)]
    pub w: Val<'a>,
    #[serde(borrow)]
    pub x: Val<'a>,
    #[serde(borrow)]
    pub c: Val<'a>,
    #[serde(borrow)]
    pub Q: Val<'a>,
    #[serde(borrow)]
    pub o: Val<'a>,
    #[serde(borrow)]
    pub h: Val<'a>,
    #[serde(borrow)]
    pub v: Val<'a>,
    #[serde(borrow)]
    pub O: Val<'a>,
    #[serde(borrow)]
    pub C: Val<'a>,
    #[serde(borrow)]
    pub F: Val<'a>,
    #[serde(borrow)]
    pub L: Val<'a>,
    #[serde(borrow)]
    pub n: Val<'a>,
    #[serde(borrow, rename = "lastUpdateId")]
    pub last_update_id: Val<'a>,
    #[serde(borrow)]
    pub bids: Val<'a>,
    #[serde(borrow)]
    pub asks: Val<'a>,
    #[serde(borrow)]
    pub stream: Val<'a>,
    #[serde(borrow)]
    pub result: Val<'a>,
    #[serde(borrow)]
    pub id: Val<'a>,
    #[serde(borrow)]
    pub code: Val<'a>,
    #[serde(borrow)]
    pub msg: Val<'a>,
    #[serde(borrow)]
    pub k: Nested<RawKline<'a>>,
    #[serde(borrow)]
    pub data: Data<'a>,
    #[serde(borrow)]
    pub error: Nested<RawError<'a>>,
}

/// The `"k"` object of a kline event.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
#[allow(non_snake_case)]
pub(super) struct RawKline<'a> {
    #[serde(borrow)]
    pub t: Val<'a>,
    #[serde(borrow)]
    pub T: Val<'a>,
    #[serde(borrow)]
    pub s: Val<'a>,
    #[serde(borrow)]
    pub i: Val<'a>,
    #[serde(borrow)]
    pub f: Val<'a>,
    #[serde(borrow)]
    pub L: Val<'a>,
    #[serde(borrow)]
    pub o: Val<'a>,
    #[serde(borrow)]
    pub c: Val<'a>,
    #[serde(borrow)]
    pub h: Val<'a>,
    #[serde(borrow)]
    pub l: Val<'a>,
    #[serde(borrow)]
    pub v: Val<'a>,
    #[serde(borrow)]
    pub n: Val<'a>,
    #[serde(borrow)]
    pub x: Val<'a>,
    #[serde(borrow)]
    pub q: Val<'a>,
    #[serde(borrow)]
    pub V: Val<'a>,
    #[serde(borrow)]
    pub Q: Val<'a>,
}

/// The `"error"` object of an error reply.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct RawError<'a> {
    #[serde(borrow)]
    pub code: Val<'a>,
    #[serde(borrow)]
    pub msg: Val<'a>,
}
