//! Identical duplicate `content-length` values from a guest are one value.
//!
//! A guest proxying an upstream response may copy its `content-length` and then have
//! its library add the same one again. wasmtime-wasi-http refuses any second
//! `content-length` in `wasi:http/types` fields (`append`, `from-list`, `set`), so such
//! a response failed before the host saw it. RFC 9110 §8.6 lets a recipient treat
//! identical duplicate values as one; this module shadows those three functions of
//! `wasi:http/types@0.2` in the linker: an identical repeat is dropped, anything else
//! (conflicting values included, still refused) goes to wasmtime-wasi-http as before.

use wasmtime::component::{Linker, Resource};
use wasmtime_wasi_http::WasiHttpView;
use wasmtime_wasi_http::p2::bindings::http::types::{HeaderError, HostFields};
use wasmtime_wasi_http::{FieldMap, p2};

use crate::capability::Instance;

/// The `wasi:http/types` instance wasmtime-wasi-http 48 links (0.2.x imports resolve
/// to it).
const TYPES: &str = "wasi:http/types@0.2.12";

fn is_content_length(name: &str) -> bool {
    name.eq_ignore_ascii_case(http::header::CONTENT_LENGTH.as_str())
}

/// A header result as the guest sees it: the error variant, or a trap.
fn guest<T>(r: p2::HeaderResult<T>) -> wasmtime::Result<(Result<T, HeaderError>,)> {
    match r {
        Ok(v) => Ok((Ok(v),)),
        Err(e) => Ok((Err(e.downcast()?),)),
    }
}

/// `entries` without a `content-length` equal to an earlier one.
fn dedupe(entries: Vec<(String, Vec<u8>)>) -> Vec<(String, Vec<u8>)> {
    let mut seen: Option<Vec<u8>> = None;
    let mut out = Vec::with_capacity(entries.len());
    for (name, value) in entries {
        if is_content_length(&name) {
            if seen.as_deref() == Some(value.as_slice()) {
                continue;
            }
            seen.get_or_insert_with(|| value.clone());
        }
        out.push((name, value));
    }
    out
}

/// Shadows `fields.append`, `fields.from-list` and `fields.set` (call after
/// wasmtime-wasi-http's own `add_to_linker`).
pub(super) fn add_to_linker<X: Send + 'static>(
    linker: &mut Linker<Instance<X>>,
) -> anyhow::Result<()> {
    linker.allow_shadowing(true);
    let mut types = linker.instance(TYPES)?;
    types.func_wrap(
        "[method]fields.append",
        |mut store, (fields, name, value): (Resource<FieldMap>, String, Vec<u8>)| {
            let mut view = store.data_mut().http();
            if is_content_length(&name) {
                let map = view.table.get(&fields)?;
                if map
                    .get(http::header::CONTENT_LENGTH)
                    .is_some_and(|v| v.as_bytes() == value.as_slice())
                {
                    return Ok((Ok(()),));
                }
            }
            guest(HostFields::append(&mut view, fields, name, value))
        },
    )?;
    types.func_wrap(
        "[static]fields.from-list",
        |mut store, (entries,): (Vec<(String, Vec<u8>)>,)| {
            let mut view = store.data_mut().http();
            guest(HostFields::from_list(&mut view, dedupe(entries)))
        },
    )?;
    types.func_wrap(
        "[method]fields.set",
        |mut store, (fields, name, mut values): (Resource<FieldMap>, String, Vec<Vec<u8>>)| {
            let mut view = store.data_mut().http();
            if is_content_length(&name) {
                values.dedup();
            }
            guest(HostFields::set(&mut view, fields, name, values))
        },
    )?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn identical_lengths_collapse_and_conflicts_stay() {
        let e = |n: &str, v: &str| (n.to_string(), v.as_bytes().to_vec());
        assert_eq!(
            super::dedupe(vec![
                e("content-length", "5"),
                e("x", "1"),
                e("Content-Length", "5")
            ]),
            vec![e("content-length", "5"), e("x", "1")]
        );
        assert_eq!(
            super::dedupe(vec![e("content-length", "5"), e("content-length", "6")]).len(),
            2,
            "a conflict is left for wasmtime-wasi-http to refuse"
        );
    }
}
