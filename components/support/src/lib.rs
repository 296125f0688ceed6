//! Helpers for fixtures written against the raw `wasi:http@0.2` bindings.

pub use wasip2;
use wasip2::http::types::{
    ErrorCode, Fields, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use wasip2::io::streams::StreamError;

/// The method's name, upper case (`GET`, or an extension method as sent).
pub fn method_name(method: Method) -> String {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(m) => return m,
    }
    .to_string()
}

/// Largest chunk written to an output stream at once.
pub const CHUNK: usize = 4096;

/// Responds with `status`, a content type and `body`.
pub fn respond(out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers =
        Fields::from_list(&[("content-type".to_string(), content_type.as_bytes().to_vec())])
            .expect("valid header");
    let response = OutgoingResponse::new(headers);
    response.set_status_code(status).expect("valid status");
    let outgoing = response.body().expect("body once");
    ResponseOutparam::set(out, Ok(response));
    let stream = outgoing.write().expect("stream once");
    for chunk in body.chunks(CHUNK) {
        stream.blocking_write_and_flush(chunk).expect("write body");
    }
    drop(stream);
    OutgoingBody::finish(outgoing, None).expect("finish body");
}

/// Responds with a plain-text body.
pub fn text(out: ResponseOutparam, status: u16, body: &str) {
    respond(out, status, "text/plain; charset=utf-8", body.as_bytes());
}

/// Answers the request with an error code instead of a response.
pub fn fail(out: ResponseOutparam, code: ErrorCode) {
    ResponseOutparam::set(out, Err(code));
}

/// The request's path (without the query).
pub fn path(request: &IncomingRequest) -> String {
    let pq = request.path_with_query().unwrap_or_default();
    pq.split('?').next().unwrap_or("/").to_string()
}

/// The value of query parameter `name`, if present.
pub fn query(request: &IncomingRequest, name: &str) -> Option<String> {
    let pq = request.path_with_query()?;
    let (_, q) = pq.split_once('?')?;
    q.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
        (k == name).then(|| v.to_string())
    })
}

/// Decodes `%XX` escapes (invalid ones are kept as they are).
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Reads the whole request body.
pub fn read_body(request: &IncomingRequest) -> Vec<u8> {
    let body = request.consume().expect("body once");
    let stream = body.stream().expect("stream once");
    let mut all = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => all.extend_from_slice(&chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => {
                panic!("body read failed: {}", e.to_debug_string())
            }
        }
    }
    all
}

/// Minimal JSON string escaping.
pub fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}
