//! Config decoding: JSON text from the host to the filter's typed config.

use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::filter::InitError;

/// The config of a filter that takes no settings: accepts only an empty table.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

/// Decodes `json` into `T`. The error names the offending key with its path
/// (`routes[1].split[0]: unknown field `wieght`, expected `cluster` or `weight``).
///
/// An empty object also decodes into `()`, so unit configs work.
pub(crate) fn decode<T: DeserializeOwned>(json: &str) -> Result<T, InitError> {
    let value: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| InitError::new(format!("config is not valid JSON: {e}")))?;
    from_value(value)
}

/// Decodes an already parsed JSON value; see [`decode`].
pub(crate) fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, InitError> {
    let empty = value.as_object().is_some_and(|o| o.is_empty());
    match serde_path_to_error::deserialize::<_, T>(&value) {
        Ok(config) => Ok(config),
        Err(e) => {
            if empty && let Ok(config) = T::deserialize(serde_json::Value::Null) {
                return Ok(config);
            }
            let mut segments: Vec<_> = e.path().iter().collect();
            // For an unknown key the path ends with that key, which the message names already:
            // report where it is, not the key twice (`routes[0]: unknown field `x``).
            let message = e.inner().to_string();
            if let Some(serde_path_to_error::Segment::Map { key }) = segments.last()
                && message.starts_with(&format!("unknown field `{key}`"))
            {
                segments.pop();
            }
            let path = render_path(&segments);
            if path.is_empty() || path == "." {
                Err(InitError::new(message))
            } else {
                Err(InitError::key(&path, message))
            }
        }
    }
}

/// `routes[1].split`: map keys joined by dots, sequence indices in brackets.
fn render_path(segments: &[&serde_path_to_error::Segment]) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in segments {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(key);
            }
            Segment::Enum { variant } => {
                if !out.is_empty() {
                    out.push('.');
                }
                out.push_str(variant);
            }
            Segment::Unknown => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Split {
        cluster: String,
        weight: u32,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Route {
        split: Vec<Split>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Config {
        #[serde(default)]
        attempts: u32,
        #[serde(default)]
        routes: Vec<Route>,
    }

    #[test]
    fn unknown_top_level_key_is_named() {
        let e = decode::<Config>(r#"{"atempts": 3}"#).unwrap_err();
        assert!(e.message().starts_with("unknown field `atempts`"), "{e}");
        assert!(!e.message().contains("line"), "{e}");
    }

    #[test]
    fn nested_errors_carry_their_path() {
        let e = decode::<Config>(r#"{"routes": [{"split": [{"cluster": "a", "wieght": 1}]}]}"#)
            .unwrap_err();
        assert!(
            e.message()
                .starts_with("routes[0].split[0]: unknown field `wieght`"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_is_named() {
        let e = decode::<Config>(r#"{"attempts": "three"}"#).unwrap_err();
        assert!(e.message().starts_with("attempts: invalid type"), "{e}");
    }

    #[test]
    fn empty_object_fits_unit_and_no_config() {
        decode::<()>("{}").unwrap();
        decode::<NoConfig>("{}").unwrap();
        assert!(decode::<NoConfig>(r#"{"x": 1}"#).is_err());
    }
}
