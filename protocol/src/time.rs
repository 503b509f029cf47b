//! Timestamps on the wire: RFC 3339 in UTC with milliseconds, as the
//! AUTORO document shows them (`2019-07-09T10:02:57.000Z`). Any RFC 3339
//! timestamp is accepted when reading.

use jiff::Timestamp;
use serde::{Deserialize, Deserializer, Serializer};

/// Formats a timestamp the way every Tasuki API writes one.
pub fn format(ts: Timestamp) -> String {
    format!("{ts:.3}")
}

/// For `#[serde(with = "tasuki_protocol::time::millis")]` on a `Timestamp`.
pub mod millis {
    use super::*;

    pub fn serialize<S: Serializer>(ts: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format(*ts))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// For `#[serde(with = "tasuki_protocol::time::millis_opt")]` on an
/// `Option<Timestamp>`; `None` is `null`.
pub mod millis_opt {
    use super::*;

    pub fn serialize<S: Serializer>(ts: &Option<Timestamp>, s: S) -> Result<S::Ok, S::Error> {
        match ts {
            Some(ts) => s.serialize_str(&format(*ts)),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Timestamp>, D::Error> {
        match Option::<String>::deserialize(d)? {
            Some(text) => text.parse().map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// For `#[serde(with = "tasuki_protocol::time::millis_vec")]` on a
/// `Vec<Timestamp>`.
pub mod millis_vec {
    use super::*;
    use serde::ser::SerializeSeq;

    pub fn serialize<S: Serializer>(times: &[Timestamp], s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(times.len()))?;
        for ts in times {
            seq.serialize_element(&format(*ts))?;
        }
        seq.end()
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Timestamp>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|text| text.parse().map_err(serde::de::Error::custom))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_milliseconds_and_z() {
        let ts: Timestamp = "2019-07-09T10:02:57Z".parse().unwrap();
        assert_eq!(format(ts), "2019-07-09T10:02:57.000Z");
        let ts: Timestamp = "2019-07-09T10:02:57.123456Z".parse().unwrap();
        assert_eq!(format(ts), "2019-07-09T10:02:57.123Z");
    }
}
