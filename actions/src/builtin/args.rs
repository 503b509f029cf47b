//! Argument types shared by several actions.

use std::borrow::Cow;
use std::time::Duration;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Deserializer};

use crate::language::duration::parse_duration;

/// A duration written as `30s`, `500ms`, `5m`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationArg(pub Duration);

impl<'de> Deserialize<'de> for DurationArg {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse_duration(&text)
            .map(DurationArg)
            .map_err(serde::de::Error::custom)
    }
}

impl JsonSchema for DurationArg {
    fn schema_name() -> Cow<'static, str> {
        "Duration".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({
            "type": "string",
            "format": "duration",
            "pattern": "^([0-9]+(ms|s|m|h|d))+$",
            "description": "A duration with units, such as 500ms, 30s, 5m or 1h30m"
        })
    }
}

/// Text that may also be written as a number or a boolean, for places where
/// only text makes sense (argv items, header and env values), so that
/// `${steps.count.output}` works there whatever its JSON type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Text(pub String);

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Text(s)),
            serde_json::Value::Number(n) => Ok(Text(n.to_string())),
            serde_json::Value::Bool(b) => Ok(Text(b.to_string())),
            other => Err(serde::de::Error::custom(format!(
                "expected text, a number or a boolean, found {}",
                crate::language::template::describe(&other)
            ))),
        }
    }
}

impl JsonSchema for Text {
    fn schema_name() -> Cow<'static, str> {
        "Text".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        json_schema!({ "type": ["string", "number", "boolean"] })
    }
}
