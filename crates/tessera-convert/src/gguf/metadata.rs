//! GGUF metadata values and typed look-ups that report the key on failure.

use std::collections::BTreeMap;

use crate::error::ConvertError;

/// One GGUF metadata value; the variants mirror GGUF's value types.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue {
    /// `UINT8`.
    U8(u8),
    /// `INT8`.
    I8(i8),
    /// `UINT16`.
    U16(u16),
    /// `INT16`.
    I16(i16),
    /// `UINT32`.
    U32(u32),
    /// `INT32`.
    I32(i32),
    /// `FLOAT32`.
    F32(f32),
    /// `BOOL`.
    Bool(bool),
    /// `STRING` (UTF-8).
    String(String),
    /// `ARRAY` of values of one type.
    Array(Vec<MetadataValue>),
    /// `UINT64`.
    U64(u64),
    /// `INT64`.
    I64(i64),
    /// `FLOAT64`.
    F64(f64),
}

impl MetadataValue {
    /// The GGUF name of the value's type, for error messages.
    pub fn type_name(&self) -> String {
        match self {
            MetadataValue::U8(_) => "UINT8".into(),
            MetadataValue::I8(_) => "INT8".into(),
            MetadataValue::U16(_) => "UINT16".into(),
            MetadataValue::I16(_) => "INT16".into(),
            MetadataValue::U32(_) => "UINT32".into(),
            MetadataValue::I32(_) => "INT32".into(),
            MetadataValue::F32(_) => "FLOAT32".into(),
            MetadataValue::Bool(_) => "BOOL".into(),
            MetadataValue::String(_) => "STRING".into(),
            MetadataValue::Array(items) => match items.first() {
                Some(first) => format!("ARRAY of {}", first.type_name()),
                None => "empty ARRAY".into(),
            },
            MetadataValue::U64(_) => "UINT64".into(),
            MetadataValue::I64(_) => "INT64".into(),
            MetadataValue::F64(_) => "FLOAT64".into(),
        }
    }

    /// The value as an unsigned integer, if it is a non-negative integer of any width.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            MetadataValue::U8(v) => Some(v.into()),
            MetadataValue::U16(v) => Some(v.into()),
            MetadataValue::U32(v) => Some(v.into()),
            MetadataValue::U64(v) => Some(v),
            MetadataValue::I8(v) => u64::try_from(v).ok(),
            MetadataValue::I16(v) => u64::try_from(v).ok(),
            MetadataValue::I32(v) => u64::try_from(v).ok(),
            MetadataValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer that fits `i64`.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            MetadataValue::I8(v) => Some(v.into()),
            MetadataValue::I16(v) => Some(v.into()),
            MetadataValue::I32(v) => Some(v.into()),
            MetadataValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, if it is `FLOAT32` or `FLOAT64`.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            // Through the shortest decimal form, so that 1e-5f32 becomes 1e-5, not 9.99999974e-6.
            MetadataValue::F32(v) => v.to_string().parse().ok(),
            MetadataValue::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string slice, if it is a `STRING`.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            MetadataValue::String(s) => Some(s),
            _ => None,
        }
    }
}

/// All key/value pairs of a GGUF file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Metadata {
    values: BTreeMap<String, MetadataValue>,
}

impl Metadata {
    /// Wraps a parsed key/value map.
    pub fn new(values: BTreeMap<String, MetadataValue>) -> Self {
        Metadata { values }
    }

    /// The value under `key`, if present.
    pub fn get(&self, key: &str) -> Option<&MetadataValue> {
        self.values.get(key)
    }

    /// Iterates over all keys and values in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &MetadataValue)> {
        self.values.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// A required non-negative integer.
    pub fn u64(&self, key: &str) -> Result<u64, ConvertError> {
        self.optional(key, "an unsigned integer", MetadataValue::as_u64)?
            .ok_or_else(|| missing(key))
    }

    /// An optional non-negative integer.
    pub fn opt_u64(&self, key: &str) -> Result<Option<u64>, ConvertError> {
        self.optional(key, "an unsigned integer", MetadataValue::as_u64)
    }

    /// A required non-negative integer that must fit `usize`.
    pub fn usize(&self, key: &str) -> Result<usize, ConvertError> {
        let v = self.u64(key)?;
        usize::try_from(v).map_err(|_| ConvertError::MetadataValue {
            key: key.to_owned(),
            reason: format!("{v} does not fit in memory sizes"),
        })
    }

    /// An optional non-negative integer that must fit `usize`.
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>, ConvertError> {
        match self.opt_u64(key)? {
            None => Ok(None),
            Some(_) => self.usize(key).map(Some),
        }
    }

    /// An optional float.
    pub fn opt_f64(&self, key: &str) -> Result<Option<f64>, ConvertError> {
        self.optional(key, "a float", MetadataValue::as_f64)
    }

    /// A required float.
    pub fn f64(&self, key: &str) -> Result<f64, ConvertError> {
        self.optional(key, "a float", MetadataValue::as_f64)?
            .ok_or_else(|| missing(key))
    }

    /// A required string.
    pub fn str(&self, key: &str) -> Result<&str, ConvertError> {
        self.opt_str(key)?.ok_or_else(|| missing(key))
    }

    /// An optional string.
    pub fn opt_str(&self, key: &str) -> Result<Option<&str>, ConvertError> {
        self.optional(key, "a string", MetadataValue::as_str)
    }

    /// An optional boolean.
    pub fn opt_bool(&self, key: &str) -> Result<Option<bool>, ConvertError> {
        self.optional(key, "a bool", |v| match v {
            MetadataValue::Bool(b) => Some(*b),
            _ => None,
        })
    }

    /// A required array of strings.
    pub fn strings(&self, key: &str) -> Result<Vec<&str>, ConvertError> {
        self.opt_strings(key)?.ok_or_else(|| missing(key))
    }

    /// An optional array of strings.
    pub fn opt_strings(&self, key: &str) -> Result<Option<Vec<&str>>, ConvertError> {
        self.optional(key, "an array of strings", |v| match v {
            MetadataValue::Array(items) => items.iter().map(MetadataValue::as_str).collect(),
            _ => None,
        })
    }

    /// An optional array of integers.
    pub fn opt_i64s(&self, key: &str) -> Result<Option<Vec<i64>>, ConvertError> {
        self.optional(key, "an array of integers", |v| match v {
            MetadataValue::Array(items) => items.iter().map(MetadataValue::as_i64).collect(),
            _ => None,
        })
    }

    fn optional<'a, T>(
        &'a self,
        key: &str,
        expected: &'static str,
        convert: impl FnOnce(&'a MetadataValue) -> Option<T>,
    ) -> Result<Option<T>, ConvertError> {
        let Some(value) = self.values.get(key) else {
            return Ok(None);
        };
        convert(value)
            .map(Some)
            .ok_or_else(|| ConvertError::MetadataType {
                key: key.to_owned(),
                expected,
                found: value.type_name(),
            })
    }
}

fn missing(key: &str) -> ConvertError {
    ConvertError::MissingMetadata {
        key: key.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(pairs: &[(&str, MetadataValue)]) -> Metadata {
        Metadata::new(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        )
    }

    #[test]
    fn integer_lookups_accept_any_width_and_reject_negative_or_wrong_type() {
        let m = meta(&[
            ("a", MetadataValue::U32(7)),
            ("b", MetadataValue::I8(-1)),
            ("c", MetadataValue::String("x".into())),
        ]);
        assert_eq!(m.u64("a").unwrap(), 7);
        assert!(matches!(m.u64("b"), Err(ConvertError::MetadataType { .. })));
        assert!(matches!(m.u64("c"), Err(ConvertError::MetadataType { .. })));
        assert!(matches!(
            m.u64("zzz"),
            Err(ConvertError::MissingMetadata { .. })
        ));
        assert_eq!(m.opt_u64("zzz").unwrap(), None);
    }

    #[test]
    fn f32_values_read_back_as_their_shortest_decimal() {
        let m = meta(&[
            ("eps", MetadataValue::F32(1e-5)),
            ("theta", MetadataValue::F32(100000.0)),
        ]);
        assert_eq!(m.f64("eps").unwrap(), 1e-5);
        assert_eq!(m.f64("theta").unwrap(), 100000.0);
    }

    #[test]
    fn string_arrays_reject_mixed_element_types() {
        let good = MetadataValue::Array(vec![MetadataValue::String("a".into())]);
        let bad = MetadataValue::Array(vec![MetadataValue::U8(1)]);
        let m = meta(&[("good", good), ("bad", bad)]);
        assert_eq!(m.strings("good").unwrap(), ["a"]);
        let err = m.strings("bad").unwrap_err().to_string();
        assert!(err.contains("ARRAY of UINT8"), "{err}");
    }
}
