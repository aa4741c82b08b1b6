//! How results are printed: a plain aligned table (like crictl's), JSON or YAML.

use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Table,
    Json,
    Yaml,
}

/// Prints `value` as JSON or YAML. Table output is each command's own business.
pub fn print_structured<T: Serialize>(format: Format, value: &T) -> anyhow::Result<()> {
    let json = serde_json::to_value(value)?;
    let text = match format {
        Format::Yaml => serde_norway::to_string(&json)?,
        Format::Json | Format::Table => serde_json::to_string_pretty(&json)? + "\n",
    };
    print!("{text}");
    Ok(())
}

/// An inspection document like crictl's: `status`, then each verbose info entry as the
/// JSON it holds (or as a string when it holds none).
pub fn inspection<T: Serialize>(
    status: &T,
    info: std::collections::HashMap<String, String>,
) -> anyhow::Result<serde_json::Value> {
    let mut doc = serde_json::Map::new();
    doc.insert("status".into(), serde_json::to_value(status)?);
    for (key, value) in info {
        let value = serde_json::from_str(&value).unwrap_or(serde_json::Value::String(value));
        doc.insert(key, value);
    }
    Ok(serde_json::Value::Object(doc))
}

/// Prints inspection documents: one as itself, several as an array; YAML if asked, else
/// JSON (an inspection has no table form).
pub fn print_inspections(format: Format, mut docs: Vec<serde_json::Value>) -> anyhow::Result<()> {
    let value = if docs.len() == 1 {
        docs.remove(0)
    } else {
        serde_json::Value::Array(docs)
    };
    let format = if format == Format::Yaml {
        Format::Yaml
    } else {
        Format::Json
    };
    print_structured(format, &value)
}

/// Sizes the way crictl prints them (decimal units).
pub fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < units.len() {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.3}{}", units[unit]).replace(".000", "")
    }
}

/// `KEY=VALUE` label selectors from the command line.
pub fn labels(
    verb: &str,
    args: &[String],
) -> anyhow::Result<std::collections::HashMap<String, String>> {
    args.iter()
        .map(|label| {
            label
                .split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .ok_or_else(|| anyhow::anyhow!("{verb}: --label must be KEY=VALUE"))
        })
        .collect()
}

/// Columns padded to their widest cell, separated by three spaces, like crictl's tables.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(header: I) -> Self {
        Table {
            rows: vec![header.into_iter().map(Into::into).collect()],
        }
    }

    pub fn row<I: IntoIterator<Item = S>, S: Into<String>>(&mut self, cells: I) {
        self.rows.push(cells.into_iter().map(Into::into).collect());
    }

    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| {
                self.rows
                    .iter()
                    .filter_map(|r| r.get(c))
                    .map(|cell| cell.chars().count())
                    .max()
                    .unwrap_or(0)
            })
            .collect();
        let mut out = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 < row.len() {
                    line.push_str(&format!("{cell:<w$}   ", w = widths[c]));
                } else {
                    line.push_str(cell);
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_aligns_columns() {
        let mut t = Table::new(["TYPE", "STATUS"]);
        t.row(["RuntimeReady", "true"]);
        t.row(["X", ""]);
        assert_eq!(
            t.render(),
            "TYPE           STATUS\nRuntimeReady   true\nX\n"
        );
    }
}

/// `nanos` since the epoch as an RFC 3339 UTC time with milliseconds.
pub fn utc_time(nanos: i64) -> String {
    let millis = nanos.div_euclid(1_000_000);
    let (secs, ms) = (millis.div_euclid(1000), millis.rem_euclid(1000));
    let (days, rest) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = strata_api::civil_date(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{ms:03}Z",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod time_tests {
    #[test]
    fn utc_times() {
        assert_eq!(super::utc_time(0), "1970-01-01T00:00:00.000Z");
        // 2000-02-29 12:34:56.789 UTC, a leap day.
        assert_eq!(
            super::utc_time(951_827_696_789_000_000),
            "2000-02-29T12:34:56.789Z"
        );
        assert_eq!(
            super::utc_time(1_796_220_000_000_000_000),
            "2026-12-02T14:00:00.000Z"
        );
    }
}
