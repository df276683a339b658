//! OLPC canonical JSON: what TUF signatures cover.
//!
//! Objects with their keys sorted by bytes, no insignificant white space, integers only,
//! strings escaping only `"` and `\`. The formatter is `olpc-cjson`, the one `tough` signs
//! and verifies with, so both sides agree byte for byte.

use serde::Serialize;

use crate::error::{Error, Result};

/// The canonical form of `value`. Floats have none (TUF metadata has no floats): an error.
pub fn to_vec(value: &impl Serialize) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut serializer =
        serde_json::Serializer::with_formatter(&mut out, olpc_cjson::CanonicalFormatter::new());
    value
        .serialize(&mut serializer)
        .map_err(|e| Error::NotCanonical {
            reason: e.to_string(),
        })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_sorted_and_space_is_gone() {
        let value = serde_json::json!({"b": 1, "a": {"d": [1, 2], "c": "x\"y"}});
        assert_eq!(
            String::from_utf8(to_vec(&value).unwrap()).unwrap(),
            r#"{"a":{"c":"x\"y","d":[1,2]},"b":1}"#
        );
    }

    #[test]
    fn floats_have_no_canonical_form() {
        let error = to_vec(&serde_json::json!({"a": 1.5})).unwrap_err();
        assert!(matches!(error, Error::NotCanonical { .. }), "{error}");
    }
}
