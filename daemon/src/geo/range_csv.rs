//! DB-IP's CSV layout (dbip-country-lite.csv): `start,end,country` lines,
//! inclusive address ranges of either family, no header. `ZZ` marks a range
//! of no known country. IPv4-mapped ranges (`::ffff:a.b.c.d`) are the IPv4
//! ranges they map.

use std::net::IpAddr;
use std::path::Path;

use super::{DatabaseFormat, DownloadCode, Entry, GeoError, LineCounter, Read};
use crate::rules::{RuleError, range_entry};

pub(super) fn load(path: &Path, text: &str) -> Result<Read, GeoError> {
    let mut reader = ::csv::ReaderBuilder::new()
        .has_headers(false)
        // Field counts are checked here, to name a truncated line as such.
        .flexible(true)
        .trim(::csv::Trim::All)
        .from_reader(text.as_bytes());
    let mut lines = LineCounter::new(text);
    let mut entries = Vec::new();
    let mut unknown_networks = 0;
    for record in reader.records() {
        let record = record.map_err(|e| lines.error(path, e))?;
        let line = lines.record(&record);
        let (start, end, code) = match (record.get(0), record.get(1), record.get(2)) {
            (Some(start), Some(end), Some(code)) if record.len() == 3 => (start, end, code),
            _ => {
                return Err(GeoError::FieldCount {
                    path: path.to_path_buf(),
                    line,
                    expected: 3,
                    found: record.len(),
                });
            }
        };
        let bad_range = |source| GeoError::BadEntry {
            path: path.to_path_buf(),
            line,
            text: format!("{start}-{end}"),
            source,
        };
        let address = |input: &str| {
            input.parse::<IpAddr>().map_err(|_| {
                bad_range(RuleError::InvalidAddress {
                    input: input.to_string(),
                })
            })
        };
        let (first, last) = (address(start)?, address(end)?);
        let country = match DownloadCode::parse(code) {
            DownloadCode::Country(c) => c,
            DownloadCode::Unknown => {
                unknown_networks += 1;
                continue;
            }
            DownloadCode::Invalid => {
                return Err(GeoError::BadCountry {
                    path: path.to_path_buf(),
                    line,
                    code: code.to_string(),
                });
            }
        };
        // DB-IP lists some IPv4 space again as IPv4-mapped IPv6 ranges: the
        // kernel sees those sources as IPv4, so they are IPv4 ranges here.
        let nets = range_entry(first, last, &format!("{start}-{end}")).map_err(&bad_range)?;
        entries.extend(nets.into_iter().map(|net| Entry {
            net,
            country,
            file: 0,
            line,
        }));
    }
    Ok(Read {
        entries,
        files: vec![path.to_path_buf()],
        format: DatabaseFormat::DbIpCsv,
        source: format!("{} ({})", DatabaseFormat::DbIpCsv, super::file_name(path)),
        unknown_networks,
    })
}
