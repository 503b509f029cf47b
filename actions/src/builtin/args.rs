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
        parse_duration(&text).map(DurationArg).map_err(serde::de::Error::custom)
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
