//! Country databases made up for tests, in every format [`super::load`]
//! reads. Not part of the API (hidden from the docs), but not `cfg(test)`
//! either: the end-to-end tests of other crates (`tests/`, `daemon/tests/`)
//! build their database files with these.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnet::IpNet;

pub use super::mmdb_writer::{
    DEFAULT_BUILD_EPOCH, MmdbValue, MmdbWriteError, MmdbWriter, country_mmdb, country_record,
    registered_country_record,
};

/// The geoname id of a continent-only location (Europe) in [`GeoLite2Csv`].
pub const EUROPE_GEONAME_ID: u32 = 6_255_148;

/// The geoname id [`GeoLite2Csv`] gives a country code.
pub fn geoname_id(code: &str) -> u32 {
    let code = code.to_ascii_uppercase();
    code.bytes()
        .fold(0u32, |id, b| {
            id.wrapping_mul(256).wrapping_add(u32::from(b))
        })
        .wrapping_add(1_000_000)
}

/// Writes MaxMind's CSV layout: `<product>-Blocks-IPv4.csv`,
/// `<product>-Blocks-IPv6.csv` and `<product>-Locations-en.csv`.
#[derive(Debug, Clone)]
pub struct GeoLite2Csv {
    product: String,
    anycast_column: bool,
    blocks: Vec<Block>,
}

#[derive(Debug, Clone)]
struct Block {
    network: IpNet,
    /// `geoname_id`: a country code, or `None` for the Europe continent.
    location: Option<Option<String>>,
    registered: Option<String>,
}

/// The files [`GeoLite2Csv::write`] wrote.
#[derive(Debug, Clone)]
pub struct GeoLite2Files {
    pub blocks_ipv4: PathBuf,
    pub blocks_ipv6: PathBuf,
    pub locations: PathBuf,
}

impl Default for GeoLite2Csv {
    fn default() -> GeoLite2Csv {
        GeoLite2Csv::new()
    }
}

impl GeoLite2Csv {
    /// `GeoLite2-Country` files with the current columns (`is_anycast`).
    pub fn new() -> GeoLite2Csv {
        GeoLite2Csv {
            product: "GeoLite2-Country".to_string(),
            anycast_column: true,
            blocks: Vec::new(),
        }
    }

    /// Another product name, e.g. `GeoIP2-Country`.
    pub fn product(mut self, product: &str) -> GeoLite2Csv {
        self.product = product.to_string();
        self
    }

    /// The older six-column Blocks layout.
    pub fn without_anycast_column(mut self) -> GeoLite2Csv {
        self.anycast_column = false;
        self
    }

    /// A network used and registered in `code`.
    pub fn network(&mut self, network: IpNet, code: &str) -> &mut GeoLite2Csv {
        self.blocks.push(Block {
            network,
            location: Some(Some(code.to_string())),
            registered: Some(code.to_string()),
        });
        self
    }

    /// A network with an empty `geoname_id`, registered in `code`.
    pub fn registered_only(&mut self, network: IpNet, code: &str) -> &mut GeoLite2Csv {
        self.blocks.push(Block {
            network,
            location: None,
            registered: Some(code.to_string()),
        });
        self
    }

    /// A network MaxMind places only on a continent (Europe), registered in
    /// `registered` if given.
    pub fn continent_only(&mut self, network: IpNet, registered: Option<&str>) -> &mut GeoLite2Csv {
        self.blocks.push(Block {
            network,
            location: Some(None),
            registered: registered.map(str::to_string),
        });
        self
    }

    pub fn blocks_ipv4(&self) -> String {
        self.blocks_text(|n| matches!(n, IpNet::V4(_)))
    }

    pub fn blocks_ipv6(&self) -> String {
        self.blocks_text(|n| matches!(n, IpNet::V6(_)))
    }

    fn blocks_text(&self, family: impl Fn(&IpNet) -> bool) -> String {
        let mut text = String::from(
            "network,geoname_id,registered_country_geoname_id,represented_country_geoname_id,is_anonymous_proxy,is_satellite_provider",
        );
        text.push_str(if self.anycast_column {
            ",is_anycast\n"
        } else {
            "\n"
        });
        let id = |code: &Option<String>| code.as_deref().map(geoname_id);
        for b in self.blocks.iter().filter(|b| family(&b.network)) {
            let location = match &b.location {
                None => None,
                Some(None) => Some(EUROPE_GEONAME_ID),
                Some(code) => id(code),
            };
            let field = |id: Option<u32>| id.map(|i| i.to_string()).unwrap_or_default();
            let _ = write!(
                text,
                "{},{},{},,0,0",
                b.network,
                field(location),
                field(id(&b.registered))
            );
            text.push_str(if self.anycast_column { ",0\n" } else { "\n" });
        }
        text
    }

    /// Every country of the blocks, and the Europe continent.
    pub fn locations(&self) -> String {
        let mut codes: Vec<String> = self
            .blocks
            .iter()
            .flat_map(|b| [b.location.clone().flatten(), b.registered.clone()])
            .flatten()
            .map(|c| c.to_ascii_uppercase())
            .collect();
        codes.sort();
        codes.dedup();
        let mut text = String::from(
            "geoname_id,locale_code,continent_code,continent_name,country_iso_code,country_name,is_in_european_union\n",
        );
        let _ = writeln!(text, "{EUROPE_GEONAME_ID},en,EU,Europe,,,0");
        for code in codes {
            // A quoted name with a comma, as real files have ("Korea, Republic of").
            let _ = writeln!(
                text,
                "{},en,EU,Europe,{code},\"Country {code}, test\",0",
                geoname_id(&code)
            );
        }
        text
    }

    /// Writes the three files into `dir`.
    pub fn write(&self, dir: &Path) -> io::Result<GeoLite2Files> {
        let files = GeoLite2Files {
            blocks_ipv4: dir.join(format!("{}-Blocks-IPv4.csv", self.product)),
            blocks_ipv6: dir.join(format!("{}-Blocks-IPv6.csv", self.product)),
            locations: dir.join(format!("{}-Locations-en.csv", self.product)),
        };
        fs::write(&files.blocks_ipv4, self.blocks_ipv4())?;
        fs::write(&files.blocks_ipv6, self.blocks_ipv6())?;
        fs::write(&files.locations, self.locations())?;
        Ok(files)
    }
}

/// DB-IP's `start,end,country` lines (no header), e.g. for
/// dbip-country-lite.csv. `ZZ` is DB-IP's "unknown".
pub fn dbip_csv<'a>(ranges: impl IntoIterator<Item = (IpAddr, IpAddr, &'a str)>) -> String {
    let mut text = String::new();
    for (start, end, code) in ranges {
        let _ = writeln!(text, "{start},{end},{code}");
    }
    text
}

/// `network,country` lines with their header.
pub fn network_country_csv<'a>(networks: impl IntoIterator<Item = (IpNet, &'a str)>) -> String {
    let mut text = String::from("network,country\n");
    for (network, code) in networks {
        let _ = writeln!(text, "{network},{code}");
    }
    text
}
