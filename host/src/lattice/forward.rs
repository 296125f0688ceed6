//! Forwarded invocations: an HTTP request or service call for a component placed on
//! another host travels as a NATS request to `wasmhive.<lattice>.rpc.<app>.<component>`
//! (a queue group: one of the hosts running it answers), with its deadline, and
//! comes back as a reply; bodies larger than one message are pulled piece by piece
//! ([`wire`] has the messages). The caller's side is [`forward`], the callee's
//! [`serve`].
//!
//! Bounded both ways: a body is pulled one piece ([`wire::PIECE`]) at a time, when
//! the reader wants it, so a slow reader holds back the writer instead of filling
//! memory; a pull subject nobody pulls from for [`PULL_IDLE`] is dropped.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures::{FutureExt, StreamExt, future::BoxFuture};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio_util::sync::CancellationToken;

use super::wire::{Answer, Ask, Kind, Outcome, PIECE, Piece};
use crate::body::{self, Body};

/// A pull subject nobody pulls from for this long is dropped (the other side is gone).
pub const PULL_IDLE: Duration = Duration::from_secs(30);

/// Why a forwarded invocation got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// No host listens on the component's subject (none runs it, or they all died).
    /// Carries the request back when it was sent whole, so the caller may serve it
    /// itself.
    #[error("no host of the lattice answers for it")]
    NoResponders(Option<Box<Request<Body>>>),
    /// No answer before the deadline.
    #[error("no answer in time")]
    Timeout,
    /// NATS failed, or the answer was malformed.
    #[error("forwarding failed: {0}")]
    Failed(String),
}

/// What serves forwarded invocations on a host: the invocation in, how it ended and
/// the response out.
pub type Handler =
    Arc<dyn Fn(Kind, Request<Body>) -> BoxFuture<'static, (Outcome, Response<Body>)> + Send + Sync>;

fn headers_out(headers: &HeaderMap) -> Vec<(String, Bytes)> {
    headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), Bytes::copy_from_slice(v.as_bytes())))
        .collect()
}

fn headers_in(pairs: Vec<(String, Bytes)>, into: &mut HeaderMap) {
    for (k, v) in pairs {
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_maybe_shared(v),
        ) {
            into.append(k, v);
        }
    }
}

/// `body` with no data frame larger than [`PIECE`]: larger ones (a body received
/// whole before forwarding, a replayed service-call body) are cut, so a message
/// never exceeds two pieces.
fn bounded(body: Body) -> Body {
    struct Split {
        inner: Body,
        rest: Bytes,
    }
    impl http_body::Body for Split {
        type Data = Bytes;
        type Error = wasmtime_wasi_http::Error;

        fn poll_frame(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
            use std::task::Poll;
            if !self.rest.is_empty() {
                let n = self.rest.len().min(PIECE);
                let piece = self.rest.split_to(n);
                return Poll::Ready(Some(Ok(http_body::Frame::data(piece))));
            }
            match std::pin::Pin::new(&mut self.inner).poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                    Ok(mut data) if data.len() > PIECE => {
                        self.rest = data.split_off(PIECE);
                        Poll::Ready(Some(Ok(http_body::Frame::data(data))))
                    }
                    Ok(data) => Poll::Ready(Some(Ok(http_body::Frame::data(data)))),
                    Err(frame) => Poll::Ready(Some(Ok(frame))),
                },
                other => other,
            }
        }

        fn is_end_stream(&self) -> bool {
            self.rest.is_empty() && self.inner.is_end_stream()
        }

        fn size_hint(&self) -> http_body::SizeHint {
            if self.rest.is_empty() {
                self.inner.size_hint()
            } else {
                http_body::SizeHint::default()
            }
        }
    }
    Split {
        inner: body,
        rest: Bytes::new(),
    }
    .boxed_unsync()
}

/// Reads what of `body` is there: with `wait`, at least one frame (or its end) is
/// awaited; then frames already available are taken, up to [`PIECE`] bytes. Returns
/// the bytes and whether the body ended.
async fn take_piece(
    body: &mut Body,
    wait: bool,
) -> Result<(Bytes, bool), wasmtime_wasi_http::Error> {
    let mut buf = BytesMut::new();
    let mut waited = !wait;
    loop {
        if body.is_end_stream() {
            return Ok((buf.freeze(), true));
        }
        // Frames are at most a piece ([`bounded`]): a message holds at most two.
        if buf.len() >= PIECE {
            return Ok((buf.freeze(), false));
        }
        let frame = if waited {
            match body.frame().now_or_never() {
                Some(f) => f,
                None => return Ok((buf.freeze(), false)),
            }
        } else {
            waited = true;
            body.frame().await
        };
        match frame {
            None => return Ok((buf.freeze(), true)),
            Some(Err(e)) => return Err(e),
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
            }
        }
    }
}

/// Answers pulls on `sub` with the next pieces of `body` until it ends, fails, or
/// nobody pulls for [`PULL_IDLE`].
async fn serve_pulls(client: async_nats::Client, mut sub: async_nats::Subscriber, mut body: Body) {
    loop {
        let msg = match tokio::time::timeout(PULL_IDLE, sub.next()).await {
            Ok(Some(m)) => m,
            _ => return,
        };
        let Some(reply) = msg.reply else { continue };
        let piece = match take_piece(&mut body, true).await {
            Ok((data, last)) => Piece {
                last,
                failed: false,
                data,
            },
            Err(e) => {
                tracing::debug!(error = %e, "forwarded body failed");
                Piece {
                    last: true,
                    failed: true,
                    data: Bytes::new(),
                }
            }
        };
        let end = piece.last;
        if client.publish(reply, piece.encode()).await.is_err() || end {
            return;
        }
    }
}

/// Offers the rest of `body` for pulling on a new subject; returns the subject.
async fn offer(client: &async_nats::Client, body: Body) -> Result<String, ForwardError> {
    let subject = client.new_inbox();
    let sub = client
        .subscribe(subject.clone())
        .await
        .map_err(|e| ForwardError::Failed(e.to_string()))?;
    tokio::spawn(serve_pulls(client.clone(), sub, body));
    Ok(subject)
}

/// A body that starts with `first` and pulls the rest from `subject`.
fn pulled(client: async_nats::Client, subject: String, first: Bytes) -> Body {
    struct State {
        client: async_nats::Client,
        subject: String,
        first: Option<Bytes>,
        done: bool,
    }
    let state = State {
        client,
        subject,
        first: Some(first).filter(|b| !b.is_empty()),
        done: false,
    };
    let stream = futures::stream::unfold(state, |mut s| async move {
        if let Some(first) = s.first.take() {
            return Some((Ok(http_body::Frame::data(first)), s));
        }
        if s.done {
            return None;
        }
        let reply = s
            .client
            .send_request(
                s.subject.clone(),
                async_nats::Request::new().timeout(Some(PULL_IDLE)),
            )
            .await;
        let piece = match reply {
            Ok(m) => Piece::decode(m.payload).ok(),
            Err(_) => None,
        };
        match piece {
            Some(p) if !p.failed => {
                s.done = p.last;
                if p.data.is_empty() && p.last {
                    return None;
                }
                Some((Ok(http_body::Frame::data(p.data)), s))
            }
            _ => {
                s.done = true;
                Some((Err(wasmtime_wasi_http::Error::HttpResponseIncomplete), s))
            }
        }
    });
    http_body_util::StreamBody::new(stream).boxed_unsync()
}

/// Sends `request` to the host running the component behind `subject` and returns
/// how it ended and its response (streamed). `deadline` bounds the wait for the head.
pub async fn forward(
    client: &async_nats::Client,
    subject: String,
    kind: Kind,
    request: Request<Body>,
    deadline: Duration,
) -> Result<(Outcome, Response<Body>), ForwardError> {
    let (parts, body) = request.into_parts();
    // A body known to be small is sent whole; otherwise what is there now is sent
    // and the rest pulled by the callee.
    let small = body
        .size_hint()
        .exact()
        .is_some_and(|n| n as usize <= PIECE);
    let mut body = bounded(body);
    let (first, ended) = take_piece(&mut body, small)
        .await
        .map_err(|e| ForwardError::Failed(format!("request body: {e}")))?;
    let pull = if ended {
        String::new()
    } else {
        offer(client, body).await?
    };
    let again = ended.then(|| (parts.clone(), first.clone()));
    let ask = Ask {
        kind,
        deadline_ms: u32::try_from(deadline.as_millis()).unwrap_or(u32::MAX),
        pull,
        method: parts.method.as_str().to_string(),
        uri: parts.uri.to_string(),
        headers: headers_out(&parts.headers),
        body: first,
    };
    let reply = client
        .send_request(
            subject,
            async_nats::Request::new()
                .payload(ask.encode())
                .timeout(Some(deadline)),
        )
        .await
        .map_err(|e| match e.kind() {
            async_nats::RequestErrorKind::NoResponders => ForwardError::NoResponders(
                again.map(|(parts, first)| Box::new(Request::from_parts(parts, body::full(first)))),
            ),
            async_nats::RequestErrorKind::TimedOut => ForwardError::Timeout,
            _ => ForwardError::Failed(e.to_string()),
        })?;
    let answer = Answer::decode(reply.payload).map_err(|e| ForwardError::Failed(e.to_string()))?;
    let body = if answer.pull.is_empty() {
        body::full(answer.body)
    } else {
        pulled(client.clone(), answer.pull, answer.body)
    };
    let mut response = Response::new(body);
    *response.status_mut() =
        http::StatusCode::from_u16(answer.status).unwrap_or(http::StatusCode::BAD_GATEWAY);
    headers_in(answer.headers, response.headers_mut());
    Ok((answer.outcome, response))
}

/// Serves forwarded invocations on `subject` (in the lattice's queue group) with
/// `handler` until `stop`.
pub async fn serve(
    client: async_nats::Client,
    subject: String,
    queue: String,
    handler: Handler,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut sub = client
        .queue_subscribe(subject.clone(), queue)
        .await
        .map_err(|e| anyhow::anyhow!("cannot subscribe to {subject}: {e}"))?;
    tokio::spawn(async move {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => break,
                m = sub.next() => match m {
                    Some(m) => m,
                    None => break,
                },
            };
            let Some(reply) = msg.reply.clone() else {
                continue;
            };
            let (client, handler) = (client.clone(), handler.clone());
            tokio::spawn(async move {
                let answer = answer(&client, msg.payload, handler).await;
                if let Err(e) = client.publish(reply, answer.encode()).await {
                    tracing::debug!(error = %e, "cannot send a forwarded invocation's answer");
                }
            });
        }
        let _ = sub.unsubscribe().await;
    });
    Ok(())
}

/// Runs one forwarded invocation and makes its answer.
async fn answer(client: &async_nats::Client, payload: Bytes, handler: Handler) -> Answer {
    let refuse = |outcome, status: u16, why: &str| Answer {
        outcome,
        status,
        pull: String::new(),
        headers: vec![(
            "content-type".into(),
            Bytes::from_static(b"text/plain; charset=utf-8"),
        )],
        body: Bytes::from(format!("{why}\n")),
    };
    let ask = match Ask::decode(payload) {
        Ok(a) => a,
        Err(e) => return refuse(Outcome::Answered, 400, &e.to_string()),
    };
    let deadline = Duration::from_millis(u64::from(ask.deadline_ms));
    let body = if ask.pull.is_empty() {
        body::full(ask.body)
    } else {
        pulled(client.clone(), ask.pull, ask.body)
    };
    let mut request = Request::new(body);
    match (
        http::Method::from_bytes(ask.method.as_bytes()),
        ask.uri.parse::<http::Uri>(),
    ) {
        (Ok(m), Ok(u)) => {
            *request.method_mut() = m;
            *request.uri_mut() = u;
        }
        _ => return refuse(Outcome::Answered, 400, "bad forwarded request head"),
    }
    headers_in(ask.headers, request.headers_mut());
    let (outcome, response) = match tokio::time::timeout(deadline, handler(ask.kind, request)).await
    {
        Ok(r) => r,
        Err(_) => return refuse(Outcome::Timeout, 504, "timed out"),
    };
    let (parts, body) = response.into_parts();
    let mut body = bounded(body);
    let (first, ended) = match take_piece(&mut body, true).await {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(error = %e, "forwarded response body failed");
            return refuse(Outcome::Answered, 502, "response body failed");
        }
    };
    let pull = if ended {
        String::new()
    } else {
        match offer(client, body).await {
            Ok(s) => s,
            Err(e) => return refuse(Outcome::Unavailable, 503, &e.to_string()),
        }
    };
    Answer {
        outcome,
        status: parts.status.as_u16(),
        pull,
        headers: headers_out(&parts.headers),
        body: first,
    }
}
