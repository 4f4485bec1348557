//! Request enrichment: client IP (anonymised by default), user agent → device type / OS / browser and
//! bot flag (the `woothee` parser plus TV/tablet rules it lacks), and country from an optional MaxMind
//! database. The full IP is used only in memory for the GeoIP lookup; what is stored is anonymised.
//!
//! IPv6 addresses that carry an IPv4 address are handled for what they are: IPv4-mapped, NAT64
//! (`64:ff9b::/96`) and IPv4-compatible addresses are the IPv4 client ([`canonical`]); a 6to4 address
//! (`2002:AABB:CCDD::/48`) keeps its IPv4 in the /48 that anonymisation would otherwise keep, so it is
//! cut to the anonymised IPv4's /40; Teredo (`2001::/32`) keeps only its prefix.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};

use schemas::ClientInfo;

/// Distinct user agents whose parse is kept. Players send few distinct user agents, and parsing one
/// was 3 % of the collector's CPU; a full cache is emptied and starts again, so it holds at most this
/// many entries of at most [`UA_CACHE_MAX_LEN`] bytes each.
const UA_CACHE_ENTRIES: usize = 4096;
/// Longer user agents are parsed every time and not kept.
const UA_CACHE_MAX_LEN: usize = 512;

pub struct Enricher {
    anonymize_ip: bool,
    geoip: Option<maxminddb::Reader<Vec<u8>>>,
    ua: woothee::parser::Parser,
    ua_cache: Mutex<HashMap<Box<str>, Arc<UaFields>>>,
}

/// What a user agent says about the client.
#[derive(Debug, Default, PartialEq)]
struct UaFields {
    device_type: &'static str,
    bot: bool,
    os: String,
    os_version: String,
    browser: String,
    browser_version: String,
}

impl Enricher {
    pub fn new(anonymize_ip: bool, geoip_db: Option<&Path>) -> crate::Result<Enricher> {
        let geoip = match geoip_db {
            None => None,
            Some(path) => Some(
                maxminddb::Reader::open_readfile(path)
                    .map_err(|e| crate::Error::GeoIp { path: path.to_owned(), message: e.to_string() })?,
            ),
        };
        Ok(Enricher { anonymize_ip, geoip, ua: woothee::parser::Parser::new(), ua_cache: Mutex::default() })
    }

    pub fn client_info(&self, ip: IpAddr, user_agent: Option<&str>) -> ClientInfo {
        let ip = canonical(ip);
        let mut info = ClientInfo {
            ip: Some(if self.anonymize_ip { anonymize(ip) } else { ip }.to_string()),
            country: self.country(ip).unwrap_or_default(),
            ..ClientInfo::default()
        };
        let ua = self.user_agent(user_agent.unwrap_or(""));
        info.device_type = ua.device_type.to_owned();
        info.bot = ua.bot;
        info.os.clone_from(&ua.os);
        info.os_version.clone_from(&ua.os_version);
        info.browser.clone_from(&ua.browser);
        info.browser_version.clone_from(&ua.browser_version);
        info
    }

    /// A user agent's fields, from the cache when it was seen before.
    fn user_agent(&self, ua: &str) -> Arc<UaFields> {
        if ua.len() > UA_CACHE_MAX_LEN {
            return Arc::new(self.parse_user_agent(ua));
        }
        // A poisoned lock only means another request panicked while holding it: the map is still whole.
        if let Some(hit) = self.ua_cache.lock().unwrap_or_else(|e| e.into_inner()).get(ua) {
            return hit.clone();
        }
        let parsed = Arc::new(self.parse_user_agent(ua));
        let mut cache = self.ua_cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= UA_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(ua.into(), parsed.clone());
        parsed
    }

    fn parse_user_agent(&self, ua: &str) -> UaFields {
        match self.ua.parse(ua) {
            Some(r) => UaFields {
                device_type: device_type(r.category, r.os, ua),
                bot: r.category == "crawler",
                os: known(r.os),
                os_version: known(&r.os_version),
                browser: known(r.name),
                browser_version: known(r.version),
            },
            None => UaFields { device_type: device_type("", "", ua), ..UaFields::default() },
        }
    }

    fn country(&self, ip: IpAddr) -> Option<String> {
        let reader = self.geoip.as_ref()?;
        let result = reader.lookup(ip).ok()?;
        let code: Option<&str> = result.decode_path(&maxminddb::path!["country", "iso_code"]).ok()?;
        code.map(str::to_owned)
    }
}

fn known(s: &str) -> String {
    if s == woothee::woothee::VALUE_UNKNOWN { String::new() } else { s.to_owned() }
}

/// desktop | mobile | tablet | tv | console | bot | other
fn device_type(category: &str, os: &str, ua: &str) -> &'static str {
    const TV_MARKERS: [&str; 10] =
        ["smart-tv", "smarttv", "tizen", "web0s", "webos", "appletv", "crkey", "bravia", "hbbtv", "roku"];
    let lower = ua.to_ascii_lowercase();
    if TV_MARKERS.iter().any(|m| lower.contains(m)) || lower.contains("android tv") || lower.contains("aft") && lower.contains("amazon") {
        return "tv";
    }
    match category {
        "crawler" => "bot",
        "appliance" => {
            if lower.contains("playstation") || lower.contains("xbox") || lower.contains("nintendo") {
                "console"
            } else {
                "tv"
            }
        }
        "smartphone" | "mobilephone" => {
            let tablet = os == "iPad" || (lower.contains("android") && !lower.contains("mobile")) || lower.contains("tablet");
            if tablet { "tablet" } else { "mobile" }
        }
        "pc" => {
            // iPadOS 13+ Safari claims to be a Mac; SDKs can't tell either, so it stays desktop.
            if lower.contains("xbox") { "console" } else { "desktop" }
        }
        _ => "other",
    }
}

/// The address a client really has: IPv4-mapped, NAT64 and IPv4-compatible IPv6 addresses as their
/// IPv4 address; anything else as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else { return ip };
    let seg = v6.segments();
    let low = std::net::Ipv4Addr::new((seg[6] >> 8) as u8, seg[6] as u8, (seg[7] >> 8) as u8, seg[7] as u8);
    if let Some(v4) = v6.to_ipv4_mapped() {
        return IpAddr::V4(v4);
    }
    let nat64 = seg[..6] == [0x64, 0xff9b, 0, 0, 0, 0];
    // IPv4-compatible (`::a.b.c.d`, deprecated but still seen); not `::` or `::1`.
    let compatible = seg[..6] == [0; 6] && u32::from(low) > 1;
    if nat64 || compatible { IpAddr::V4(low) } else { ip }
}

/// Zeroes the last IPv4 octet, or the last 80 bits of an IPv6 address (keeping the /48) — less where
/// the /48 would still carry an IPv4 address (see the module header).
pub fn anonymize(ip: IpAddr) -> IpAddr {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            IpAddr::from([a, b, c, 0])
        }
        IpAddr::V6(v6) => {
            let mut seg = v6.segments();
            let keep = match seg[0] {
                0x2002 => {
                    // 6to4: 2002:AABB:CCDD::/48 holds AA.BB.CC.DD; keep AA.BB.CC (a /40).
                    seg[2] &= 0xff00;
                    3
                }
                0x2001 if seg[1] == 0 => 2, // Teredo: server and client IPv4 follow the /32
                _ => 3,
            };
            seg[keep..].fill(0);
            IpAddr::from(seg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anonymizes_v4_and_v6() {
        assert_eq!(anonymize("203.0.113.77".parse().unwrap()).to_string(), "203.0.113.0");
        assert_eq!(anonymize("2001:db8:abcd:12:1:2:3:4".parse().unwrap()).to_string(), "2001:db8:abcd::");
        assert_eq!(anonymize("::ffff:10.1.2.3".parse().unwrap()).to_string(), "10.1.2.0");
    }

    #[test]
    fn embedded_ipv4_never_survives_anonymisation() {
        let a = |s: &str| anonymize(s.parse().unwrap()).to_string();
        // 6to4 of 203.0.113.77: the anonymised IPv4's /24 at most.
        assert_eq!(a("2002:cb00:714d:1:2:3:4:5"), "2002:cb00:7100::");
        // NAT64 and IPv4-compatible addresses are their IPv4 client.
        assert_eq!(a("64:ff9b::203.0.113.77"), "203.0.113.0");
        assert_eq!(a("::203.0.113.77"), "203.0.113.0");
        assert_eq!(canonical("64:ff9b::cb00:714d".parse().unwrap()).to_string(), "203.0.113.77");
        // Teredo: the client's (obfuscated) IPv4 and port, and the server's IPv4, all go.
        assert_eq!(a("2001:0:4136:e378:8000:63bf:3fff:fdd2"), "2001::");
        // Loopback and unspecified stay IPv6.
        assert_eq!(canonical("::1".parse().unwrap()).to_string(), "::1");
        assert_eq!(a("2001:db8:1:2::1"), "2001:db8:1::");
    }

    #[test]
    fn parses_common_user_agents() {
        let e = Enricher::new(true, None).unwrap();
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        let chrome = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36";
        let c = e.client_info(ip, Some(chrome));
        assert_eq!((c.device_type.as_str(), c.os.as_str(), c.browser.as_str(), c.bot), ("desktop", "Windows 10", "Chrome", false));
        assert_eq!(c.ip.as_deref(), Some("198.51.100.0"));
        let iphone = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1";
        let c = e.client_info(ip, Some(iphone));
        assert_eq!((c.device_type.as_str(), c.os.as_str(), c.browser.as_str()), ("mobile", "iPhone", "Safari"));
        let ipad = "Mozilla/5.0 (iPad; CPU OS 16_6 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/16.6 Mobile/15E148 Safari/604.1";
        assert_eq!(e.client_info(ip, Some(ipad)).device_type, "tablet");
        let tv = "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/4.0 Chrome/76.0.3809.146 TV Safari/537.36";
        assert_eq!(e.client_info(ip, Some(tv)).device_type, "tv");
        let bot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)";
        let c = e.client_info(ip, Some(bot));
        assert!(c.bot);
        assert_eq!(c.device_type, "bot");
        assert_eq!(e.client_info(ip, None).device_type, "other");
    }

    #[test]
    fn user_agent_cache_answers_as_a_parse_and_stays_bounded() {
        let e = Enricher::new(true, None).unwrap();
        let ip: IpAddr = "198.51.100.9".parse().unwrap();
        let uas = [
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
            "Mozilla/5.0 (SMART-TV; Linux; Tizen 6.0) AppleWebKit/537.36 (KHTML, like Gecko) SamsungBrowser/4.0 Chrome/76.0.3809.146 TV Safari/537.36",
            "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
            "",
        ];
        for ua in uas {
            let first = e.client_info(ip, Some(ua));
            let cached = e.client_info(ip, Some(ua));
            assert_eq!(first, cached, "{ua}");
            assert_eq!(*e.user_agent(ua), e.parse_user_agent(ua), "{ua}");
        }
        assert_eq!(e.ua_cache.lock().unwrap().len(), uas.len());
        let long = format!("{} {}", uas[0], "x".repeat(UA_CACHE_MAX_LEN));
        assert_eq!(e.client_info(ip, Some(&long)).os, e.parse_user_agent(&long).os);
        assert!(!e.ua_cache.lock().unwrap().contains_key(long.as_str()), "long user agents are not kept");
        for i in 0..UA_CACHE_ENTRIES + 10 {
            e.client_info(ip, Some(&format!("agent/{i}")));
            assert!(e.ua_cache.lock().unwrap().len() <= UA_CACHE_ENTRIES);
        }
    }

    /// A minimal MaxMind DB (format 2.0, IPv4 tree, 24-bit records) mapping one /24 to a country: enough
    /// to prove the lookup against a real file without shipping a GeoIP database.
    fn mmdb_with_one_network(net: [u8; 3], iso: &str) -> Vec<u8> {
        fn string(out: &mut Vec<u8>, s: &str) {
            out.push((2 << 5) | s.len() as u8);
            out.extend_from_slice(s.as_bytes());
        }
        fn uint(out: &mut Vec<u8>, ty: u8, v: u64) {
            let bytes: Vec<u8> = v.to_be_bytes().into_iter().skip_while(|b| *b == 0).collect();
            if ty <= 7 {
                out.push((ty << 5) | bytes.len() as u8);
            } else {
                out.push(bytes.len() as u8);
                out.push(ty - 7);
            }
            out.extend_from_slice(&bytes);
        }
        let node_count = 24u32;
        let mut tree = Vec::new();
        let bits = u32::from_be_bytes([net[0], net[1], net[2], 0]);
        for i in 0..24u32 {
            let bit = (bits >> (31 - i)) & 1;
            let next = if i == 23 { node_count + 16 } else { i + 1 };
            let (left, right) = if bit == 0 { (next, node_count) } else { (node_count, next) };
            tree.extend_from_slice(&left.to_be_bytes()[1..]);
            tree.extend_from_slice(&right.to_be_bytes()[1..]);
        }
        let mut out = tree;
        out.extend_from_slice(&[0u8; 16]);
        out.push((7 << 5) | 1); // {"country": {"iso_code": iso}}
        string(&mut out, "country");
        out.push((7 << 5) | 1);
        string(&mut out, "iso_code");
        string(&mut out, iso);
        out.extend_from_slice(b"\xAB\xCD\xEFMaxMind.com");
        out.push((7 << 5) | 9);
        string(&mut out, "node_count");
        uint(&mut out, 6, node_count as u64);
        string(&mut out, "record_size");
        uint(&mut out, 5, 24);
        string(&mut out, "ip_version");
        uint(&mut out, 5, 4);
        string(&mut out, "database_type");
        string(&mut out, "qoeflow-test-Country");
        string(&mut out, "languages");
        out.extend_from_slice(&[0, 4]); // empty array (extended type 11)
        string(&mut out, "binary_format_major_version");
        uint(&mut out, 5, 2);
        string(&mut out, "binary_format_minor_version");
        uint(&mut out, 5, 0);
        string(&mut out, "build_epoch");
        uint(&mut out, 9, 1_700_000_000);
        string(&mut out, "description");
        out.push(7 << 5);
        out
    }

    #[test]
    fn country_comes_from_a_maxmind_database_before_anonymisation() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("test.mmdb");
        std::fs::write(&path, mmdb_with_one_network([198, 51, 100], "NL")).unwrap();
        let e = Enricher::new(true, Some(&path)).unwrap();
        let c = e.client_info("198.51.100.77".parse().unwrap(), None);
        assert_eq!(c.country, "NL");
        assert_eq!(c.ip.as_deref(), Some("198.51.100.0"));
        assert_eq!(e.client_info("203.0.113.5".parse().unwrap(), None).country, "");
    }

    #[test]
    fn a_missing_geoip_database_is_a_clear_error() {
        let err = Enricher::new(true, Some(Path::new("/nonexistent/x.mmdb"))).err().unwrap();
        assert!(err.to_string().contains("/nonexistent/x.mmdb"));
    }
}
