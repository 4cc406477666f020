//! Problems found in a config: how bad, where (file and line, or JSON
//! path), what is wrong and what to change. The bottom of the model's
//! layers: the parsers, the validator and the linter report through it.
//! Imports only the model's vocabulary types.

use std::{fmt, path::Path};

use serde::Serialize;

use super::types::{Direction, Origin};

/// How bad a problem is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The config still loads; something probably does not do what was meant.
    Warning,
    /// The config is invalid.
    Error,
}

/// One thing wrong with a config, with where it is and what to change.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Problem {
    /// Error or warning.
    pub severity: Severity,
    /// File and line or JSON path.
    pub origin: Origin,
    /// The group concerned.
    pub group: Option<String>,
    /// The rule direction concerned.
    pub direction: Option<Direction>,
    /// The rule's index in its list (0-based, as written).
    pub rule: Option<usize>,
    /// The interface concerned (`NAME` or `NAME@NETNS`).
    pub interface: Option<String>,
    /// The offending field.
    pub field: Option<&'static str>,
    /// What is wrong.
    pub message: String,
    /// What to change.
    pub fix: String,
}

impl Problem {
    /// An error with a message and a fix.
    pub fn error(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            origin: Origin::default(),
            group: None,
            direction: None,
            rule: None,
            interface: None,
            field: None,
            message: message.into(),
            fix: fix.into(),
        }
    }

    /// A warning with a message and a fix.
    pub fn warning(message: impl Into<String>, fix: impl Into<String>) -> Self {
        Self {
            severity: Severity::Warning,
            ..Self::error(message, fix)
        }
    }

    /// Sets the file.
    pub fn in_file(mut self, file: Option<&Path>) -> Self {
        self.origin.file = file.map(Path::to_path_buf);
        self
    }

    /// Sets the origin.
    pub fn at(mut self, origin: &Origin) -> Self {
        self.origin = origin.clone();
        self
    }

    /// Sets the group.
    pub fn group(mut self, id: &str) -> Self {
        self.group = Some(id.to_owned());
        self
    }

    /// Sets direction and rule index.
    pub fn rule(mut self, direction: Direction, index: usize) -> Self {
        self.direction = Some(direction);
        self.rule = Some(index);
        self
    }

    /// Sets the interface.
    pub fn iface(mut self, key: &str) -> Self {
        self.interface = Some(key.to_owned());
        self
    }

    /// Sets the field.
    pub fn field(mut self, f: &'static str) -> Self {
        self.field = Some(f);
        self
    }

    /// Whether this is an error.
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let loc = self.origin.to_string();
        if !loc.is_empty() {
            write!(f, "{loc}: ")?;
        }
        f.write_str(match self.severity {
            Severity::Error => "error: ",
            Severity::Warning => "warning: ",
        })?;
        let mut ctx = vec![];
        if let Some(g) = &self.group {
            ctx.push(format!("group {g}"));
        }
        match (self.direction, self.rule) {
            (Some(d), Some(i)) => ctx.push(format!("{d} rule {i}")),
            (Some(d), None) => ctx.push(d.to_string()),
            _ => {}
        }
        if let Some(i) = &self.interface {
            ctx.push(format!("interface {i}"));
        }
        if let Some(fld) = self.field {
            ctx.push(format!("`{fld}`"));
        }
        if !ctx.is_empty() {
            write!(f, "{}: ", ctx.join(", "))?;
        }
        write!(f, "{}; {}", self.message, self.fix)
    }
}
