//! MaxMind's CSV layout (GeoLite2 and GeoIP2, Country or City):
//! `<product>-Blocks-IPv4.csv` and `<product>-Blocks-IPv6.csv` map networks
//! to geoname ids, which `<product>-Locations-<locale>.csv` maps to
//! countries. Columns are found by their header names, so the City files'
//! extra columns are harmless.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use super::{
    DatabaseFormat, DownloadCode, Entry, GeoError, LineCounter, Read, file_name, io_error,
    read_text,
};
use crate::rules::parse_entry;

const BLOCKS_SUFFIXES: [&str; 2] = ["-Blocks-IPv4.csv", "-Blocks-IPv6.csv"];
const LOCATIONS_INFIX: &str = "-Locations-";
/// What the `geoname_id`s resolve to: `None` for a location with no
/// country (a continent, for networks MaxMind places only that far).
type Locations = HashMap<u32, Option<u16>>;

/// The Blocks files to read and the Locations file they refer to.
#[derive(Debug)]
pub(super) struct BlocksSet {
    blocks: Vec<PathBuf>,
    locations: PathBuf,
}

/// The Blocks files in `dir`, if it holds any.
pub(super) fn blocks_in_dir(dir: &Path) -> Result<Option<BlocksSet>, GeoError> {
    let mut products: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in fs::read_dir(dir).map_err(io_error(dir))? {
        let path = entry.map_err(io_error(dir))?.path();
        if let Some(product) = product_of(&path)
            && path.is_file()
        {
            products.entry(product).or_default().push(path);
        }
    }
    let mut products = products.into_iter();
    let Some((product, mut blocks)) = products.next() else {
        return Ok(None);
    };
    let others: Vec<String> = products.map(|(p, _)| p).collect();
    if !others.is_empty() {
        return Err(GeoError::SeveralProducts {
            dir: dir.to_path_buf(),
            products: std::iter::once(product).chain(others).collect(),
        });
    }
    // IPv4 before IPv6.
    blocks.sort();
    let first = blocks.first().cloned().unwrap_or_default();
    let locations = locations_for(dir, Some(&product), &first)?;
    Ok(Some(BlocksSet { blocks, locations }))
}

/// One Blocks file (recognised by its header), with the Locations file
/// next to it.
pub(super) fn blocks_file(path: &Path) -> Result<BlocksSet, GeoError> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let product = product_of(path);
    let locations = locations_for(dir, product.as_deref(), path)?;
    Ok(BlocksSet {
        blocks: vec![path.to_path_buf()],
        locations,
    })
}

/// `GeoLite2-Country` of `.../GeoLite2-Country-Blocks-IPv4.csv`.
fn product_of(path: &Path) -> Option<String> {
    let name = path.file_name()?.to_str()?;
    BLOCKS_SUFFIXES
        .iter()
        .find_map(|s| name.strip_suffix(s))
        .filter(|p| !p.is_empty())
        .map(str::to_string)
}

/// The product's English Locations file, else its first in another locale
/// (country codes do not depend on the locale). A renamed Blocks file
/// takes the directory's only English Locations file.
fn locations_for(dir: &Path, product: Option<&str>, blocks: &Path) -> Result<PathBuf, GeoError> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .map_err(io_error(dir))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.contains(LOCATIONS_INFIX) && n.ends_with(".csv"))
        .collect();
    names.sort();
    let english = |n: &String| n.ends_with("-Locations-en.csv");
    let found = match product {
        Some(product) => {
            let ours = |n: &&String| {
                n.strip_prefix(product)
                    .is_some_and(|r| r.starts_with(LOCATIONS_INFIX))
            };
            names
                .iter()
                .filter(ours)
                .find(|n| english(n))
                .or_else(|| names.iter().find(ours))
        }
        None => {
            let mut english_files = names.iter().filter(|n| english(n));
            match (english_files.next(), english_files.next()) {
                (Some(only), None) => Some(only),
                _ => None,
            }
        }
    };
    match found {
        Some(name) => Ok(dir.join(name)),
        None => Err(GeoError::NoLocations {
            blocks: blocks.to_path_buf(),
            expected: dir.join(format!(
                "{}-Locations-en.csv",
                product.unwrap_or("GeoLite2-Country")
            )),
        }),
    }
}

pub(super) fn load(set: &BlocksSet) -> Result<Read, GeoError> {
    let locations = read_locations(&set.locations)?;
    let mut entries = Vec::new();
    let mut unknown_networks = 0;
    for (file, blocks) in set.blocks.iter().enumerate() {
        unknown_networks += read_blocks(blocks, file, &locations, &set.locations, &mut entries)?;
    }
    let names: Vec<String> = set.blocks.iter().map(|p| file_name(p)).collect();
    Ok(Read {
        entries,
        source: format!(
            "{} ({}; {})",
            DatabaseFormat::GeoLite2Csv,
            names.join(", "),
            file_name(&set.locations)
        ),
        files: set.blocks.clone(),
        format: DatabaseFormat::GeoLite2Csv,
        unknown_networks,
    })
}

fn reader(text: &str) -> ::csv::Reader<&[u8]> {
    ::csv::ReaderBuilder::new()
        // Field counts are checked here, to name a truncated line as such.
        .flexible(true)
        .trim(::csv::Trim::All)
        .from_reader(text.as_bytes())
}

/// The header's columns, looked up by name.
struct Columns {
    path: PathBuf,
    names: Vec<String>,
}

impl Columns {
    fn new(
        path: &Path,
        reader: &mut ::csv::Reader<&[u8]>,
        lines: &mut LineCounter<'_>,
    ) -> Result<Columns, GeoError> {
        let headers = reader.headers().map_err(|e| lines.error(path, e))?;
        Ok(Columns {
            path: path.to_path_buf(),
            names: headers.iter().map(str::to_ascii_lowercase).collect(),
        })
    }

    fn get(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    fn require(&self, name: &'static str) -> Result<usize, GeoError> {
        self.get(name).ok_or_else(|| GeoError::MissingColumn {
            path: self.path.clone(),
            column: name,
        })
    }

    /// Every line has as many fields as the header: a line cut short by a
    /// truncated download does not.
    fn check_len(&self, record: &::csv::StringRecord, line: usize) -> Result<(), GeoError> {
        if record.len() == self.names.len() {
            return Ok(());
        }
        Err(GeoError::FieldCount {
            path: self.path.clone(),
            line,
            expected: self.names.len(),
            found: record.len(),
        })
    }

    /// Boolean columns hold 0 or 1 (`is_anycast` also nothing): checking
    /// them catches a last line cut right after its comma.
    fn check_flags(
        &self,
        record: &::csv::StringRecord,
        line: usize,
        flags: &[(&'static str, bool)],
    ) -> Result<(), GeoError> {
        for &(column, may_be_empty) in flags {
            let Some(text) = self.get(column).and_then(|i| record.get(i)) else {
                continue;
            };
            if !(text == "0" || text == "1" || (may_be_empty && text.is_empty())) {
                return Err(GeoError::BadFlag {
                    path: self.path.clone(),
                    line,
                    column,
                    text: text.to_string(),
                });
            }
        }
        Ok(())
    }

    /// An optional geoname id column of `record`.
    fn geoname_id(
        &self,
        record: &::csv::StringRecord,
        line: usize,
        index: Option<usize>,
        column: &'static str,
    ) -> Result<Option<u32>, GeoError> {
        let text = index.and_then(|i| record.get(i)).unwrap_or_default();
        if text.is_empty() {
            return Ok(None);
        }
        text.parse().map(Some).map_err(|_| GeoError::BadGeonameId {
            path: self.path.clone(),
            line,
            column,
            text: text.to_string(),
        })
    }
}

fn read_locations(path: &Path) -> Result<Locations, GeoError> {
    let text = read_text(path)?;
    let mut reader = reader(&text);
    let mut lines = LineCounter::new(&text);
    let columns = Columns::new(path, &mut reader, &mut lines)?;
    let id_column = columns.require("geoname_id")?;
    let code_column = columns.require("country_iso_code")?;
    let mut locations = Locations::new();
    for record in reader.records() {
        let record = record.map_err(|e| lines.error(path, e))?;
        let line = lines.record(&record);
        columns.check_len(&record, line)?;
        columns.check_flags(&record, line, &[("is_in_european_union", false)])?;
        let id = columns
            .geoname_id(&record, line, Some(id_column), "geoname_id")?
            .ok_or_else(|| GeoError::BadGeonameId {
                path: path.to_path_buf(),
                line,
                column: "geoname_id",
                text: String::new(),
            })?;
        let code = record.get(code_column).unwrap_or_default();
        let country = match DownloadCode::parse(code) {
            _ if code.is_empty() => None,
            DownloadCode::Country(c) => Some(c),
            DownloadCode::Unknown => None,
            DownloadCode::Invalid => {
                return Err(GeoError::BadCountry {
                    path: path.to_path_buf(),
                    line,
                    code: code.to_string(),
                });
            }
        };
        if let Some(previous) = locations.insert(id, country)
            && previous != country
        {
            return Err(GeoError::GeonameConflict {
                path: path.to_path_buf(),
                line,
                id,
            });
        }
    }
    Ok(locations)
}

/// Adds the networks of one Blocks file to `entries`; returns how many
/// have no country.
fn read_blocks(
    path: &Path,
    file: usize,
    locations: &Locations,
    locations_path: &Path,
    entries: &mut Vec<Entry>,
) -> Result<usize, GeoError> {
    let text = read_text(path)?;
    let mut reader = reader(&text);
    let mut lines = LineCounter::new(&text);
    let columns = Columns::new(path, &mut reader, &mut lines)?;
    let network_column = columns.require("network")?;
    let country_column = columns.require("geoname_id")?;
    let registered_column = columns.get("registered_country_geoname_id");
    let flags = [
        ("is_anonymous_proxy", false),
        ("is_satellite_provider", false),
        ("is_anycast", true),
    ];
    let mut unknown = 0;
    for record in reader.records() {
        let record = record.map_err(|e| lines.error(path, e))?;
        let line = lines.record(&record);
        columns.check_len(&record, line)?;
        columns.check_flags(&record, line, &flags)?;
        let network = record.get(network_column).unwrap_or_default();
        let nets = parse_entry(network).map_err(|source| GeoError::BadEntry {
            path: path.to_path_buf(),
            line,
            text: network.to_string(),
            source,
        })?;
        let resolve = |id: Option<u32>| match id {
            None => Ok(None),
            Some(id) => locations
                .get(&id)
                .copied()
                .ok_or_else(|| GeoError::UnknownGeonameId {
                    path: path.to_path_buf(),
                    line,
                    id,
                    locations: locations_path.to_path_buf(),
                }),
        };
        let country = columns.geoname_id(&record, line, Some(country_column), "geoname_id")?;
        let registered = columns.geoname_id(
            &record,
            line,
            registered_column,
            "registered_country_geoname_id",
        )?;
        // As for MMDB: the country where the network is used, else the one
        // it is registered in (MaxMind leaves `geoname_id` empty, or points
        // it at a continent, where it knows no more).
        let Some(country) = resolve(country)?.or(resolve(registered)?) else {
            unknown += 1;
            continue;
        };
        entries.extend(nets.into_iter().map(|net| Entry {
            net,
            country,
            file,
            line,
        }));
    }
    Ok(unknown)
}
