//! Whether a container asks for Slim: its `io.slim/enable` annotation, else the host's default.

use crate::config::HostDefault;
use serde_json::Value;

pub const ANNOTATION: &str = "io.slim/enable";

#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Slim,
    NoSlim,
    /// The annotation has a value other than `true` or `false`.
    Malformed(String),
}

/// Reads the annotation from a spec (its `annotations` object).
pub fn of(spec: &Value, default: HostDefault) -> Request {
    match spec.get("annotations").and_then(|a| a.get(ANNOTATION)) {
        None => match default {
            HostDefault::On => Request::Slim,
            HostDefault::Off => Request::NoSlim,
        },
        Some(Value::String(s)) if s == "true" => Request::Slim,
        Some(Value::String(s)) if s == "false" => Request::NoSlim,
        Some(Value::String(s)) => Request::Malformed(s.clone()),
        Some(other) => Request::Malformed(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn annotation_overrides_default() {
        let on = json!({"annotations": {"io.slim/enable": "true"}});
        let off = json!({"annotations": {"io.slim/enable": "false"}});
        let none = json!({"annotations": {"other": "x"}});
        let no_annotations = json!({});
        assert_eq!(of(&on, HostDefault::Off), Request::Slim);
        assert_eq!(of(&off, HostDefault::On), Request::NoSlim);
        assert_eq!(of(&none, HostDefault::Off), Request::NoSlim);
        assert_eq!(of(&none, HostDefault::On), Request::Slim);
        assert_eq!(of(&no_annotations, HostDefault::On), Request::Slim);
        assert_eq!(
            of(
                &json!({"annotations": {"io.slim/enable": "yes"}}),
                HostDefault::On
            ),
            Request::Malformed("yes".into())
        );
        assert_eq!(
            of(
                &json!({"annotations": {"io.slim/enable": "TRUE"}}),
                HostDefault::Off
            ),
            Request::Malformed("TRUE".into())
        );
    }
}
