//! Tolerant reading of provider answers: the one helper every optional field of a
//! provider's answer is read with.
//!
//! Many OpenAI-compatible servers (and sometimes the big providers) write an optional
//! field as `null` rather than leave it out. `#[serde(default)]` covers a missing
//! field only: a `null` for a `String`, `Vec`, number or struct fails the whole
//! answer, which the provider had already answered and billed. Fields read with
//! `#[serde(default, deserialize_with = "null_as_default")]` take their default for
//! both. (`Option<T>` fields need nothing: serde reads `null` as `None`.)

use serde::{Deserialize, Deserializer};

/// Reads `null` as `T::default()`; with `#[serde(default)]`, a missing field too.
pub fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Option::<T>::deserialize(deserializer).map(Option::unwrap_or_default)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Deserialize, Debug, PartialEq)]
    struct Sample {
        #[serde(default, deserialize_with = "null_as_default")]
        text: String,
        #[serde(default, deserialize_with = "null_as_default")]
        items: Vec<u32>,
        #[serde(default, deserialize_with = "null_as_default")]
        count: u64,
    }

    #[test]
    fn null_missing_and_present_fields() {
        let null: Sample =
            serde_json::from_str(r#"{"text":null,"items":null,"count":null}"#).unwrap();
        let missing: Sample = serde_json::from_str("{}").unwrap();
        assert_eq!(null, missing);
        assert_eq!(null.count, 0);
        let present: Sample =
            serde_json::from_str(r#"{"text":"a","items":[1],"count":2}"#).unwrap();
        assert_eq!(
            present,
            Sample {
                text: "a".into(),
                items: vec![1],
                count: 2
            }
        );
    }
}
