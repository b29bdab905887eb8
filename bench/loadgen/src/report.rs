//! One JSON object per run, on one line: what scripts/bench.sh reads.

use std::fmt::Write;

/// A JSON object written field by field (keys are our own identifiers; only
/// string values need escaping).
pub(crate) struct Report(String);

impl Report {
    pub(crate) fn new() -> Self {
        Self(String::from("{"))
    }

    fn key(&mut self, k: &str) -> &mut String {
        if self.0.len() > 1 {
            self.0.push(',');
        }
        let _ = write!(self.0, "\"{k}\":");
        &mut self.0
    }

    pub(crate) fn str(&mut self, k: &str, v: &str) -> &mut Self {
        let out = self.key(k);
        out.push('"');
        for ch in v.chars() {
            match ch {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                c if (c as u32) < 0x20 => {
                    let _ = write!(out, "\\u{:04x}", c as u32);
                }
                c => out.push(c),
            }
        }
        out.push('"');
        self
    }

    pub(crate) fn bool(&mut self, k: &str, v: bool) -> &mut Self {
        let _ = write!(self.key(k), "{v}");
        self
    }

    pub(crate) fn int(&mut self, k: &str, v: impl Into<Option<u64>>) -> &mut Self {
        match v.into() {
            Some(v) => {
                let _ = write!(self.key(k), "{v}");
            }
            None => self.key(k).push_str("null"),
        }
        self
    }

    /// A number rounded to `decimals` places; `None` and non-finite values are null.
    pub(crate) fn num(&mut self, k: &str, v: impl Into<Option<f64>>, decimals: usize) -> &mut Self {
        match v.into().filter(|v| v.is_finite()) {
            Some(v) => {
                let _ = write!(self.key(k), "{v:.decimals$}");
            }
            None => self.key(k).push_str("null"),
        }
        self
    }

    pub(crate) fn nums(&mut self, k: &str, v: &[f64]) -> &mut Self {
        let list: Vec<String> = v.iter().map(|x| format!("{x:.1}")).collect();
        let _ = write!(self.key(k), "[{}]", list.join(","));
        self
    }

    pub(crate) fn finish(&mut self) -> String {
        let mut s = std::mem::take(&mut self.0);
        s.push('}');
        s
    }
}
