//! The hand-written JSON forms: [`Time`] as RFC 3339, [`Quantity`] as a
//! string (a bare number is accepted on input, as Kubernetes does) and
//! [`IntOrString`] as a bare number or a string, [`FieldsV1`] as the JSON
//! object it holds. Also the helper the
//! generated code uses to omit empty scalars.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

pub use crate::v1::{FieldsV1, IntOrString, Quantity, Time};

/// Used by the generated `skip_serializing_if` attributes: empty strings,
/// zero numbers and `false` are left out of the JSON form.
pub fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

impl Time {
    pub fn now() -> Time {
        Time::from_datetime(OffsetDateTime::now_utc())
    }

    /// Now, to the second: the precision of Kubernetes' object timestamps.
    pub fn now_seconds() -> Time {
        Time {
            seconds: OffsetDateTime::now_utc().unix_timestamp(),
            nanos: 0,
        }
    }

    pub fn from_datetime(t: OffsetDateTime) -> Time {
        Time {
            seconds: t.unix_timestamp(),
            nanos: t.nanosecond() as i32,
        }
    }

    pub fn to_datetime(&self) -> Option<OffsetDateTime> {
        let nanos = i128::from(self.seconds) * 1_000_000_000 + i128::from(self.nanos);
        OffsetDateTime::from_unix_timestamp_nanos(nanos).ok()
    }

    /// RFC 3339 in UTC, with a fraction only when there is one.
    pub fn to_rfc3339(&self) -> String {
        self.to_datetime()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default()
    }

    pub fn parse_rfc3339(text: &str) -> Result<Time, String> {
        OffsetDateTime::parse(text, &Rfc3339)
            .map(Time::from_datetime)
            .map_err(|e| format!("invalid RFC 3339 timestamp {text:?}: {e}"))
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Time::parse_rfc3339(&text).map_err(de::Error::custom)
    }
}

impl Quantity {
    pub fn new(value: impl Into<String>) -> Quantity {
        Quantity {
            value: value.into(),
        }
    }
}

impl fmt::Display for Quantity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.value)
    }
}

impl Serialize for FieldsV1 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let v: serde_json::Value = if self.raw.is_empty() {
            serde_json::Value::Object(Default::default())
        } else {
            serde_json::from_str(&self.raw).map_err(serde::ser::Error::custom)?
        };
        v.serialize(s)
    }
}

impl<'de> Deserialize<'de> for FieldsV1 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = serde_json::Value::deserialize(d)?;
        if !v.is_object() {
            return Err(de::Error::custom("fieldsV1 must be a JSON object"));
        }
        Ok(FieldsV1 { raw: v.to_string() })
    }
}

impl Serialize for Quantity {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.value)
    }
}

/// Accepts a string, an integer or a float: YAML's `cpu: 1` is a number.
struct ScalarText;

impl Visitor<'_> for ScalarText {
    type Value = String;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string or a number")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<String, E> {
        Ok(v.to_string())
    }
}

impl<'de> Deserialize<'de> for Quantity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = d.deserialize_any(ScalarText)?;
        crate::quantity::Quantity::parse(&text).map_err(de::Error::custom)?;
        Ok(Quantity { value: text })
    }
}

impl IntOrString {
    pub fn int(v: i32) -> IntOrString {
        IntOrString {
            int_val: v,
            str_val: String::new(),
            is_string: false,
        }
    }

    pub fn string(v: impl Into<String>) -> IntOrString {
        IntOrString {
            int_val: 0,
            str_val: v.into(),
            is_string: true,
        }
    }

    /// A percentage such as `25%` scaled against `total`, rounding up or
    /// down; a bare number is returned as is.
    pub fn scaled_value(&self, total: i32, round_up: bool) -> Result<i32, String> {
        if !self.is_string {
            return Ok(self.int_val);
        }
        let Some(pct) = self.str_val.strip_suffix('%') else {
            return Err(format!(
                "invalid value {:?}: must be an integer or a percentage",
                self.str_val
            ));
        };
        let pct: i64 = pct
            .parse()
            .map_err(|_| format!("invalid percentage {:?}", self.str_val))?;
        let scaled = i64::from(total) * pct;
        let v = if round_up {
            (scaled + 99) / 100
        } else {
            scaled / 100
        };
        i32::try_from(v).map_err(|_| format!("percentage {:?} out of range", self.str_val))
    }
}

impl fmt::Display for IntOrString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_string {
            f.write_str(&self.str_val)
        } else {
            write!(f, "{}", self.int_val)
        }
    }
}

impl Serialize for IntOrString {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if self.is_string {
            s.serialize_str(&self.str_val)
        } else {
            s.serialize_i32(self.int_val)
        }
    }
}

struct IntOrStringVisitor;

impl Visitor<'_> for IntOrStringVisitor {
    type Value = IntOrString;
    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an integer or a string")
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<IntOrString, E> {
        Ok(IntOrString::string(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<IntOrString, E> {
        i32::try_from(v)
            .map(IntOrString::int)
            .map_err(|_| E::custom(format!("integer {v} out of range")))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<IntOrString, E> {
        i32::try_from(v)
            .map(IntOrString::int)
            .map_err(|_| E::custom(format!("integer {v} out of range")))
    }
}

impl<'de> Deserialize<'de> for IntOrString {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(IntOrStringVisitor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_is_rfc3339() {
        let t = Time {
            seconds: 1_700_000_000,
            nanos: 0,
        };
        assert_eq!(
            serde_json::to_string(&t).unwrap(),
            "\"2023-11-14T22:13:20Z\""
        );
        let back: Time = serde_json::from_str("\"2023-11-14T23:13:20+01:00\"").unwrap();
        assert_eq!(back, t);
        let micro: Time = serde_json::from_str("\"2023-11-14T22:13:20.123456Z\"").unwrap();
        assert_eq!(micro.nanos, 123_456_000);
        assert_eq!(micro.to_rfc3339(), "2023-11-14T22:13:20.123456Z");
        assert!(serde_json::from_str::<Time>("\"yesterday\"").is_err());
    }

    #[test]
    fn int_or_string_both_ways() {
        let n: IntOrString = serde_json::from_str("8080").unwrap();
        assert_eq!(n, IntOrString::int(8080));
        let s: IntOrString = serde_json::from_str("\"http\"").unwrap();
        assert_eq!(s, IntOrString::string("http"));
        assert_eq!(serde_json::to_string(&n).unwrap(), "8080");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"http\"");
        assert_eq!(IntOrString::string("25%").scaled_value(10, true), Ok(3));
        assert_eq!(IntOrString::string("25%").scaled_value(10, false), Ok(2));
        assert!(serde_json::from_str::<IntOrString>("99999999999").is_err());
    }

    #[test]
    fn quantity_accepts_numbers() {
        let q: Quantity = serde_yaml_ng::from_str("1").unwrap();
        assert_eq!(q.value, "1");
        let q: Quantity = serde_yaml_ng::from_str("100m").unwrap();
        assert_eq!(serde_json::to_string(&q).unwrap(), "\"100m\"");
        assert!(serde_yaml_ng::from_str::<Quantity>("lots").is_err());
    }
}
