//! Serde forms of the types of other modules that the state files hold: lists and
//! origins by name, networks as CIDR text. Kept here rather than as derives on those
//! types so that the on-disk spelling is decided in one place.

use std::str::FromStr;

use ipnet::IpNet;
use serde::de::Error as _;
use serde::ser::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::filter::{EntryOrigin, ListKind};

const LISTS: [ListKind; 3] = [ListKind::Bypass, ListKind::Deny, ListKind::Allow];

pub(super) mod list_kind {
    use super::*;

    pub(in crate::state) fn serialize<S: Serializer>(
        kind: &ListKind,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_str(kind.name())
    }

    pub(in crate::state) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<ListKind, D::Error> {
        let name = String::deserialize(d)?;
        LISTS
            .into_iter()
            .find(|kind| kind.name() == name)
            .ok_or_else(|| D::Error::custom(format!("unknown list {name:?}")))
    }
}

/// Only operator and automatic entries are stored: configuration entries come from the
/// configuration file at every start.
pub(super) mod origin {
    use super::*;

    pub(in crate::state) fn serialize<S: Serializer>(
        origin: &EntryOrigin,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match origin {
            EntryOrigin::Operator => s.serialize_str("operator"),
            EntryOrigin::Auto => s.serialize_str("auto"),
            EntryOrigin::Config => Err(S::Error::custom(
                "entries from the configuration file are not stored",
            )),
        }
    }

    pub(in crate::state) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<EntryOrigin, D::Error> {
        match String::deserialize(d)?.as_str() {
            "operator" => Ok(EntryOrigin::Operator),
            "auto" => Ok(EntryOrigin::Auto),
            other => Err(D::Error::custom(format!(
                "unknown entry origin {other:?} (expected \"operator\" or \"auto\")"
            ))),
        }
    }
}

pub(super) mod net {
    use super::*;

    pub(in crate::state) fn serialize<S: Serializer>(net: &IpNet, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(net)
    }

    pub(in crate::state) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<IpNet, D::Error> {
        let text = String::deserialize(d)?;
        IpNet::from_str(&text).map_err(|e| D::Error::custom(format!("network {text:?}: {e}")))
    }
}

/// `(list, network)` keys as `{"list": "deny", "net": "192.0.2.0/24"}` objects.
pub(super) mod keys {
    use super::*;

    #[derive(Serialize)]
    struct KeyOut {
        #[serde(with = "list_kind")]
        list: ListKind,
        #[serde(with = "net")]
        net: IpNet,
    }

    #[derive(Deserialize)]
    #[serde(deny_unknown_fields)]
    struct KeyIn {
        #[serde(with = "list_kind")]
        list: ListKind,
        #[serde(with = "net")]
        net: IpNet,
    }

    pub(in crate::state) fn serialize<S: Serializer>(
        keys: &[(ListKind, IpNet)],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(keys.iter().map(|&(list, net)| KeyOut { list, net }))
    }

    pub(in crate::state) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Vec<(ListKind, IpNet)>, D::Error> {
        let keys = Vec::<KeyIn>::deserialize(d)?;
        Ok(keys.into_iter().map(|k| (k.list, k.net)).collect())
    }
}
