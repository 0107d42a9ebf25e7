//! Figures, the table printed per scenario, and the JSON written to `bench-results/`.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

/// Nearest-rank percentile of unsorted values (`p` in 0..=100); 0 for no values.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

pub fn median(values: &[f64]) -> f64 {
    percentile(values, 50.0)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// One line of a scenario's table.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub figure: String,
    pub value: f64,
    pub unit: &'static str,
    /// What the figure is compared with (a bound or another figure of the same run).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reference_value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    pub target: String,
    /// `None`: reported only.
    pub pass: Option<bool>,
}

impl Row {
    /// A figure reported without a target.
    pub fn info(figure: impl Into<String>, value: f64, unit: &'static str) -> Row {
        Row {
            figure: figure.into(),
            value,
            unit,
            reference: None,
            reference_value: None,
            ratio: None,
            target: String::new(),
            pass: None,
        }
    }

    /// A figure with an absolute target `value <= max` (or `>= min` when `at_least`).
    pub fn limit(
        figure: impl Into<String>,
        value: f64,
        unit: &'static str,
        bound: f64,
        at_least: bool,
    ) -> Row {
        let pass = if at_least {
            value >= bound
        } else {
            value <= bound
        };
        Row {
            target: format!("{} {}", if at_least { ">=" } else { "<=" }, fmt_num(bound)),
            pass: Some(pass),
            ..Row::info(figure, value, unit)
        }
    }

    /// A figure compared with a reference: `value / reference <= max_ratio` (or `>=`).
    pub fn ratio(
        figure: impl Into<String>,
        value: f64,
        unit: &'static str,
        reference: impl Into<String>,
        reference_value: f64,
        bound: f64,
        at_least: bool,
    ) -> Row {
        let ratio = if reference_value == 0.0 {
            f64::INFINITY
        } else {
            value / reference_value
        };
        let pass = if at_least {
            ratio >= bound
        } else {
            ratio <= bound
        };
        Row {
            reference: Some(reference.into()),
            reference_value: Some(reference_value),
            ratio: Some(ratio),
            target: format!(
                "ratio {} {}",
                if at_least { ">=" } else { "<=" },
                fmt_num(bound)
            ),
            pass: Some(pass),
            ..Row::info(figure, value, unit)
        }
    }

    /// A figure with a reference shown but no target.
    pub fn versus(
        figure: impl Into<String>,
        value: f64,
        unit: &'static str,
        reference: impl Into<String>,
        reference_value: f64,
    ) -> Row {
        let mut row = Row::ratio(figure, value, unit, reference, reference_value, 0.0, false);
        row.target = String::new();
        row.pass = None;
        row
    }

    /// Marks a pass/fail condition that is not a number (e.g. "all streams completed").
    pub fn check(
        figure: impl Into<String>,
        value: f64,
        unit: &'static str,
        ok: bool,
        target: &str,
    ) -> Row {
        Row {
            target: target.into(),
            pass: Some(ok),
            ..Row::info(figure, value, unit)
        }
    }
}

fn fmt_num(v: f64) -> String {
    if !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if a >= 1000.0 || (a == a.trunc() && a < 1e15) {
        format!("{v:.0}")
    } else if a >= 10.0 {
        format!("{v:.1}")
    } else if a >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// A scenario's outcome.
pub struct Report {
    pub scenario: &'static str,
    pub quick: bool,
    pub rows: Vec<Row>,
    /// Parameters and raw figures behind the rows.
    pub details: Value,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(scenario: &'static str, quick: bool) -> Report {
        Report {
            scenario,
            quick,
            rows: Vec::new(),
            details: Value::Object(Default::default()),
            notes: Vec::new(),
        }
    }

    pub fn row(&mut self, row: Row) {
        self.rows.push(row);
    }

    pub fn detail(&mut self, key: &str, value: impl Serialize) {
        if let Value::Object(map) = &mut self.details {
            map.insert(
                key.to_string(),
                serde_json::to_value(value).unwrap_or(Value::Null),
            );
        }
    }

    pub fn note(&mut self, note: impl Into<String>) {
        self.notes.push(note.into());
    }

    pub fn misses(&self) -> usize {
        self.rows.iter().filter(|r| r.pass == Some(false)).count()
    }

    pub fn print(&self) {
        let header = ["figure", "value", "reference", "ratio", "target", "result"];
        let lines: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.figure.clone(),
                    format!("{} {}", fmt_num(r.value), r.unit)
                        .trim()
                        .to_string(),
                    match (&r.reference, r.reference_value) {
                        (Some(name), Some(v)) => format!("{name} = {}", fmt_num(v)),
                        (Some(text), None) => text.clone(),
                        (None, _) => String::new(),
                    },
                    r.ratio.map(|x| format!("{x:.3}")).unwrap_or_default(),
                    r.target.clone(),
                    match r.pass {
                        Some(true) => "pass".into(),
                        Some(false) => "MISS".into(),
                        None => "-".into(),
                    },
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for l in &lines {
            for (w, c) in widths.iter_mut().zip(l.iter()) {
                *w = (*w).max(c.chars().count());
            }
        }
        let mode = if self.quick { " (--quick)" } else { "" };
        println!("\n== {}{mode}", self.scenario);
        let print = |cells: &[String]| {
            let mut line = String::new();
            for (i, (c, w)) in cells.iter().zip(widths.iter()).enumerate() {
                if i > 0 {
                    line.push_str(" | ");
                }
                let pad = w.saturating_sub(c.chars().count());
                if i == 1 || i == 3 {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(c);
                } else {
                    line.push_str(c);
                    line.push_str(&" ".repeat(pad));
                }
            }
            println!("{}", line.trim_end());
        };
        print(&header.map(String::from));
        print(&widths.map(|w| "-".repeat(w)));
        for l in &lines {
            print(l);
        }
        for n in &self.notes {
            println!("  note: {n}");
        }
    }

    pub fn write_json(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let json = serde_json::json!({
            "scenario": self.scenario,
            "quick": self.quick,
            "rows": self.rows,
            "misses": self.misses(),
            "notes": self.notes,
            "details": self.details,
        });
        let path = dir.join(format!("{}.json", self.scenario));
        std::fs::write(path, serde_json::to_string_pretty(&json)? + "\n")
    }
}
