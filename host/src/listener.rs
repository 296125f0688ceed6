//! The accept loop both HTTP listeners share: HTTP/1.1 and HTTP/2 (prior knowledge,
//! "h2c") on one port, bounds on open connections (in all and per client address),
//! timeouts that free the slots of idle and slow clients, and a graceful drain on
//! shutdown.
//!
//! A connection's clocks ([`ConnectionLimits`]):
//! - **header read**: from a request's first byte until its head is complete. A client
//!   trickling a header a byte at a time is cut off.
//! - **idle**: from the accept, or the end of a response, until the next request's
//!   first byte. A silent or idle kept-alive connection is closed. (Client pools open
//!   connections before they need them; a shorter clock for a silent new connection
//!   would race with the request they eventually send.)
//!
//! While a request is in flight neither clock runs (the invocation has its own
//! deadline, and the gateway bounds the gaps in a request body).

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::body::Body;

/// The client's address, in every request's extensions.
#[derive(Debug, Clone, Copy)]
pub struct PeerAddr(pub SocketAddr);

/// How many connections a listener keeps, and for how long.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Open connections in all; more wait in the kernel's backlog.
    pub max_connections: usize,
    /// Open connections from one client address; more are closed at once.
    pub max_connections_per_ip: usize,
    /// Addresses the per-address limit does not apply to (a proxy in front of the
    /// host speaks for many clients).
    pub per_ip_exempt: Vec<IpRange>,
    /// Longest time to receive a request head (see the module docs).
    pub header_read_timeout: Duration,
    /// Longest idle time between requests on a kept-alive connection.
    pub idle_timeout: Duration,
    /// HTTP/2 streams one connection may have open at once.
    pub h2_max_concurrent_streams: u32,
    /// HTTP/2 keep-alive ping interval (a peer that does not answer within the same
    /// time is disconnected).
    pub h2_keep_alive_interval: Duration,
}

/// Serves `handler` on `listener` until `shutdown` fires, then stops accepting and
/// waits up to `drain` for open connections to finish their requests. With `tls`,
/// every connection starts with a TLS handshake (bounded by the header-read time).
pub async fn serve<H, F>(
    name: &'static str,
    listener: TcpListener,
    handler: H,
    limits: ConnectionLimits,
    tls: Option<Arc<crate::tls::Tls>>,
    shutdown: CancellationToken,
    drain: Duration,
) where
    H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = hyper::Response<Body>> + Send + 'static,
{
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let per_ip = PerIp::new(limits.max_connections_per_ip, limits.per_ip_exempt.clone());
    let builder = Arc::new(builder(&limits));
    let limits = Arc::new(limits);
    loop {
        // Both branches are cancel-safe: `accept` loses nothing when dropped, and a
        // dropped semaphore acquire only gives up its place in line.
        let (permit, (stream, peer)) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = async {
                let permit = slots.clone().acquire_owned().await;
                (permit, listener.accept().await)
            } => match accepted {
                (Ok(permit), Ok((stream, peer))) => (permit, (stream, peer)),
                (_, Err(e)) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(listener = name, error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                (Err(_), _) => break,
            },
        };
        let Some(ip_slot) = per_ip.take(peer.ip()) else {
            tracing::debug!(listener = name, %peer, "too many connections from this address: closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn {
            peer,
            builder: builder.clone(),
            limits: limits.clone(),
            watcher: graceful.watcher(),
        };
        let handler = handler.clone();
        let tls = tls.clone();
        let handshake_time = limits.header_read_timeout;
        tokio::spawn(async move {
            let served = match tls {
                None => conn.serve(stream, false, handler).await,
                Some(tls) => {
                    let handshake = tls.acceptor().accept(stream);
                    match tokio::time::timeout(handshake_time, handshake).await {
                        Ok(Ok(stream)) => conn.serve(stream, true, handler).await,
                        Ok(Err(e)) => Err(format!("TLS handshake failed: {e}").into()),
                        Err(_) => Err("TLS handshake not completed in time".into()),
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(listener = name, %peer, error = %e, "connection ended with error");
            }
            drop(ip_slot);
            drop(permit);
        });
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(drain) => {
            tracing::warn!(listener = name, "drain timeout: closing remaining connections");
        }
    }
}

/// Marks a request that arrived over TLS terminated by this host (in its extensions).
#[derive(Debug, Clone, Copy)]
pub struct ViaTls;

/// One accepted connection, before its protocol starts.
struct Conn {
    peer: SocketAddr,
    builder: Arc<auto::Builder<TokioExecutor>>,
    limits: Arc<ConnectionLimits>,
    watcher: hyper_util::server::graceful::Watcher,
}

impl Conn {
    /// Serves HTTP on `io` until the client or a clock closes it.
    async fn serve<I, H, F>(
        self,
        io: I,
        tls: bool,
        handler: H,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
    where
        I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
        H: Fn(hyper::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
        F: Future<Output = hyper::Response<Body>> + Send + 'static,
    {
        let clock = Arc::new(Clock::new(&self.limits));
        let peer = self.peer;
        let service = {
            let clock = clock.clone();
            hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                if tls {
                    req.extensions_mut().insert(ViaTls);
                }
                let in_flight = clock.request_started(req.version());
                let fut = handler(req);
                async move {
                    let response = fut.await;
                    Ok::<_, Infallible>(response.map(|body| Tracked {
                        body,
                        _in_flight: in_flight,
                    }))
                }
            })
        };
        let io = TokioIo::new(Watched::new(io, clock));
        let conn = self.builder.serve_connection(io, service);
        self.watcher.watch(conn).await
    }
}

/// HTTP/1.1 with keep-alive, or HTTP/2 when the client starts with its preface.
fn builder(limits: &ConnectionLimits) -> auto::Builder<TokioExecutor> {
    let mut b = auto::Builder::new(TokioExecutor::new());
    // The header and idle clocks are ours ([`Watched`]); hyper's own header timer
    // would also run while a kept-alive connection is idle.
    b.http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(None);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.h2_max_concurrent_streams)
        .keep_alive_interval(limits.h2_keep_alive_interval)
        .keep_alive_timeout(limits.h2_keep_alive_interval)
        .max_pending_accept_reset_streams(Some(20));
    b
}

/// A block of addresses: `10.0.0.0/8`, `::1/128`, or one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    addr: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Parses `ADDR` or `ADDR/PREFIX`.
    pub fn parse(text: &str) -> Result<IpRange, String> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (text, None),
        };
        let addr: IpAddr = addr.trim().parse().map_err(|e| {
            format!("{text:?}: {e} (write an address or ADDR/PREFIX, e.g. \"10.0.0.0/8\")")
        })?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => max,
            Some(p) => p
                .trim()
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= max)
                .ok_or_else(|| format!("{text:?}: the prefix must be 0 to {max}"))?,
        };
        Ok(IpRange { addr, prefix })
    }

    /// The loopback blocks (`127.0.0.0/8`, `::1`).
    pub fn loopback() -> Vec<IpRange> {
        vec![
            IpRange {
                addr: IpAddr::from([127, 0, 0, 0]),
                prefix: 8,
            },
            IpRange {
                addr: IpAddr::from(std::net::Ipv6Addr::LOCALHOST),
                prefix: 128,
            },
        ]
    }

    /// Whether `ip` is in the block (an IPv4-mapped IPv6 address counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(a), IpAddr::V4(b)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(a) & mask == u32::from(b) & mask
            }
            (IpAddr::V6(a), IpAddr::V6(b)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(a) & mask == u128::from(b) & mask
            }
            _ => false,
        }
    }
}

impl std::fmt::Display for IpRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// Counts open connections per client address.
struct PerIp {
    max: usize,
    exempt: Vec<IpRange>,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One connection's place in [`PerIp`]; given back on drop.
struct IpSlot {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerIp {
    fn new(max: usize, exempt: Vec<IpRange>) -> Self {
        PerIp {
            max: max.max(1),
            exempt,
            open: Default::default(),
        }
    }

    /// A place for a connection from `ip`: `None` when it has too many; `Some(None)`
    /// for an exempt address (not counted).
    fn take(&self, ip: IpAddr) -> Option<Option<IpSlot>> {
        if self.exempt.iter().any(|r| r.contains(ip)) {
            return Some(None);
        }
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(Some(IpSlot {
            ip,
            open: self.open.clone(),
        }))
    }
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// One connection's header and idle clocks, shared by its socket and its service.
struct Clock {
    header_read_timeout: Duration,
    idle_timeout: Duration,
    state: Mutex<ClockState>,
}

#[derive(Clone, Copy)]
struct ClockState {
    /// Requests whose response has not been sent completely.
    in_flight: u32,
    /// When the head now being received started (or the connection was accepted).
    head_started: Option<Instant>,
    /// When the connection last became idle.
    idle_since: Instant,
    /// The connection speaks HTTP/2.
    h2: bool,
    /// Any byte has arrived (the first ones tell HTTP/2's preface).
    seen_bytes: bool,
}

/// How an HTTP/2 connection starts (prior knowledge and ALPN alike).
const H2_PREFACE_START: &[u8] = b"PRI * HTTP/2.0";

impl Clock {
    fn new(limits: &ConnectionLimits) -> Self {
        let now = Instant::now();
        Clock {
            header_read_timeout: limits.header_read_timeout,
            idle_timeout: limits.idle_timeout,
            // A new connection counts as idle until its first byte: client pools
            // open connections they use only later, and cutting those at the header
            // time races with the request they eventually send.
            state: Mutex::new(ClockState {
                in_flight: 0,
                head_started: None,
                idle_since: now,
                h2: false,
                seen_bytes: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ClockState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A request head is complete: the clocks stop until its response is sent.
    fn request_started(self: &Arc<Self>, version: http::Version) -> InFlight {
        let mut s = self.lock();
        s.in_flight += 1;
        s.h2 |= version == http::Version::HTTP_2;
        s.head_started = None;
        InFlight(self.clone())
    }

    /// `bytes` arrived: on an idle HTTP/1 connection they start a request head. (On
    /// HTTP/2 they may be the preface, pings or window updates; its idle clock keeps
    /// running.)
    fn bytes_arrived(&self, bytes: &[u8]) {
        let mut s = self.lock();
        if !s.seen_bytes {
            s.seen_bytes = true;
            s.h2 |= bytes.starts_with(H2_PREFACE_START);
        }
        if s.in_flight == 0 && s.head_started.is_none() && !s.h2 {
            s.head_started = Some(Instant::now());
        }
    }

    /// When the connection is to be cut if nothing changes, and why.
    fn deadline(&self) -> Option<(Instant, &'static str)> {
        let s = *self.lock();
        if s.in_flight > 0 {
            return None;
        }
        Some(match s.head_started {
            Some(t) => (
                t + self.header_read_timeout,
                "request head not received in time",
            ),
            None => (s.idle_since + self.idle_timeout, "idle"),
        })
    }
}

/// A request in flight; dropping it (with its response body) makes the connection idle.
struct InFlight(Arc<Clock>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
        }
    }
}

/// A response body that keeps its request in flight until it is sent or dropped.
struct Tracked {
    body: Body,
    _in_flight: InFlight,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = <Body as http_body::Body>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// A client socket whose reads fail with `TimedOut` once its [`Clock`] runs out.
struct Watched<S> {
    stream: S,
    clock: Arc<Clock>,
    timer: Pin<Box<Sleep>>,
    armed_for: Option<Instant>,
}

impl<S> Watched<S> {
    fn new(stream: S, clock: Arc<Clock>) -> Self {
        Watched {
            stream,
            clock,
            timer: Box::pin(tokio::time::sleep(Duration::ZERO)),
            armed_for: None,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.stream).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if buf.filled().len() > before {
                    self.clock.bytes_arrived(&buf.filled()[before..]);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                let Some((deadline, why)) = self.clock.deadline() else {
                    return Poll::Pending;
                };
                if self.armed_for != Some(deadline) {
                    self.armed_for = Some(deadline);
                    self.timer.as_mut().reset(deadline);
                }
                match self.timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::TimedOut, why)))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_contain_what_they_should() {
        let r = IpRange::parse("10.1.0.0/16").unwrap();
        assert!(r.contains("10.1.200.3".parse().unwrap()));
        assert!(!r.contains("10.2.0.1".parse().unwrap()));
        assert!(r.contains("::ffff:10.1.0.9".parse().unwrap()));
        let one = IpRange::parse("192.168.1.7").unwrap();
        assert!(one.contains("192.168.1.7".parse().unwrap()));
        assert!(!one.contains("192.168.1.8".parse().unwrap()));
        let v6 = IpRange::parse("fd00::/8").unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(
            IpRange::parse("0.0.0.0/0")
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!(IpRange::parse("10.0.0.0/33").is_err());
        assert!(IpRange::parse("example.com").is_err());
        assert!(
            IpRange::loopback()
                .iter()
                .any(|r| r.contains("127.0.0.2".parse().unwrap()))
        );
    }

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 1,
            max_connections_per_ip: 1,
            per_ip_exempt: Vec::new(),
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            h2_max_concurrent_streams: 1,
            h2_keep_alive_interval: Duration::from_secs(20),
        }
    }

    #[tokio::test]
    async fn the_clocks_follow_the_connection() {
        let clock = Arc::new(Clock::new(&limits()));
        // New and silent: the idle clock.
        let (t, why) = clock.deadline().unwrap();
        assert_eq!(why, "idle");
        assert!(t > Instant::now() + Duration::from_secs(50));
        // A first byte of HTTP/1: the header clock.
        clock.bytes_arrived(b"GE");
        assert_eq!(
            clock.deadline().unwrap().1,
            "request head not received in time"
        );
        // In flight: no clock; done: idle again.
        let in_flight = clock.request_started(http::Version::HTTP_11);
        assert!(clock.deadline().is_none());
        drop(in_flight);
        assert_eq!(clock.deadline().unwrap().1, "idle");
        // HTTP/2's preface keeps a connection on the idle clock.
        let h2 = Arc::new(Clock::new(&limits()));
        h2.bytes_arrived(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n");
        assert_eq!(h2.deadline().unwrap().1, "idle");
    }

    #[test]
    fn per_ip_counts_and_gives_back() {
        let p = PerIp::new(2, IpRange::loopback());
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let a = p.take(ip).unwrap();
        let b = p.take(ip).unwrap();
        assert!(p.take(ip).is_none());
        drop(a);
        assert!(p.take(ip).is_some());
        drop(b);
        // Loopback is not counted.
        for _ in 0..10 {
            assert!(matches!(p.take("127.0.0.1".parse().unwrap()), Some(None)));
        }
    }
}
