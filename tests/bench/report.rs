//! Figures beside their targets and baselines: one list of rows, printed as a table and
//! written as JSON from the same values.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

/// A measured amount with its unit.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Quantity {
    /// The amount, in `unit`.
    pub amount: f64,
    /// Its unit.
    pub unit: Unit,
}

/// Units figures are kept in (sizes in bytes, printed in decimal MB as the targets are).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Unit {
    /// Milliseconds.
    Ms,
    /// Seconds.
    S,
    /// Bytes.
    Bytes,
    /// Percent.
    Percent,
    /// A number of things (requests, processes, descriptors).
    Count,
}

impl Quantity {
    pub fn ms(amount: f64) -> Quantity {
        Quantity {
            amount,
            unit: Unit::Ms,
        }
    }
    pub fn seconds(amount: f64) -> Quantity {
        Quantity {
            amount,
            unit: Unit::S,
        }
    }
    pub fn bytes(amount: u64) -> Quantity {
        Quantity {
            amount: amount as f64,
            unit: Unit::Bytes,
        }
    }
    pub fn percent(amount: f64) -> Quantity {
        Quantity {
            amount,
            unit: Unit::Percent,
        }
    }
    pub fn count(amount: u64) -> Quantity {
        Quantity {
            amount: amount as f64,
            unit: Unit::Count,
        }
    }
}

impl std::fmt::Display for Quantity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.unit {
            Unit::Ms if self.amount < 10.0 => write!(f, "{:.3} ms", self.amount),
            Unit::Ms => write!(f, "{:.1} ms", self.amount),
            Unit::S => write!(f, "{:.1} s", self.amount),
            Unit::Bytes => write!(f, "{:.2} MB", self.amount / 1e6),
            Unit::Percent => write!(f, "{:.1} %", self.amount),
            Unit::Count => write!(f, "{}", self.amount),
        }
    }
}

/// What a target limits.
#[derive(Debug, Clone, Copy, Serialize)]
#[serde(rename_all = "camelCase", tag = "of")]
pub enum Target {
    /// The row's value must be at most this.
    Value { max: Quantity },
    /// The row's ratio to its baseline must be at most this.
    Ratio { max: f64 },
    /// The row's ratio to its baseline must be at least this (a throughput, say).
    RatioAtLeast { min: f64 },
}

/// How a row compares with its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Target met.
    Pass,
    /// Target missed.
    Missed,
    /// No target: context only.
    Info,
    /// Not measured (the reason is in the row's note).
    Skipped,
}

/// One figure.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// What was measured.
    pub figure: String,
    /// The figure.
    pub value: Option<Quantity>,
    /// Its target, if it has one.
    pub target: Option<Target>,
    /// What the same job costs another way.
    pub baseline: Option<Quantity>,
    /// `value / baseline`.
    pub ratio: Option<f64>,
    /// Against the target.
    pub verdict: Verdict,
    /// How it was measured, or why it was skipped.
    pub note: Option<String>,
}

impl Row {
    /// A figure without a target.
    pub fn info(figure: impl Into<String>, value: Quantity) -> Row {
        Row {
            figure: figure.into(),
            value: Some(value),
            target: None,
            baseline: None,
            ratio: None,
            verdict: Verdict::Info,
            note: None,
        }
    }

    /// A figure this run did not measure, and why.
    pub fn skipped(figure: impl Into<String>, why: impl Into<String>) -> Row {
        Row {
            figure: figure.into(),
            value: None,
            target: None,
            baseline: None,
            ratio: None,
            verdict: Verdict::Skipped,
            note: Some(why.into()),
        }
    }

    /// Adds a baseline and the ratio to it.
    pub fn against(mut self, baseline: Quantity) -> Row {
        if let Some(value) = self.value {
            debug_assert_eq!(value.unit, baseline.unit);
            if baseline.amount > 0.0 {
                self.ratio = Some(value.amount / baseline.amount);
            }
        }
        self.baseline = Some(baseline);
        self.judge()
    }

    /// Sets the target and judges the row.
    pub fn target(mut self, target: Target) -> Row {
        self.target = Some(target);
        self.judge()
    }

    /// Adds a note.
    pub fn note(mut self, note: impl Into<String>) -> Row {
        self.note = Some(note.into());
        self
    }

    fn judge(mut self) -> Row {
        let met = match (self.target, self.value, self.ratio) {
            (Some(Target::Value { max }), Some(value), _) => Some(value.amount <= max.amount),
            (Some(Target::Ratio { max }), _, Some(ratio)) => Some(ratio <= max),
            (Some(Target::RatioAtLeast { min }), _, Some(ratio)) => Some(ratio >= min),
            _ => None,
        };
        self.verdict = match met {
            Some(true) => Verdict::Pass,
            Some(false) => Verdict::Missed,
            None if self.value.is_none() => Verdict::Skipped,
            None => Verdict::Info,
        };
        self
    }
}

/// How a renderer writes what follows its table.
struct Footer {
    notes_heading: &'static str,
    note_prefix: &'static str,
    all_met: &'static str,
    missed_prefix: &'static str,
}

impl Footer {
    const MARKDOWN: Footer = Footer {
        notes_heading: "\n",
        note_prefix: "- ",
        all_met: "All targets met.\n",
        missed_prefix: "**Missed:** ",
    };
    const TEXT: Footer = Footer {
        notes_heading: "\nnotes:\n",
        note_prefix: "  ",
        all_met: "all targets met\n",
        missed_prefix: "MISSED: ",
    };
}

/// A benchmark's results.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    /// Benchmark name.
    pub benchmark: String,
    /// One line saying what was measured where.
    pub context: String,
    /// The figures.
    pub rows: Vec<Row>,
    /// Raw measurements behind the rows.
    pub details: serde_json::Value,
}

impl Report {
    /// Each row's cells: figure, value, target, baseline, ratio, result.
    fn cells(&self) -> Vec<[String; 6]> {
        self.rows
            .iter()
            .map(|row| {
                [
                    row.figure.clone(),
                    row.value.map_or_else(|| "-".into(), |v| v.to_string()),
                    match row.target {
                        None => String::new(),
                        Some(Target::Value { max }) => format!("<= {max}"),
                        Some(Target::Ratio { max }) => format!("ratio <= {max:.2}"),
                        Some(Target::RatioAtLeast { min }) => format!("ratio >= {min:.2}"),
                    },
                    row.baseline.map_or_else(String::new, |b| b.to_string()),
                    row.ratio.map_or_else(String::new, |r| format!("{r:.3}")),
                    match row.verdict {
                        Verdict::Pass => "PASS",
                        Verdict::Missed => "MISSED",
                        Verdict::Info => "info",
                        Verdict::Skipped => "skipped",
                    }
                    .into(),
                ]
            })
            .collect()
    }

    /// The rows that missed their target.
    fn missed(&self) -> Vec<&Row> {
        self.rows
            .iter()
            .filter(|r| r.verdict == Verdict::Missed)
            .collect()
    }

    /// The report as a markdown section: a heading, the context, the table, the notes.
    pub fn render_markdown(&self) -> String {
        let escape = |cell: &str| cell.replace('|', "\\|");
        let mut out = format!(
            "## {}

{}

",
            self.benchmark, self.context
        );
        out += "| figure | value | target | baseline | ratio | result |\n";
        out += "|---|---:|---:|---:|---:|---|\n";
        for row in self.cells() {
            let cells: Vec<String> = row.iter().map(|c| escape(c)).collect();
            let _ = writeln!(out, "| {} |", cells.join(" | "));
        }
        self.write_footer(&mut out, &Footer::MARKDOWN);
        out
    }

    /// The table, then one line per missed target.
    pub fn render(&self) -> String {
        let header = ["figure", "value", "target", "baseline", "ratio", "result"];
        let cells = self.cells();
        let mut widths = header.map(str::len);
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        let line = |cells: &[String]| {
            let mut out = String::new();
            for (i, (cell, w)) in cells.iter().zip(widths).enumerate() {
                let pad = w - cell.chars().count();
                // Numbers right-aligned, words left-aligned.
                if (1..5).contains(&i) {
                    let _ = write!(out, "{}{cell}  ", " ".repeat(pad));
                } else {
                    let _ = write!(out, "{cell}{}  ", " ".repeat(pad));
                }
            }
            out.trim_end().to_string()
        };
        let mut out = format!("{}: {}\n\n", self.benchmark, self.context);
        out += &line(&header.map(String::from));
        out.push('\n');
        out += &"-".repeat(widths.iter().sum::<usize>() + 2 * (widths.len() - 1));
        out.push('\n');
        for row in &cells {
            out += &line(row);
            out.push('\n');
        }
        self.write_footer(&mut out, &Footer::TEXT);
        out
    }

    /// The rows' notes, then one line per missed target (or one saying all were met).
    fn write_footer(&self, out: &mut String, style: &Footer) {
        let notes: Vec<&Row> = self.rows.iter().filter(|r| r.note.is_some()).collect();
        if !notes.is_empty() {
            *out += style.notes_heading;
            for row in notes {
                let note = row.note.as_deref().unwrap_or("");
                let _ = writeln!(out, "{}{}: {note}", style.note_prefix, row.figure);
            }
        }
        let missed = self.missed();
        out.push('\n');
        if missed.is_empty() {
            *out += style.all_met;
        } else {
            for row in missed {
                let _ = writeln!(out, "{}{}", style.missed_prefix, row.figure);
            }
        }
    }

    /// Prints the table on stdout.
    pub fn print(&self) {
        print!("{}", self.render());
    }

    /// Writes the report as pretty JSON, creating parent directories, and says where.
    pub fn write_json(&self, path: &Path) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        write_file(path, &text)
    }
}

/// Writes `text` to `path`, creating parent directories, and says where on stderr.
fn write_file(path: &Path, text: &str) -> anyhow::Result<()> {
    use anyhow::Context;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("write {}", path.display()))?;
    crate::measure::progress(format_args!("wrote {}", path.display()));
    Ok(())
}

/// Writes `reports` as one markdown document: where and when they ran (`machine`, taken
/// before the first), then each table.
pub fn write_markdown(
    path: &Path,
    machine: &[(&str, String)],
    reports: &[Report],
) -> anyhow::Result<()> {
    let mut out = String::from(
        "# Benchmarks\n\nThe latest run of every benchmark, written by \
         `cargo run --release -p openwork-tests --bin openwork-bench -- all --soak --markdown \
         docs/BENCHMARKS.md` (after `cargo build --release -p openwork-packager`). Each \
         figure stands beside its side-by-side baseline from the same run; the targets are \
         the issues'.\n\n",
    );
    for (what, value) in machine {
        let _ = writeln!(out, "- {what}: {value}");
    }
    out.push('\n');
    for report in reports {
        out += &report.render_markdown();
        out.push('\n');
    }
    write_file(path, &out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verdicts() {
        let ratio = |ours, base| {
            Row::info("x", Quantity::ms(ours))
                .against(Quantity::ms(base))
                .target(Target::Ratio { max: 1.2 })
                .verdict
        };
        assert_eq!(ratio(110.0, 100.0), Verdict::Pass);
        assert_eq!(ratio(130.0, 100.0), Verdict::Missed);
        let at_least = |ours, base| {
            Row::info("x", Quantity::count(ours))
                .against(Quantity::count(base))
                .target(Target::RatioAtLeast { min: 0.9 })
                .verdict
        };
        assert_eq!(at_least(95, 100), Verdict::Pass);
        assert_eq!(at_least(85, 100), Verdict::Missed);
        let value = |v| {
            Row::info("x", Quantity::ms(v))
                .target(Target::Value {
                    max: Quantity::ms(5.0),
                })
                .verdict
        };
        assert_eq!(value(4.0), Verdict::Pass);
        assert_eq!(value(6.0), Verdict::Missed);
        let report = Report {
            benchmark: "b".into(),
            context: "c".into(),
            rows: vec![Row::info("slow", Quantity::ms(6.0)).target(Target::Value {
                max: Quantity::ms(5.0),
            })],
            details: serde_json::Value::Null,
        };
        assert!(report.render().contains("MISSED: slow"));
    }

    #[test]
    fn markdown_has_one_table_row_per_figure_and_escapes_pipes() {
        let report = Report {
            benchmark: "serve".into(),
            context: "ctx".into(),
            rows: vec![
                Row::info("start | ready", Quantity::ms(931.0))
                    .against(Quantity::ms(925.0))
                    .target(Target::Ratio { max: 1.05 })
                    .note("median"),
                Row::skipped("orchestrator", "not installed"),
            ],
            details: serde_json::Value::Null,
        };
        let markdown = report.render_markdown();
        let rows: Vec<&str> = markdown.lines().filter(|l| l.starts_with("| ")).collect();
        assert_eq!(rows.len(), 3, "header and two figures:\n{markdown}");
        assert!(rows[1].starts_with("| start \\| ready | 931"), "{markdown}");
        assert!(rows[1].ends_with("| PASS |"), "{markdown}");
        assert!(rows[2].ends_with("| skipped |"), "{markdown}");
        assert!(
            markdown.contains("- orchestrator: not installed"),
            "{markdown}"
        );
        assert!(markdown.contains("All targets met."), "{markdown}");
    }
}
