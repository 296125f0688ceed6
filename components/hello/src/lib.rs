//! hello: the smallest useful service.
//!
//! `GET /hello` answers `hello, world`; `GET /hello/{name}` answers `hello, NAME`. The
//! greeting comes from the `GREETING` environment variable when the manifest grants it.
//! The name comes from the `wasmhive-param-name` header the host adds for the route's
//! `{name}` parameter, or from the last path segment on other hosts.

use wstd::http::{Body, Error, Request, Response};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let greeting = std::env::var("GREETING").unwrap_or_else(|_| "hello".to_string());
    let name = request
        .headers()
        .get("wasmhive-param-name")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            let path = request.uri().path();
            path.strip_prefix("/hello/")
                .filter(|n| !n.is_empty())
                .map(str::to_string)
        })
        .unwrap_or_else(|| "world".to_string());
    Ok(Response::builder()
        .header("content-type", "text/plain; charset=utf-8")
        .body(Body::from(format!("{greeting}, {name}\n")))?)
}
