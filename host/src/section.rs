//! Reading a manifest's tables: where a value is (file, line, column, dotted field),
//! the errors that say so, and the value parsers every section shares.
//!
//! A manifest is parsed once into a spanned TOML tree. Each part of the host that owns
//! keys of a table (the manifest's core keys, each capability, each trigger) takes its
//! keys from a [`Table`] straight into the types the host uses, checking values as it
//! goes; an error points at the value's line and names its dotted field. A key that no
//! owner takes is an error naming it and the keys that are allowed, so a typo never
//! silently does nothing. One table may be shared by several owners (each takes its
//! own keys, see [`Table::table`]).
//!
//! A leaf: it imports nothing from the host.

use std::fmt;
use std::ops::Range;
use std::time::Duration;

use serde::de::DeserializeOwned;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

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

/// Why a manifest (or host configuration) was refused. Every variant says where;
/// `Invalid` also names the field.
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
    /// Not valid TOML, or a key or type the format does not allow.
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

/// The text a table was parsed from, and how to name it in errors.
#[derive(Debug, Clone, Copy)]
pub struct Source<'a> {
    /// The whole document.
    pub text: &'a str,
    /// Its origin (usually the file path).
    pub origin: &'a str,
}

impl Source<'_> {
    /// The location of a byte range.
    pub fn location(&self, span: Option<Range<usize>>) -> Location {
        Location::from_span(self.origin, self.text, span)
    }

    /// An error from TOML's parser or deserializer, naming the innermost field at its
    /// position when one is found.
    fn toml_error(&self, e: &toml::de::Error) -> ManifestError {
        let span = e.span();
        let field = span.clone().and_then(|s| field_path_at(self.text, s.start));
        ManifestError::Syntax {
            location: self.location(span),
            field,
            message: e.message().trim().to_string(),
        }
    }
}

/// One table of a manifest, from which its owners take their keys.
pub struct Table<'a> {
    src: Source<'a>,
    /// Dotted path of this table (`""` for the document).
    path: String,
    span: Range<usize>,
    entries: DeTable<'a>,
    /// Keys some owner asked for (present or not), for the unknown-key message.
    known: Vec<&'static str>,
    /// Sub-tables shared by several owners, finished with this one.
    shared: Vec<(&'static str, Table<'a>)>,
}

impl<'a> Table<'a> {
    /// Parses a whole document.
    pub fn parse(src: Source<'a>) -> Result<Table<'a>, ManifestError> {
        let root = DeTable::parse(src.text).map_err(|e| src.toml_error(&e))?;
        let span = root.span();
        Ok(Table {
            src,
            path: String::new(),
            span,
            entries: root.into_inner(),
            known: Vec::new(),
            shared: Vec::new(),
        })
    }

    /// The document this table is part of.
    pub fn source(&self) -> Source<'a> {
        self.src
    }

    /// This table's dotted path (`""` for the document).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Where this table is written (its header, or the inline table).
    pub fn span(&self) -> Range<usize> {
        self.span.clone()
    }

    /// The dotted path of `key` in this table.
    pub fn field(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    /// An error about the value at `span`, whose field is `key` in this table (`key`
    /// may continue with a path or index, e.g. `routes[2]`).
    pub fn invalid(
        &self,
        span: Range<usize>,
        key: &str,
        message: impl Into<String>,
    ) -> ManifestError {
        ManifestError::Invalid {
            location: self.src.location(Some(span)),
            field: self.field(key),
            message: message.into(),
        }
    }

    /// Takes `key` (if present) as a `T`, keeping spans for `Spanned` parts. A value of
    /// the wrong shape is an error naming its field and line.
    pub fn take<T: DeserializeOwned>(
        &mut self,
        key: &'static str,
    ) -> Result<Option<T>, ManifestError> {
        self.known.push(key);
        let Some(value) = self.entries.remove(key) else {
            return Ok(None);
        };
        T::deserialize(toml::de::ValueDeserializer::from(value))
            .map(Some)
            .map_err(|e| self.src.toml_error(&e))
    }

    /// Takes `key` as a `T`, or `T::default()` when absent.
    pub fn take_or_default<T: DeserializeOwned + Default>(
        &mut self,
        key: &'static str,
    ) -> Result<T, ManifestError> {
        Ok(self.take(key)?.unwrap_or_default())
    }

    /// Takes `key`, which must be present.
    pub fn require<T: DeserializeOwned>(&mut self, key: &'static str) -> Result<T, ManifestError> {
        match self.take(key)? {
            Some(v) => Ok(v),
            None => Err(self.missing(key)),
        }
    }

    /// The error for a required `key` this table lacks (pointing at the table).
    pub fn missing(&self, key: &str) -> ManifestError {
        ManifestError::Syntax {
            location: self.src.location(Some(self.span.clone())),
            field: (!self.path.is_empty()).then(|| self.path.clone()),
            message: format!("missing field `{key}`"),
        }
    }

    /// The sub-table at `key`, if present. Several owners may ask for the same
    /// sub-table and take their own keys from it; it is checked for unknown keys when
    /// this table is finished.
    pub fn table(&mut self, key: &'static str) -> Result<Option<&mut Table<'a>>, ManifestError> {
        self.known.push(key);
        if let Some(i) = self.shared.iter().position(|(k, _)| *k == key) {
            return Ok(Some(&mut self.shared[i].1));
        }
        let Some(value) = self.entries.remove(key) else {
            return Ok(None);
        };
        let child = self.child(key.to_string(), value)?;
        self.shared.push((key, child));
        Ok(self.shared.last_mut().map(|(_, t)| t))
    }

    /// Whether `key` is present and holds a table (for keys that take either a value
    /// or a table).
    pub fn is_table(&self, key: &str) -> bool {
        self.entries
            .get(key)
            .is_some_and(|v| matches!(v.get_ref(), DeValue::Table(_)))
    }

    /// The tables under `key` by name (`[components.NAME]`, `[calls.NAME]`), in name
    /// order. The caller finishes each.
    pub fn tables(
        &mut self,
        key: &'static str,
    ) -> Result<Vec<(Spanned<String>, Table<'a>)>, ManifestError> {
        self.known.push(key);
        let Some(value) = self.entries.remove(key) else {
            return Ok(Vec::new());
        };
        let parent = self.child(key.to_string(), value)?;
        let mut out = Vec::new();
        for (name, value) in parent.entries {
            let (span, name) = (name.span(), name.into_inner().into_owned());
            let table = self.child_of(&parent.path, &name, value)?;
            out.push((Spanned::new(span, name), table));
        }
        Ok(out)
    }

    fn child(&self, key: String, value: Spanned<DeValue<'a>>) -> Result<Table<'a>, ManifestError> {
        self.child_of(&self.path, &key, value)
    }

    fn child_of(
        &self,
        parent: &str,
        key: &str,
        value: Spanned<DeValue<'a>>,
    ) -> Result<Table<'a>, ManifestError> {
        let path = if parent.is_empty() {
            key.to_string()
        } else {
            format!("{parent}.{key}")
        };
        let span = value.span();
        match value.into_inner() {
            DeValue::Table(entries) => Ok(Table {
                src: self.src,
                path,
                span,
                entries,
                known: Vec::new(),
                shared: Vec::new(),
            }),
            _ => Err(ManifestError::Syntax {
                location: self.src.location(Some(span)),
                field: Some(path),
                message: "expected a table".into(),
            }),
        }
    }

    /// Checks that every key was taken by an owner (and likewise in shared sub-tables).
    pub fn finish(mut self) -> Result<(), ManifestError> {
        for (_, child) in std::mem::take(&mut self.shared) {
            child.finish()?;
        }
        if let Some((key, _)) = self.entries.iter().next() {
            let mut known = self.known.clone();
            known.sort_unstable();
            known.dedup();
            let expected = match known.as_slice() {
                [] => "no keys here".to_string(),
                [one] => format!("expected `{one}`"),
                many => format!(
                    "expected one of {}",
                    many.iter()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            return Err(ManifestError::Syntax {
                location: self.src.location(Some(key.span())),
                field: Some(self.field(key.get_ref())),
                message: format!("unknown field `{}`, {expected}", key.get_ref()),
            });
        }
        Ok(())
    }

    /// Takes `key` as a duration (`"300ms"`, `"10s"`).
    pub fn duration(&mut self, key: &'static str) -> Result<Option<Duration>, ManifestError> {
        self.parsed(key, parse_duration)
    }

    /// Takes `key` as a byte size (`"64MiB"`).
    pub fn size(&mut self, key: &'static str) -> Result<Option<u64>, ManifestError> {
        self.parsed(key, parse_size)
    }

    /// Takes `key` as a whole number in `min..=max`.
    pub fn count(
        &mut self,
        key: &'static str,
        min: i64,
        max: i64,
    ) -> Result<Option<u32>, ManifestError> {
        Ok(self.count_spanned(key, min, max)?.map(Spanned::into_inner))
    }

    /// [`Table::count`], keeping where the number is written.
    pub fn count_spanned(
        &mut self,
        key: &'static str,
        min: i64,
        max: i64,
    ) -> Result<Option<Spanned<u32>>, ManifestError> {
        let Some(v) = self.take::<Spanned<i64>>(key)? else {
            return Ok(None);
        };
        let n = *v.get_ref();
        if n < min || n > max || u32::try_from(n).is_err() {
            return Err(self.invalid(
                v.span(),
                key,
                format!("must be a whole number from {min} to {max}"),
            ));
        }
        Ok(Some(Spanned::new(v.span(), n as u32)))
    }

    /// Takes `key` as a string and parses it with `parse`, whose error is the message.
    pub fn parsed<T>(
        &mut self,
        key: &'static str,
        parse: impl FnOnce(&str) -> Result<T, String>,
    ) -> Result<Option<T>, ManifestError> {
        let Some(v) = self.take::<Spanned<String>>(key)? else {
            return Ok(None);
        };
        parse(v.get_ref())
            .map(Some)
            .map_err(|why| self.invalid(v.span(), key, why))
    }

    /// Takes `key` as a list of strings, each parsed with `parse` (errors name the
    /// item: `key[i]`).
    pub fn list<T>(
        &mut self,
        key: &'static str,
        mut parse: impl FnMut(&str) -> Result<T, String>,
    ) -> Result<Vec<T>, ManifestError> {
        let items: Vec<Spanned<String>> = self.take_or_default(key)?;
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            out.push(
                parse(item.get_ref())
                    .map_err(|why| self.invalid(item.span(), &format!("{key}[{i}]"), why))?,
            );
        }
        Ok(out)
    }
}

/// Parses a human duration: `"300ms"`, `"10s"`, `"1m 30s"`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let d = humantime::parse_duration(text.trim()).map_err(|e| {
        format!("invalid duration {text:?} ({e}); write e.g. \"300ms\", \"10s\", \"2m\"")
    })?;
    if d.is_zero() {
        return Err(format!("duration {text:?} must be greater than zero"));
    }
    Ok(d)
}

/// Parses a byte size: `"64MiB"`, `"512KiB"`, `"1GiB"`, `"1000000"`.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let size: bytesize::ByteSize = text
        .trim()
        .parse()
        .map_err(|e| format!("invalid size {text:?} ({e}); write e.g. \"64MiB\""))?;
    Ok(size.as_u64())
}

/// App and component names: DNS-label style, because a component's name is also the
/// host part of mesh calls (`http://users/...`).
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid name {name:?}: use 1 to 63 lowercase letters, digits and '-', starting with a letter"
        ))
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
/// (type mismatches, unknown keys inside a typed value).
pub(crate) fn field_path_at(text: &str, offset: usize) -> Option<String> {
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
        span: Range<usize>,
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

    fn table(text: &str) -> Table<'_> {
        Table::parse(Source {
            text,
            origin: "t.toml",
        })
        .unwrap()
    }

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

    #[test]
    fn owners_take_their_keys_and_the_rest_is_refused() {
        let mut t = table("[a]\nx = 1\ny = \"2s\"\n[a.inner]\nz = true\nzz = 1\n");
        let a = t.table("a").unwrap().unwrap();
        assert_eq!(a.take::<i64>("x").unwrap(), Some(1));
        assert_eq!(a.duration("y").unwrap(), Some(Duration::from_secs(2)));
        // Two owners share `inner`: each takes its key; `zz` is nobody's.
        assert_eq!(
            a.table("inner")
                .unwrap()
                .unwrap()
                .take::<bool>("z")
                .unwrap(),
            Some(true)
        );
        assert!(a.table("inner").unwrap().is_some());
        let e = t.finish().unwrap_err().to_string();
        assert!(
            e.starts_with("t.toml:6:1: a.inner.zz: unknown field `zz`, expected `z`"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_field_and_line() {
        let mut t = table("[a]\nn = 0\nd = \"soon\"\ns = [\"ok\", \"bad\"]\n");
        let a = t.table("a").unwrap().unwrap();
        let e = a.count("n", 1, 10).unwrap_err().to_string();
        assert_eq!(e, "t.toml:2:5: a.n: must be a whole number from 1 to 10");
        let e = a.duration("d").unwrap_err().to_string();
        assert!(e.starts_with("t.toml:3:5: a.d: invalid duration"), "{e}");
        let e = a
            .list("s", |s| if s == "ok" { Ok(()) } else { Err("no".into()) })
            .unwrap_err()
            .to_string();
        assert_eq!(e, "t.toml:4:12: a.s[1]: no");
        let e = a
            .take::<String>("missing")
            .map(|_| ())
            .and(a.require::<String>("missing").map(|_| ()));
        assert!(
            e.unwrap_err()
                .to_string()
                .contains("missing field `missing`")
        );
    }

    #[test]
    fn named_tables_keep_their_paths() {
        let mut t = table("[components.one]\nsource = \"a\"\n[components.two]\nsrc = \"b\"\n");
        let components = t.tables("components").unwrap();
        let names: Vec<_> = components
            .iter()
            .map(|(n, _)| n.get_ref().clone())
            .collect();
        assert_eq!(names, ["one", "two"]);
        let mut it = components.into_iter();
        let (_, mut one) = it.next().unwrap();
        assert_eq!(one.require::<String>("source").unwrap(), "a");
        one.finish().unwrap();
        let (_, mut two) = it.next().unwrap();
        let e = two.require::<String>("source").unwrap_err().to_string();
        assert!(e.contains("components.two: missing field `source`"), "{e}");
        let e = two.finish().unwrap_err().to_string();
        assert!(e.contains("components.two.src: unknown field `src`"), "{e}");
        t.finish().unwrap();
    }

    #[test]
    fn sizes_and_durations_parse() {
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert!(parse_size("lots").is_err());
        assert!(parse_duration("0s").is_err());
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
    }
}
