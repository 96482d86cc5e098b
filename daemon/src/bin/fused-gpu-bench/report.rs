//! The result table: one row per measurement or check, printed last (the lent machine's reply
//! carries the end of the output) and optionally written as JSON lines.

use std::io::Write;
use std::path::Path;

#[derive(Debug, Clone)]
pub struct Row {
    pub part: &'static str,
    pub name: String,
    pub value: f64,
    pub unit: &'static str,
    /// `Some(pass)` for a correctness check.
    pub pass: Option<bool>,
    pub note: String,
}

#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
}

impl Report {
    pub fn value(
        &mut self,
        part: &'static str,
        name: &str,
        value: f64,
        unit: &'static str,
        note: &str,
    ) {
        println!("{part:>8} | {name:<52} {value:>12.4} {unit:<8} {note}");
        self.rows.push(Row {
            part,
            name: name.to_owned(),
            value,
            unit,
            pass: None,
            note: note.to_owned(),
        });
    }

    /// A relative error that must be finite and at most `tol`.
    pub fn check(&mut self, part: &'static str, name: &str, err: f64, tol: f64) {
        let pass = err.is_finite() && err <= tol;
        let note = format!("tol {tol:.0e} {}", if pass { "PASS" } else { "FAIL" });
        println!("{part:>8} | {name:<52} {err:>12.3e} rel_l2   {note}");
        self.rows.push(Row {
            part,
            name: name.to_owned(),
            value: err,
            unit: "rel_l2",
            pass: Some(pass),
            note,
        });
    }

    pub fn failures(&self) -> usize {
        self.rows.iter().filter(|r| r.pass == Some(false)).count()
    }

    pub fn print(&self) {
        println!("\n==== fused-gpu-bench results ====");
        for r in &self.rows {
            let value = if r.unit == "rel_l2" {
                format!("{:.3e}", r.value)
            } else {
                format!("{:.2}", r.value)
            };
            println!(
                "{:<8} {:<52} {:>12} {:<8} {}",
                r.part, r.name, value, r.unit, r.note
            );
        }
    }

    pub fn write_json(&self, path: &Path) -> std::io::Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        for r in &self.rows {
            let line = serde_json::json!({
                "part": r.part, "name": r.name, "value": r.value, "unit": r.unit,
                "pass": r.pass, "note": r.note,
            });
            writeln!(file, "{line}")?;
        }
        Ok(())
    }
}

/// The first index of the largest logit, as a token id.
pub fn argmax(row: &[f32]) -> u32 {
    fused_daemon::model::sampling::argmax(row) as u32
}
