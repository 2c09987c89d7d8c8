//! The fast reader of a feed reply: one pass over the body with serde_json's deserializer, each
//! address parsed (`addr::parse_text`) where it lies in the body, IPv4 and IPv6 apart, the ID
//! classified; no `serde_json::Value`, no `String` per address. An escaped string arrives as a
//! transient `&str` (`visit_str`) and is parsed at once, so escapes cost nothing more.
//!
//! It accepts only the usual shape: a JSON object whose `ipaddress` is a list or a string and
//! whose `ID` is there, each once. Anything else (not JSON, not an object, a field missing, null
//! or of another type, a field twice) is `None`: `parse_reply_general` then reads the body and
//! decides as it always has. Every value is read in full, so what is not JSON here is not JSON
//! there either (numbers out of range, bad escapes, bad UTF-8, nesting too deep).

use super::Batch;
use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::fmt;

/// The `ID` field as `parse_reply_general` classifies it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Id {
    /// The text `none`, in any case: the end marker.
    NoneText,
    Number(u64),
    /// Anything else: "ID is not a number".
    NotNumber,
}

pub(super) struct Fast {
    /// Addresses and tokens skipped (counted whatever the ID; the caller clears it for `none`).
    pub batch: Batch,
    pub id: Id,
}

/// Reads a reply of the usual shape; `None` for anything else.
pub(super) fn read(body: &[u8]) -> Option<Fast> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let fast = de.deserialize_map(ReplyVisitor).ok()?;
    // As serde_json::from_slice: only white space may follow.
    de.end().ok()?;
    Some(fast)
}

/// Any error: the body takes the general path, which says what is wrong.
fn other<E: serde::de::Error>() -> E {
    E::custom("not the usual shape")
}

/// A seed that reads whichever JSON value comes, through its own visitor.
macro_rules! seed_any {
    ($($t:ty),*) => {$(
        impl<'de> DeserializeSeed<'de> for $t {
            type Value = <Self as Visitor<'de>>::Value;
            fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
                d.deserialize_any(self)
            }
        }
    )*};
}
seed_any!(ListSeed<'_>, ItemSeed<'_>, IdSeed, Drain);

struct ReplyVisitor;

impl<'de> Visitor<'de> for ReplyVisitor {
    type Value = Fast;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an APIBAN reply object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fast, A::Error> {
        let mut batch = Batch::default();
        let (mut have_list, mut id) = (false, None);
        while let Some(field) = map.next_key_seed(FieldSeed)? {
            match field {
                Field::Ipaddress if !have_list => {
                    map.next_value_seed(ListSeed(&mut batch))?;
                    have_list = true;
                }
                Field::Id if id.is_none() => id = Some(map.next_value_seed(IdSeed)?),
                // The same field twice: serde_json's map keeps the last one; the general path.
                Field::Ipaddress | Field::Id => return Err(other()),
                Field::Other => map.next_value_seed(Drain)?,
            }
        }
        match (have_list, id) {
            (true, Some(id)) => Ok(Fast { batch, id }),
            _ => Err(other()),
        }
    }
}

enum Field {
    Ipaddress,
    Id,
    Other,
}

struct FieldSeed;

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Field;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Field, D::Error> {
        d.deserialize_str(FieldSeed)
    }
}

impl Visitor<'_> for FieldSeed {
    type Value = Field;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a field name")
    }
    // Borrowed or unescaped into a scratch buffer: both arrive here.
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Field, E> {
        Ok(match v {
            "ipaddress" => Field::Ipaddress,
            "ID" => Field::Id,
            _ => Field::Other,
        })
    }
}

/// `ipaddress`: a list of tokens, or one string.
struct ListSeed<'b>(&'b mut Batch);

impl<'de> Visitor<'de> for ListSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list or a string")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        token(self.0, v);
        Ok(())
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        while seq.next_element_seed(ItemSeed(&mut *self.0))?.is_some() {}
        Ok(())
    }
    // null, a number, a boolean, an object: the general path says which error it is.
}

/// One token of the text a reply lists: an address, or one more skipped.
fn token(b: &mut Batch, text: &str) {
    match crate::addr::parse_text(text.as_bytes()) {
        Some(k) => b.push(k),
        None => b.skipped += 1,
    }
}

/// An item of the list: a string is a token, anything else is skipped (read in full).
struct ItemSeed<'b>(&'b mut Batch);

/// Implements the visits of a value that is only counted or dropped: every type but strings and
/// non-negative integers (each visitor has its own), containers read to their end through
/// `Drain`; `$on` runs for each.
macro_rules! accept_any {
    ($on:expr) => {
        fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<Self::Value, E> {
            Ok(($on)(self))
        }
        fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<Self::Value, E> {
            Ok(($on)(self))
        }
        fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<Self::Value, E> {
            Ok(($on)(self))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(($on)(self))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            while seq.next_element_seed(Drain)?.is_some() {}
            Ok(($on)(self))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            while map.next_key_seed(Drain)?.is_some() {
                map.next_value_seed(Drain)?;
            }
            Ok(($on)(self))
        }
    };
}

impl<'de> Visitor<'de> for ItemSeed<'_> {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a list item")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<(), E> {
        token(self.0, v);
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        self.0.skipped += 1;
        Ok(())
    }
    accept_any!(|s: Self| s.0.skipped += 1);
}

/// `ID`: a string (`none`, or digits with blanks around), a number, or anything else.
struct IdSeed;

impl<'de> Visitor<'de> for IdSeed {
    type Value = Id;
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an ID")
    }
    fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Id, E> {
        Ok(if v.eq_ignore_ascii_case("none") {
            Id::NoneText
        } else {
            v.trim().parse::<u64>().map_or(Id::NotNumber, Id::Number)
        })
    }
    accept_any!(|_| Id::NotNumber);
    // A non-negative integer is the one number that is an ID.
    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Id, E> {
        Ok(Id::Number(v))
    }
}

/// A value read in full and dropped: what serde_json's `Value` would have checked is checked.
struct Drain;

impl<'de> Visitor<'de> for Drain {
    type Value = ();
    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any value")
    }
    fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<(), E> {
        Ok(())
    }
    fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<(), E> {
        Ok(())
    }
    accept_any!(|_| ());
}
