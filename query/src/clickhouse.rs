//! The ClickHouse backend of the metrics API: queries over ClickHouse's HTTP interface, rows as JSON.
//!
//! Works with ClickHouse 18.16 and current releases. Reads use `FINAL` (ReplacingMergeTree keeps a
//! replayed row twice until it merges). Start-time histograms are fetched hex-encoded and merged here,
//! as ClickHouse cannot merge HdrHistograms. Ad-hoc SQL runs with `readonly=1` (no writes, no
//! settings changes, no table functions such as `file()` or `url()`), wrapped as a subquery so only a
//! SELECT parses, with a row limit and `max_execution_time`.

use std::time::Duration;

use schemas::tables::ClickHouseConfig;
use serde_json::{Map, Value};

use crate::error::Context as _;
use crate::sql::{SqlError, SqlRows};

pub struct ClickHouseReader {
    http: reqwest::Client,
    url: String,
    config: ClickHouseConfig,
}

/// A ClickHouse string literal: backslash escapes, so both `\` and `'` are escaped.
pub fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

impl ClickHouseReader {
    pub fn new(config: &ClickHouseConfig) -> crate::Result<ClickHouseReader> {
        let url = config.url.clone().context("the ClickHouse backend needs clickhouse.url (--clickhouse-url)")?;
        let http = reqwest::Client::builder().connect_timeout(Duration::from_secs(5)).build()?;
        Ok(ClickHouseReader { http, url, config: config.clone() })
    }

    pub fn database(&self) -> &str {
        &self.config.database
    }

    /// POSTs one statement; settings go in the URL, in order (`readonly` must come last).
    async fn post(&self, sql: String, settings: &[(&str, String)], timeout: Duration) -> crate::Result<Result<String, String>> {
        let mut params: Vec<(&str, String)> = vec![("database", self.config.database.clone())];
        if let Some(u) = &self.config.user {
            params.push(("user", u.clone()));
        }
        if let Some(p) = &self.config.password {
            params.push(("password", p.clone()));
        }
        params.push(("output_format_json_quote_64bit_integers", "0".into()));
        params.extend(settings.iter().cloned());
        let url = reqwest::Url::parse_with_params(&self.url, &params).map_err(|e| crate::Error::msg(format!("clickhouse.url {:?}: {e}", self.url)))?;
        let resp = self.http.post(url).body(sql).timeout(timeout).send().await?;
        let ok = resp.status().is_success();
        let text = resp.text().await?;
        Ok(if ok { Ok(text) } else { Err(text.trim().to_owned()) })
    }

    /// Rows of a query (written without a FORMAT clause) as JSON objects.
    pub async fn query_rows(&self, sql: &str) -> crate::Result<Vec<Map<String, Value>>> {
        let text = match self.post(format!("{sql}\nFORMAT JSONEachRow"), &[], Duration::from_secs(60)).await? {
            Ok(t) => t,
            Err(e) => return Err(crate::Error::msg(format!("ClickHouse: {e}"))),
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).context("ClickHouse returned a row that is not a JSON object"))
            .collect()
    }

    pub async fn read_only_sql(&self, sql: &str, max_rows: usize, timeout_ms: u64) -> Result<SqlRows, SqlError> {
        let inner = sql.trim().trim_end_matches(';');
        let first = inner.split(|c: char| !c.is_ascii_alphabetic()).next().unwrap_or_default().to_ascii_uppercase();
        if first != "SELECT" && first != "WITH" {
            return Err(SqlError::Invalid(format!("only SELECT queries are allowed, not {first:?}")));
        }
        let wrapped = format!("SELECT * FROM (\n{inner}\n) LIMIT {}\nFORMAT JSONCompact", max_rows + 1);
        let settings = [("max_execution_time", timeout_ms.div_ceil(1000).max(1).to_string()), ("readonly", "1".into())];
        let text = match self.post(wrapped, &settings, Duration::from_millis(timeout_ms + 5_000)).await {
            Ok(Ok(t)) => t,
            Ok(Err(e)) if e.contains("Code: 159") || e.contains("TIMEOUT_EXCEEDED") => return Err(SqlError::Timeout(timeout_ms)),
            Ok(Err(e)) if e.contains("Code: 241") || e.contains("MEMORY_LIMIT_EXCEEDED") => return Err(SqlError::ResourcesExhausted(e)),
            Ok(Err(e)) => return Err(SqlError::Invalid(e)),
            Err(crate::Error::Http(e)) if e.is_timeout() => {
                return Err(SqlError::Timeout(timeout_ms));
            }
            Err(e) => return Err(SqlError::Invalid(format!("ClickHouse unreachable: {e:#}"))),
        };
        let body: Value = serde_json::from_str(&text).map_err(|e| SqlError::Invalid(format!("unreadable answer: {e}")))?;
        let columns: Vec<String> =
            body["meta"].as_array().into_iter().flatten().filter_map(|m| m["name"].as_str().map(str::to_owned)).collect();
        let rows = body["data"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let values = r.as_array().cloned().unwrap_or_default();
                columns.iter().cloned().zip(values).collect::<Map<String, Value>>()
            })
            .collect();
        Ok(SqlRows { columns, rows })
    }
}

/// The [`QUANTILES`] of histograms given as a JSON array of hex-encoded HdrHistograms, less the
/// corrections' retractions (another such array) when given.
pub fn quantiles_of_hex(hists: &Value, retracts: Option<&Value>) -> crate::Result<Vec<Option<f64>>> {
    fn decode(hists: &Value) -> crate::Result<Vec<Vec<u8>>> {
        hists
            .as_array()
            .context("hists is not an array")?
            .iter()
            .map(|h| hex_decode(h.as_str().context("a histogram is not a string")?).context("a histogram is not hex"))
            .collect()
    }
    fn slices(v: &[Vec<u8>]) -> Vec<&[u8]> {
        v.iter().map(Vec::as_slice).filter(|b| !b.is_empty()).collect()
    }
    let (hists, retracts) = (decode(hists)?, retracts.map(decode).transpose()?.unwrap_or_default());
    crate::hdr::quantiles_of_serialized(&slices(&hists), &slices(&retracts))
}

pub(crate) fn hex_decode(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use hdrhistogram::Histogram;
    use schemas::hist::new_histogram;

    #[test]
    fn literals_and_hex() {
        assert_eq!(quote(r"it's a \ path"), r"'it\'s a \\ path'");
        assert_eq!(hex_decode("00ff10"), Some(vec![0, 255, 16]));
        assert_eq!(hex_decode("0"), None);
        assert_eq!(hex_decode("zz"), None);
        let mut h = new_histogram();
        for v in [100u64, 200, 300, 400] {
            h.record(v).unwrap();
        }
        let hex: String = schemas::hist::serialize_histogram(&h).iter().map(|b| format!("{b:02X}")).collect();
        let q = quantiles_of_hex(&serde_json::json!([hex, ""]), None).unwrap();
        assert_eq!(q, vec![Some(200.0), Some(400.0)]);
        // A correction retracted 400 (and added 50 in another row).
        let mut r = new_histogram();
        r.record(400).unwrap();
        let mut a = new_histogram();
        a.record(50).unwrap();
        let hex_of = |h: &Histogram<u64>| -> String { schemas::hist::serialize_histogram(h).iter().map(|b| format!("{b:02X}")).collect() };
        let q = quantiles_of_hex(&serde_json::json!([hex, hex_of(&a)]), Some(&serde_json::json!([hex_of(&r)]))).unwrap();
        assert_eq!(q, vec![Some(100.0), Some(300.0)], "50, 100, 200, 300");
        assert!(quantiles_of_hex(&serde_json::json!([hex_of(&a)]), Some(&serde_json::json!([hex_of(&r)]))).is_err());
    }
}
