//! wasi:http hooks: which headers guests may see or set, and where their outgoing
//! requests may go.
//!
//! Forbidden headers are the hop-by-hop ones (connection, keep-alive, te, trailer,
//! transfer-encoding, upgrade, host, http2-settings) and every `proxy-*` header: they
//! are stripped from requests before a guest sees them, and a guest cannot set them on
//! responses or outgoing requests. Outgoing requests are denied (the guest sees
//! `HttpRequestDenied`) unless the URL matches the component's `allowed_outbound_hosts`.
//! An instance has at most `max_outgoing_requests` open at once: a request past that
//! waits for a permit, held until its connection is done.

use std::sync::{Arc, LazyLock};

use http::HeaderName;
use tokio::sync::Semaphore;
use wasmtime_wasi_http::{
    DEFAULT_FORBIDDEN_HEADERS, Error as HttpError, ForbiddenHeaderFilter, RequestOptions, WasiBody,
    WasiHttpHooks,
};

use crate::capability::Grants;
use crate::headers::{REQUEST_ID_HEADER, TRACEPARENT_HEADER};

/// Whether `name` is a header guests may neither see nor set.
pub fn is_forbidden_header(name: &HeaderName) -> bool {
    let s = name.as_str();
    DEFAULT_FORBIDDEN_HEADERS.contains(name)
        || s.starts_with("proxy-")
        || s == "te"
        || s == "trailer"
}

static FORBIDDEN_FILTER: LazyLock<ForbiddenHeaderFilter> =
    LazyLock::new(|| Arc::new(is_forbidden_header));

/// The hooks of one instance.
pub(crate) struct HostHooks {
    grants: Arc<Grants>,
    /// `traceparent` of the invocation, added to outgoing requests that carry none.
    pub(crate) traceparent: Option<http::HeaderValue>,
    /// `x-request-id` of the invocation, added likewise.
    pub(crate) request_id: Option<http::HeaderValue>,
    /// The invocation's verified caller, passed on to service calls that forward it.
    pub(crate) identity: Option<Arc<[(HeaderName, http::HeaderValue)]>>,
    /// Permits for requests open at once.
    open: Arc<Semaphore>,
}

impl HostHooks {
    pub(crate) fn new(grants: Arc<Grants>) -> Self {
        HostHooks {
            open: Arc::new(Semaphore::new(grants.http.max_outgoing as usize)),
            grants,
            traceparent: None,
            request_id: None,
            identity: None,
        }
    }
}

type SendFuture = Box<
    dyn Future<
            Output = Result<
                (
                    http::Response<WasiBody>,
                    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ),
                HttpError,
            >,
        > + Send,
>;

impl WasiHttpHooks for HostHooks {
    fn is_forbidden_header(&mut self, name: &HeaderName) -> bool {
        is_forbidden_header(name)
    }

    fn forbidden_header_filter(&mut self) -> ForbiddenHeaderFilter {
        FORBIDDEN_FILTER.clone()
    }

    fn send_request(
        &mut self,
        mut request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> SendFuture {
        drop(fut);
        for (name, value) in [
            (TRACEPARENT_HEADER, &self.traceparent),
            (REQUEST_ID_HEADER, &self.request_id),
        ] {
            if let Some(v) = value
                && !request.headers().contains_key(&name)
            {
                request.headers_mut().insert(name, v.clone());
            }
        }
        // A call to another component by name: in process, under the caller's policy.
        let target = request.uri().host().unwrap_or_default().to_string();
        let plain_port = matches!(request.uri().port_u16(), None | Some(80));
        if plain_port
            && let Some((_, policy)) = self.grants.http.calls.iter().find(|(t, _)| *t == target)
        {
            let Some(mesh) = self.grants.http.mesh.clone() else {
                return Box::new(async { Err(HttpError::HttpRequestDenied) });
            };
            let (caller, policy) = (self.grants.id.clone(), policy.clone());
            // The guest cannot name an identity; the host passes on the verified one.
            crate::headers::strip_reserved(request.headers_mut());
            if policy.forward_identity
                && let Some(identity) = &self.identity
            {
                for (name, value) in identity.iter() {
                    request.headers_mut().insert(name.clone(), value.clone());
                }
            }
            let open = self.open.clone();
            return Box::new(async move {
                let _permit = open.acquire_owned().await;
                let response = mesh.0.call(&caller, &target, &policy, request).await?;
                Ok((
                    response,
                    Box::new(async { Ok(()) })
                        as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
                ))
            });
        }
        let uri = request.uri();
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        let host = uri.host().unwrap_or_default().to_string();
        let port = uri
            .port_u16()
            .unwrap_or(if scheme == "https" { 443 } else { 80 });
        let allowed = self
            .grants
            .http
            .outbound
            .iter()
            .any(|rule| rule.matches(&scheme, &host, port));
        if !allowed {
            tracing::warn!(
                app = %self.grants.id.app,
                component = %self.grants.id.component,
                destination = %format!("{scheme}://{host}:{port}"),
                "outbound request denied: destination not in allowed_outbound_hosts"
            );
            return Box::new(async { Err(HttpError::HttpRequestDenied) });
        }
        let open = self.open.clone();
        Box::new(async move {
            use http_body_util::BodyExt;
            let permit = open.acquire_owned().await;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            // The connection stays open until the response body is read or dropped.
            let io = async move {
                let done = io.await;
                drop(permit);
                done
            };
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = Result<(), HttpError>> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_proxy_headers_are_forbidden() {
        for h in [
            "connection",
            "keep-alive",
            "transfer-encoding",
            "upgrade",
            "host",
            "proxy-authorization",
            "proxy-foo",
            "te",
        ] {
            assert!(is_forbidden_header(&HeaderName::from_static(h)), "{h}");
        }
        for h in ["content-type", "x-request-id", "authorization"] {
            assert!(!is_forbidden_header(&HeaderName::from_static(h)), "{h}");
        }
    }
}
