//! MaxMind DB files (GeoIP2/GeoLite2 Country or City, DB-IP), read with the
//! `maxminddb` crate.
//!
//! An IPv6 database keeps IPv4 in its tree at `::/96`, and points aliases
//! (`::ffff:0:0/96`, `2002::/16`) at that subtree: the crate's iteration
//! yields the IPv4 networks once, as IPv4, and skips the aliases. A database
//! that stores IPv4-mapped networks as separate data instead is read too:
//! those are turned back into IPv4 prefixes, and dropped where the `::/96`
//! subtree already gives the same prefix, so nothing is counted twice.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::{IpNet, Ipv4Net};
use maxminddb::{Reader, WithinOptions};
use serde::Deserialize;

use super::{DatabaseFormat, DownloadCode, Entry, GeoError, Read};

/// The part of a record that names a country. GeoIP2/GeoLite2 and DB-IP
/// records have `country.iso_code`; some networks (an anycast or satellite
/// provider, a network MaxMind only places on a continent) have just
/// `registered_country`, the country the network is registered in, which is
/// used then, as MaxMind's own guidance for a missing country suggests.
/// Some third-party country files (ip-location-db) have a flat
/// `country_code` instead.
#[derive(Deserialize)]
struct CountryRecord<'a> {
    #[serde(borrow)]
    country: Option<Place<'a>>,
    #[serde(borrow)]
    registered_country: Option<Place<'a>>,
    country_code: Option<&'a str>,
}

#[derive(Deserialize)]
struct Place<'a> {
    iso_code: Option<&'a str>,
}

impl<'a> CountryRecord<'a> {
    fn code(&self) -> Option<&'a str> {
        let iso = |p: &Option<Place<'a>>| p.as_ref().and_then(|p| p.iso_code);
        iso(&self.country)
            .or_else(|| iso(&self.registered_country))
            .or(self.country_code)
    }

    fn has_country_field(&self) -> bool {
        self.country.is_some() || self.registered_country.is_some() || self.country_code.is_some()
    }
}

/// What a data record says, decoded once per record: many networks share
/// one (a country database has a few hundred distinct records).
#[derive(Clone)]
struct Decoded {
    /// `None` for no code at all.
    code: Option<String>,
    has_country_field: bool,
}

pub(super) fn load(path: &Path, bytes: Vec<u8>) -> Result<Read, GeoError> {
    let corrupt = |source| GeoError::Mmdb {
        path: path.to_path_buf(),
        source,
    };
    let reader = Reader::from_source(bytes).map_err(corrupt)?;
    // Walks the whole tree and data section once: a damaged file is refused
    // here rather than half read (and the crate's lookups never meet it).
    reader.verify().map_err(corrupt)?;

    let mut entries = Vec::new();
    // IPv4 networks stored as IPv4-mapped IPv6 data: kept unless the IPv4
    // subtree has the same prefix.
    let mut mapped = Vec::new();
    let mut unknown_networks = 0;
    let mut any_country_field = false;
    let mut records: HashMap<usize, Decoded> = HashMap::new();
    for item in reader.networks(WithinOptions::default()).map_err(corrupt)? {
        let item = item.map_err(corrupt)?;
        let Some(offset) = item.offset() else {
            continue;
        };
        let record = match records.get(&offset) {
            Some(record) => record.clone(),
            None => {
                let Some(decoded) = item.decode::<CountryRecord<'_>>().map_err(corrupt)? else {
                    continue;
                };
                let record = Decoded {
                    code: decoded.code().map(str::to_string),
                    has_country_field: decoded.has_country_field(),
                };
                records.insert(offset, record.clone());
                record
            }
        };
        any_country_field |= record.has_country_field;
        let network = item.network().map_err(corrupt)?;
        let net = IpNet::new(network.network(), network.prefix()).map_err(|_| {
            corrupt(maxminddb::MaxMindDbError::invalid_database(format!(
                "network {network} has an invalid prefix length"
            )))
        })?;
        let (net, is_mapped) = normalise(net);
        let country = match record.code.as_deref().map(DownloadCode::parse) {
            Some(DownloadCode::Country(c)) => c,
            // No country at all, or DB-IP's "unknown".
            None | Some(DownloadCode::Unknown) => {
                unknown_networks += 1;
                continue;
            }
            Some(DownloadCode::Invalid) => {
                return Err(GeoError::MmdbBadCountry {
                    path: path.to_path_buf(),
                    network: net,
                    code: record.code.unwrap_or_default(),
                });
            }
        };
        let entry = Entry {
            net,
            country,
            file: 0,
            line: 0,
        };
        if is_mapped {
            mapped.push(entry);
        } else {
            entries.push(entry);
        }
    }
    let native: HashSet<IpNet> = entries.iter().map(|e| e.net).collect();
    entries.extend(mapped.into_iter().filter(|e| !native.contains(&e.net)));

    let meta = reader.metadata();
    if !any_country_field {
        return Err(GeoError::MmdbNoCountries {
            path: path.to_path_buf(),
            database_type: meta.database_type.clone(),
        });
    }
    Ok(Read {
        entries,
        files: vec![path.to_path_buf()],
        format: DatabaseFormat::Mmdb,
        source: format!(
            "{} ({}, built {})",
            DatabaseFormat::Mmdb,
            meta.database_type,
            utc_date(meta.build_epoch)
        ),
        unknown_networks,
    })
}

/// The prefix as rampart stores it: IPv4 for the IPv4 part of an IPv6 tree
/// (`::a.b.c.d/96+n`, when the crate reports it as IPv6) and for
/// IPv4-mapped networks (`::ffff:a.b.c.d/96+n`, flagged as such).
fn normalise(net: IpNet) -> (IpNet, bool) {
    let IpNet::V6(v6) = net else {
        return (net, false);
    };
    let Some(len) = v6.prefix_len().checked_sub(96) else {
        return (net, false);
    };
    let bits = u128::from(v6.network());
    let top = bits >> 32;
    let low = Ipv4Addr::from(bits as u32);
    match top {
        0 => (Ipv4Net::new(low, len).map_or(net, IpNet::V4), false),
        0xffff => (Ipv4Net::new(low, len).map_or(net, IpNet::V4), true),
        _ => (net, false),
    }
}

/// `YYYY-MM-DD` of a Unix time (UTC), for the build date of a database.
pub(super) fn utc_date(epoch: u64) -> String {
    // Howard Hinnant's days-to-civil algorithm: a date is all that is
    // needed, not worth a date crate.
    let days = i64::try_from(epoch / 86_400).unwrap_or(i64::MAX / 2) + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}
