//! Manifest errors that point at the user's file: origin, line, column and field.

use std::fmt;
use std::ops::Range;

/// Where in a manifest something is: the file (or other origin), line and column (1-based).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The manifest's path as the user gave it, or another label (`<admin request>`).
    pub origin: String,
    /// 1-based line, when known.
    pub line: Option<usize>,
    /// 1-based column, when known.
    pub column: Option<usize>,
}

impl Location {
    /// A location from a byte range in the manifest text.
    pub fn from_span(origin: &str, text: &str, span: Option<Range<usize>>) -> Self {
        let (line, column) = match span {
            Some(span) => {
                let (line, column) = line_col(text, span.start);
                (Some(line), Some(column))
            }
            None => (None, None),
        };
        Location {
            origin: origin.to_string(),
            line,
            column,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.origin)?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

/// Why a manifest was refused. Every variant says where; `Invalid` also names the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    /// The manifest file could not be read.
    #[error("{path}: cannot read manifest: {source}")]
    Read {
        /// The path that was read.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Not valid TOML, or a key or type that format version 1 does not allow.
    #[error("{location}: {}{message}", field.as_deref().map(|f| format!("{f}: ")).unwrap_or_default())]
    Syntax {
        /// Where the error is.
        location: Location,
        /// The dotted key path of the innermost field at that location, when one is found.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
    /// Well-formed TOML with a value that is not allowed (bad duration, route, name, ...).
    #[error("{location}: {field}: {message}")]
    Invalid {
        /// Where the value is.
        location: Location,
        /// The dotted key path of the field, e.g. `components.hello.limits.timeout`.
        field: String,
        /// What is wrong.
        message: String,
    },
}

impl ManifestError {
    /// The dotted path of the field the error is about, when known.
    pub fn field(&self) -> Option<&str> {
        match self {
            ManifestError::Read { .. } => None,
            ManifestError::Syntax { field, .. } => field.as_deref(),
            ManifestError::Invalid { field, .. } => Some(field),
        }
    }
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The dotted key path of the innermost key or value whose span contains `offset`.
///
/// Used to name the field in errors that TOML's deserializer reports only by position
/// (type mismatches, missing or unknown keys).
pub(crate) fn field_path_at(text: &str, offset: usize) -> Option<String> {
    use toml::de::{DeTable, DeValue};

    // Table values do not always span their contents (a `[a.b.c]` header spans only
    // the header), so search every table; a key or a scalar value must contain the
    // offset to match.
    fn in_table(table: &DeTable<'_>, offset: usize, path: &mut Vec<String>) -> bool {
        for (key, value) in table {
            path.push(key.get_ref().to_string());
            if key.span().contains(&offset) || in_value(value.get_ref(), value.span(), offset, path)
            {
                return true;
            }
            path.pop();
        }
        false
    }

    fn in_value(
        value: &DeValue<'_>,
        span: std::ops::Range<usize>,
        offset: usize,
        path: &mut Vec<String>,
    ) -> bool {
        match value {
            DeValue::Table(table) => in_table(table, offset, path) || span.contains(&offset),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    if let Some(last) = path.last_mut() {
                        let base = last.clone();
                        last.push_str(&format!("[{i}]"));
                        if in_value(item.get_ref(), item.span(), offset, path) {
                            return true;
                        }
                        *path.last_mut().expect("non-empty") = base;
                    }
                }
                span.contains(&offset)
            }
            _ => span.contains(&offset),
        }
    }

    let doc = DeTable::parse(text).ok()?;
    let mut path = Vec::new();
    if in_table(doc.get_ref(), offset, &mut path) && !path.is_empty() {
        Some(path.join("."))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based() {
        let text = "a = 1\nbb = 2\n";
        assert_eq!(line_col(text, 0), (1, 1));
        assert_eq!(line_col(text, 6), (2, 1));
        assert_eq!(line_col(text, 9), (2, 4));
    }

    #[test]
    fn field_path_finds_nested_keys() {
        let text = "[components.hello.limits]\nmemory = \"64MiB\"\n";
        let offset = text.find("\"64MiB\"").unwrap();
        assert_eq!(
            field_path_at(text, offset).as_deref(),
            Some("components.hello.limits.memory")
        );
    }

    #[test]
    fn field_path_indexes_arrays() {
        let text = "[components.a]\nroutes = [\"GET /x\", 5]\n";
        let offset = text.find('5').unwrap();
        assert_eq!(
            field_path_at(text, offset).as_deref(),
            Some("components.a.routes[1]")
        );
    }
}
