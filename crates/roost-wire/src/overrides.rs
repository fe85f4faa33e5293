//! The overrides topic (`roost.overrides`, compacted): operators' decisions on prefixes, read
//! whole by every scorer and the flowspec controller. Key = the prefix (`203.0.113.0/24`);
//! value = [`OverrideRecord`] as JSON, or a tombstone when the override is removed. Written by
//! `roost admin`.

use ipnetwork::IpNetwork;
use roost_engine::{Class, Override, Timestamp};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OverrideRecord {
    pub v: u32,
    pub class: Class,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<Timestamp>,
    pub by: String,
    #[serde(default)]
    pub comment: String,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("override key {0:?} is not a prefix")]
    Key(String),
    #[error("override for {0}: {1}")]
    Value(String, serde_json::Error),
    #[error("override for {0}: version {1} (this reader knows 1)")]
    Version(String, u32),
}

/// The record for an override of `net` (`None`: removed, a tombstone): key and value.
pub fn encode(net: IpNetwork, ov: Option<&Override>) -> (Vec<u8>, Option<Vec<u8>>) {
    let value = ov.map(|o| {
        serde_json::to_vec(&OverrideRecord {
            v: 1,
            class: o.class,
            until: o.until,
            by: o.by.clone(),
            comment: o.comment.clone(),
        })
        .expect("an override serializes")
    });
    (net.to_string().into_bytes(), value)
}

/// A record read back: the prefix, and the override (`None` for a tombstone).
pub fn decode(key: &[u8], value: Option<&[u8]>) -> Result<(IpNetwork, Option<Override>), Error> {
    let key = String::from_utf8_lossy(key).into_owned();
    let net: IpNetwork = key.parse().map_err(|_| Error::Key(key.clone()))?;
    let Some(v) = value else { return Ok((net, None)) };
    let rec: OverrideRecord = serde_json::from_slice(v).map_err(|e| Error::Value(key.clone(), e))?;
    if rec.v != 1 {
        return Err(Error::Version(key, rec.v));
    }
    Ok((net, Some(Override { class: rec.class, until: rec.until, by: rec.by, comment: rec.comment })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overrides_and_tombstones_read_back_and_bad_records_are_refused() {
        let net: IpNetwork = "203.0.113.0/24".parse().unwrap();
        let ov = Override {
            class: Class::Bad,
            until: Some(Timestamp(1_764_000_000_000)),
            by: "ops".into(),
            comment: "botnet".into(),
        };
        let (k, v) = encode(net, Some(&ov));
        assert_eq!(k, b"203.0.113.0/24");
        assert_eq!(decode(&k, v.as_deref()).unwrap(), (net, Some(ov)));
        let (k, v) = encode(net, None);
        assert_eq!(decode(&k, v.as_deref()).unwrap(), (net, None));
        assert!(matches!(decode(b"not-a-prefix", None), Err(Error::Key(_))));
        assert!(matches!(decode(&k, Some(b"{\"v\":1}")), Err(Error::Value(..))));
        let v2 = br#"{"v":2,"class":"bad","by":"x"}"#;
        assert!(matches!(decode(&k, Some(v2)), Err(Error::Version(_, 2))));
    }
}
