//! hello-p3: an example service written against WASI 0.3 (p3), exporting
//! `wasi:http/handler@0.3.x` through the `wasip3` crate instead of `wstd`/WASI 0.2.
//!
//! It builds with the ordinary `wasm32-wasip2` target; the resulting component imports
//! and exports the 0.3 interfaces and needs a host with component-model-async and WASIp3
//! enabled (e.g. `wasmtime serve -Wcomponent-model-async -Sp3,cli hello_p3.wasm`).
//! Because a p3 handler is an async export, one instance can serve several requests at
//! once and can be reused for later requests.
//!
//! Routes (plain-text answers unless said otherwise):
//!
//! - `GET /hello` answers `hello from wasi 0.3`; `GET /hello/{name}` answers
//!   `hello, NAME`. The name comes from the `wasmhive-param-name` header the host adds
//!   for a route's `{name}` parameter, or else from the last path segment.
//! - `POST /echo` streams the request body back as the response body, chunk by chunk,
//!   without buffering the whole body; the request's `content-type` is copied onto the
//!   response and request trailers are forwarded as response trailers.
//! - `GET /sleep?ms=N` waits N milliseconds (at most 60000) on the async monotonic
//!   clock (`wait-for`), without blocking the instance, then answers `slept N`.
//!   Concurrent sleeps on one instance overlap. A missing or bad `ms` is a 400.
//! - `GET /trap` panics, which traps the instance (the host answers 500).
//! - `GET /trap-after-head` answers a 200 head and the first part of a body, then
//!   panics (the client must see the response fail, not end cleanly).
//! - `GET /spin` loops forever without yielding; only the host's deadline stops it.
//! - `GET /count` increments a guest-global counter and answers its new value, so a
//!   test can tell whether requests were served by the same instance.
//! - `GET /env/{name}` answers the environment variable `name` as the guest sees it,
//!   or a 404 `unset` (a host grants only the variables its manifest lists).
//! - `GET /headers` answers the names of the request's headers, one per line, as the
//!   guest sees them (a host hides hop-by-hop headers).
//! - `GET /set-header?name=N` tries to put header `N` on its response: `refused:
//!   forbidden` (or another reason) if the host's fields refuse it, else `set`.
//! - `GET /fetch?url=U` sends `GET U` through `wasi:http/client` and answers
//!   `status=S` and the body; a failed send is a 502 `error=CODE` (e.g.
//!   `HttpRequestDenied` when the host does not allow the destination).
//! - `GET /alloc?mb=N` allocates and touches N MiB and answers `allocated N`; past the
//!   instance's memory limit the allocation fails and the guest traps.
//! - Any other path is a 404 `not found`; a known path with the wrong method is a 405
//!   `method not allowed` with an `allow` header.

use std::sync::atomic::{AtomicU64, Ordering};

use wasip3::http::types::{ErrorCode, Fields, Method, Request, Response, Trailers};
use wasip3::wit_bindgen::StreamResult;
use wasip3::{wit_future, wit_stream};

wasip3::http::service::export!(HelloP3);

/// Requests served by `/count` in this instance.
static COUNT: AtomicU64 = AtomicU64::new(0);

/// Size of each read from the request body in `/echo`.
const ECHO_CHUNK: usize = 64 * 1024;

/// Upper bound for `/sleep?ms=N`.
const MAX_SLEEP_MS: u64 = 60_000;

struct HelloP3;

impl wasip3::exports::http::handler::Guest for HelloP3 {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let method = request.get_method();
        let path_with_query = request.get_path_with_query().unwrap_or_else(|| "/".into());
        let (path, query) = match path_with_query.split_once('?') {
            Some((path, query)) => (path.to_string(), query.to_string()),
            None => (path_with_query, String::new()),
        };

        match path.as_str() {
            "/hello" => only(method, Method::Get, "GET", || {
                text(200, "hello from wasi 0.3\n".into())
            }),
            "/echo" => match method {
                Method::Post => Ok(echo(request)),
                _ => Ok(method_not_allowed("POST")),
            },
            "/sleep" => match method {
                Method::Get => Ok(sleep(&query).await),
                _ => Ok(method_not_allowed("GET")),
            },
            "/trap-after-head" => only(method, Method::Get, "GET", trap_after_head),
            "/trap" => only(method, Method::Get, "GET", || {
                panic!("hello-p3: /trap requested")
            }),
            "/spin" => only(method, Method::Get, "GET", || {
                // Busy forever without yielding: only the host's deadline (epoch
                // interruption) can stop it.
                let mut x = 0u64;
                loop {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
            }),
            "/count" => only(method, Method::Get, "GET", || {
                let n = COUNT.fetch_add(1, Ordering::SeqCst) + 1;
                text(200, format!("{n}\n"))
            }),
            "/headers" => only(method, Method::Get, "GET", || {
                let names: Vec<String> = request
                    .get_headers()
                    .copy_all()
                    .into_iter()
                    .map(|(name, _)| name)
                    .collect();
                text(200, format!("{}\n", names.join("\n")))
            }),
            "/set-header" => only(method, Method::Get, "GET", || {
                set_header(query_param(&query, "name").unwrap_or_default())
            }),
            "/fetch" => match method {
                Method::Get => Ok(fetch(query_param(&query, "url").unwrap_or_default()).await),
                _ => Ok(method_not_allowed("GET")),
            },
            "/alloc" => only(method, Method::Get, "GET", || {
                let bytes = query_param(&query, "mb")
                    .and_then(|v| v.parse::<usize>().ok())
                    .and_then(|mb| mb.checked_mul(1 << 20));
                match bytes {
                    Some(bytes) => {
                        let mut block = vec![0u8; bytes];
                        // Touch every page so the memory is really used.
                        for i in (0..block.len()).step_by(4096) {
                            block[i] = 1;
                        }
                        text(
                            200,
                            format!("allocated {}\n", std::hint::black_box(&block).len() >> 20),
                        )
                    }
                    None => text(400, "expected ?mb=N\n".into()),
                }
            }),
            _ if path.starts_with("/env/") => {
                let name = path.trim_start_matches("/env/").to_string();
                only(method, Method::Get, "GET", || match std::env::var(&name) {
                    Ok(value) => text(200, format!("{value}\n")),
                    Err(_) => text(404, "unset\n".into()),
                })
            }
            _ => match path.strip_prefix("/hello/") {
                Some(segment) if !segment.is_empty() && !segment.contains('/') => {
                    let name = param_name(&request).unwrap_or_else(|| segment.to_string());
                    only(method, Method::Get, "GET", || {
                        text(200, format!("hello, {name}\n"))
                    })
                }
                _ => Ok(text(404, "not found\n".into())),
            },
        }
    }
}

/// Runs `respond` when `method` is `expected`, else answers 405.
fn only(
    method: Method,
    expected: Method,
    allow: &str,
    respond: impl FnOnce() -> Response,
) -> Result<Response, ErrorCode> {
    if std::mem::discriminant(&method) == std::mem::discriminant(&expected) {
        Ok(respond())
    } else {
        Ok(method_not_allowed(allow))
    }
}

fn method_not_allowed(allow: &str) -> Response {
    text_with(
        405,
        "method not allowed\n".into(),
        &[("allow", allow.as_bytes())],
    )
}

/// The `{name}` route parameter as passed by the wasmhive host, if any.
fn param_name(request: &Request) -> Option<String> {
    let values = request.get_headers().get("wasmhive-param-name");
    let value = values.into_iter().next()?;
    String::from_utf8(value).ok().filter(|v| !v.is_empty())
}

/// A complete plain-text response; the body is written by a task that runs after the
/// handler returns, once the host starts reading it.
fn text(status: u16, body: String) -> Response {
    text_with(status, body, &[])
}

/// Like [`text`], with extra headers. A response's headers become immutable once the
/// response exists, so they all have to be in place before `Response::new`.
fn text_with(status: u16, body: String, extra: &[(&str, &[u8])]) -> Response {
    let mut entries = vec![
        (
            "content-type".to_string(),
            b"text/plain; charset=utf-8".to_vec(),
        ),
        (
            "content-length".to_string(),
            body.len().to_string().into_bytes(),
        ),
    ];
    entries.extend(
        extra
            .iter()
            .map(|(name, value)| (name.to_string(), value.to_vec())),
    );
    let headers = Fields::from_list(&entries).expect("headers used here are valid");
    let (mut body_tx, body_rx) = wit_stream::new();
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    drop(trailers_tx);
    let (response, _sent) = Response::new(headers, Some(body_rx), trailers_rx);
    response
        .set_status_code(status)
        .expect("status codes used here are valid");
    wasip3::spawn_local(async move {
        // If the client went away the rest is simply dropped.
        let _ = body_tx.write_all(body.into_bytes()).await;
    });
    response
}

/// `POST /echo`: the response body is fed from the request body as it arrives.
fn echo(request: Request) -> Response {
    let content_type = request.get_headers().get("content-type");
    let headers = Fields::new();
    if !content_type.is_empty() {
        let _ = headers.set("content-type", &content_type);
    }

    let (request_done_tx, request_done_rx) = wit_future::new(|| Ok(()));
    let (mut request_body, request_trailers) = Request::consume_body(request, request_done_rx);

    let (mut body_tx, body_rx) = wit_stream::new();
    let (trailers_tx, trailers_rx) =
        wit_future::new::<Result<Option<Trailers>, ErrorCode>>(|| Ok(None));
    let (response, _sent) = Response::new(headers, Some(body_rx), trailers_rx);

    wasip3::spawn_local(async move {
        loop {
            let (result, chunk) = request_body.read(Vec::with_capacity(ECHO_CHUNK)).await;
            match result {
                StreamResult::Complete(_) => {
                    if chunk.is_empty() {
                        continue;
                    }
                    let unwritten = body_tx.write_all(chunk).await;
                    if !unwritten.is_empty() {
                        // The client stopped reading; stop copying.
                        let _ = request_done_tx.write(Ok(())).await;
                        return;
                    }
                }
                StreamResult::Dropped | StreamResult::Cancelled => break,
            }
        }
        // The whole body went through: close the response body, then hand on the
        // request's trailers (or its error) as the response's.
        drop(body_tx);
        let trailers = request_trailers.await;
        let _ = request_done_tx.write(Ok(())).await;
        let _ = trailers_tx.write(trailers).await;
    });
    response
}

/// A 200 head and part of a body, then a trap.
fn trap_after_head() -> Response {
    let (mut body_tx, body_rx) = wit_stream::new();
    let (_trailers_tx, trailers_rx) =
        wit_future::new::<Result<Option<Trailers>, ErrorCode>>(|| Ok(None));
    let (response, _sent) = Response::new(Fields::new(), Some(body_rx), trailers_rx);
    wasip3::spawn_local(async move {
        let _ = body_tx
            .write_all(b"the first part of the body".to_vec())
            .await;
        panic!("hello-p3: /trap-after-head traps after its response head");
    });
    response
}

/// The value of `key` in a query string (not percent-decoded beyond `%3A` and `%2F`,
/// which is enough for the URLs tests pass).
fn query_param(query: &str, key: &str) -> Option<String> {
    query
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.replace("%3A", ":").replace("%2F", "/"))
}

/// `GET /set-header?name=N`: a response carrying header `N`, if the host allows it.
fn set_header(name: String) -> Response {
    match Fields::from_list(&[(name.clone(), b"1".to_vec())]) {
        Ok(_) => text_with(200, "set\n".into(), &[(name.as_str(), b"1")]),
        Err(e) => text(
            200,
            format!(
                "refused: {}\n",
                variant_name(&format!("{e:?}")).to_lowercase()
            ),
        ),
    }
}

/// `GET /fetch?url=U`: an outgoing `GET U` through `wasi:http/client`.
async fn fetch(url: String) -> Response {
    let Some((scheme, rest)) = url.split_once("://") else {
        return text(400, "expected ?url=http://host/path\n".into());
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
    drop(trailers_tx);
    let (request, _sent) = Request::new(Fields::new(), None, trailers_rx, None);
    let scheme = match scheme {
        "https" => wasip3::http::types::Scheme::Https,
        _ => wasip3::http::types::Scheme::Http,
    };
    if request.set_scheme(Some(&scheme)).is_err()
        || request.set_authority(Some(authority)).is_err()
        || request.set_path_with_query(Some(path)).is_err()
    {
        return text(400, "invalid url\n".into());
    }
    let response = match wasip3::http::client::send(request).await {
        Ok(response) => response,
        Err(code) => return text(502, format!("error={}", variant_name(&format!("{code:?}")))),
    };
    let status = response.get_status_code();
    let (done_tx, done_rx) = wit_future::new(|| Ok(()));
    let (mut body, _trailers) = Response::consume_body(response, done_rx);
    let mut all = Vec::new();
    loop {
        let (result, chunk) = body.read(Vec::with_capacity(ECHO_CHUNK)).await;
        all.extend_from_slice(&chunk);
        match result {
            StreamResult::Complete(_) => {}
            StreamResult::Dropped | StreamResult::Cancelled => break,
        }
    }
    drop(done_tx);
    text(
        200,
        format!("status={status}\n{}", String::from_utf8_lossy(&all)),
    )
}

/// The variant name in a `Debug` rendering such as `ErrorCode::HttpRequestDenied` or
/// `ErrorCode::DnsError(..)`: `HttpRequestDenied`, `DnsError`.
fn variant_name(debug: &str) -> String {
    let tail = debug.split_once("::").map_or(debug, |(_, t)| t);
    tail.split(|c: char| !c.is_alphanumeric())
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `GET /sleep?ms=N`.
async fn sleep(query: &str) -> Response {
    let ms = query_param(query, "ms").and_then(|value| value.parse::<u64>().ok());
    match ms {
        Some(ms) if ms <= MAX_SLEEP_MS => {
            wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
            text(200, format!("slept {ms}\n"))
        }
        _ => text(
            400,
            format!("expected ?ms=N with N between 0 and {MAX_SLEEP_MS}\n"),
        ),
    }
}
