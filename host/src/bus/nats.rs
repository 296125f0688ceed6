//! The NATS backend (async-nats): core publish/subscribe, queue groups and
//! request/reply. The client reconnects by itself and re-establishes subscriptions;
//! while it is disconnected, publishes are buffered by the client up to its limit and
//! then fail with [`BusError::Unavailable`].
//!
//! A server that cannot be reached at start-up does not stop the host: it starts
//! without the bus (reported down in `status` and `/readyz`), subscriptions made in
//! the meantime wait in the client, and it connects when the server appears. Bad
//! credentials or TLS settings still fail the start at once.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_nats::{HeaderMap, RequestErrorKind};
use futures::StreamExt;

use super::{Bus, BusError, Message, Subscription};

/// How to reach and authenticate to a NATS system.
#[derive(Debug, Clone, Default)]
pub struct NatsOptions {
    /// Server URL(s), comma separated, e.g. `nats://127.0.0.1:4222`.
    pub url: String,
    /// User and password.
    pub user: Option<(String, String)>,
    /// Token.
    pub token: Option<String>,
    /// A `.creds` file (JWT + nkey).
    pub creds: Option<PathBuf>,
    /// Extra root CA for TLS.
    pub tls_ca: Option<PathBuf>,
    /// JetStream replicas of the streams the host creates (3 on a NATS cluster).
    pub replicas: usize,
    /// Where app subjects live.
    pub space: SubjectSpace,
}

/// Where app subjects live on NATS. The default lattice (and a host alone) uses them
/// as they are; a named lattice keeps them under `wasmhive.<lattice>.app.`, so two
/// lattices on one NATS never see each other's messages and its durable streams are
/// its own. Components always see the plain subject. Reply inboxes (`_INBOX.`) are
/// never moved.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SubjectSpace {
    lattice: Option<Arc<str>>,
    prefix: Option<Arc<str>>,
}

impl SubjectSpace {
    /// The space of lattice `name` (`None`: plain subjects).
    pub fn for_lattice(name: Option<&str>) -> Self {
        match name {
            None => SubjectSpace::default(),
            Some(l) => SubjectSpace {
                lattice: Some(l.into()),
                prefix: Some(format!("wasmhive.{l}.app.").into()),
            },
        }
    }

    /// The NATS subject for an app subject (wildcards included).
    pub fn outer(&self, subject: &str) -> String {
        match &self.prefix {
            Some(p) if !subject.starts_with("_INBOX.") => format!("{p}{subject}"),
            _ => subject.to_string(),
        }
    }

    /// The app subject for a NATS subject.
    pub fn inner(&self, subject: &str) -> String {
        match &self.prefix {
            Some(p) => subject.strip_prefix(&**p).unwrap_or(subject).to_string(),
            None => subject.to_string(),
        }
    }

    /// A stream's name in this space: `WASMHIVE_EVENTS` → `WASMHIVE_<lattice>_EVENTS`.
    pub fn stream(&self, base: &str) -> String {
        match (&self.lattice, base.strip_prefix("WASMHIVE_")) {
            (Some(l), Some(rest)) => format!("WASMHIVE_{l}_{rest}"),
            _ => base.to_string(),
        }
    }
}

/// A connection to NATS.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    url: String,
    /// Subjects the durable events stream captures, as last seen by this host (see
    /// [`NatsBus::publish`]).
    captured: Arc<RwLock<Vec<String>>>,
    /// For durable events (one context: each builds an acker task).
    js: async_nats::jetstream::Context,
    /// JetStream replicas of the streams the host creates.
    replicas: usize,
    /// Where app subjects live.
    space: SubjectSpace,
}

impl NatsBus {
    /// Connects. A server that is not reachable (refused, timed out, unknown name)
    /// is connected to in the background: the bus starts disconnected. Bad
    /// credentials or TLS fail at once. Once connected, the client reconnects by
    /// itself for as long as the host runs.
    pub async fn connect(opts: &NatsOptions) -> anyhow::Result<NatsBus> {
        match Self::try_connect(opts, false).await {
            Ok(bus) => Ok(bus),
            Err(e) => {
                use async_nats::ConnectErrorKind as K;
                if !matches!(e.kind(), K::Io | K::TimedOut | K::Dns) {
                    anyhow::bail!("cannot connect to NATS at {}: {e}", opts.url);
                }
                tracing::warn!(url = %opts.url, error = %e, "NATS is not reachable: starting without the bus (reported down in status and /readyz) and connecting when it appears");
                Self::try_connect(opts, true)
                    .await
                    .map_err(|e| anyhow::anyhow!("cannot connect to NATS at {}: {e}", opts.url))
            }
        }
    }

    /// One attempt; with `background`, the client is returned at once and connects
    /// on its own.
    async fn try_connect(
        opts: &NatsOptions,
        background: bool,
    ) -> Result<NatsBus, async_nats::ConnectError> {
        let mut o = async_nats::ConnectOptions::new()
            .name("wasmhive")
            .max_reconnects(None)
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::Connected => tracing::info!("nats: connected"),
                    async_nats::Event::Disconnected => {
                        tracing::warn!("nats: disconnected, reconnecting")
                    }
                    other => tracing::debug!("nats: {other}"),
                }
            });
        if let Some((u, p)) = &opts.user {
            o = o.user_and_password(u.clone(), p.clone());
        }
        if let Some(t) = &opts.token {
            o = o.token(t.clone());
        }
        if let Some(c) = &opts.creds {
            o = o.credentials_file(c).await.map_err(|e| {
                async_nats::ConnectError::with_source(
                    async_nats::ConnectErrorKind::Authentication,
                    e,
                )
            })?;
        }
        if let Some(ca) = &opts.tls_ca {
            o = o.add_root_certificates(ca.clone()).require_tls(true);
        }
        if background {
            o = o.retry_on_initial_connect();
        }
        // `nats://a:4222,nats://b:4222`: the servers of a cluster; the client picks one
        // and fails over to the others.
        let servers: Vec<&str> = opts
            .url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect();
        let client = o.connect(servers).await?;
        let mut js = async_nats::jetstream::new(client.clone());
        js.set_timeout(PUBLISH_TIMEOUT);
        Ok(NatsBus {
            client,
            url: opts.url.clone(),
            captured: Arc::default(),
            js,
            replicas: opts.replicas.max(1),
            space: opts.space.clone(),
        })
    }

    /// Adds to the subjects the durable events stream is known to capture (every
    /// deploy of a durable subscription on this host reports the stream's list; the
    /// stream only ever gains subjects, so lists reported out of order add up).
    pub fn add_captured(&self, subjects: Vec<String>) {
        let mut captured = self.captured.write().unwrap_or_else(|e| e.into_inner());
        for s in subjects {
            if !captured.contains(&s) {
                captured.push(s);
            }
        }
    }

    fn is_captured(&self, subject: &str) -> bool {
        captures(&self.captured, subject)
    }

    /// A core NATS publish, waited for until it is written to the server's
    /// connection (`publish` alone only queues it in this process).
    async fn send(
        &self,
        subject: String,
        reply_to: Option<String>,
        headers: Option<HeaderMap>,
        body: bytes::Bytes,
    ) -> Result<(), BusError> {
        let c = &self.client;
        match (reply_to, headers) {
            (None, None) => c.publish(subject, body).await,
            (None, Some(h)) => c.publish_with_headers(subject, h, body).await,
            (Some(r), None) => c.publish_with_reply(subject, r, body).await,
            (Some(r), Some(h)) => c.publish_with_reply_and_headers(subject, r, h, body).await,
        }
        .map_err(unavailable)?;
        c.flush().await.map_err(unavailable)
    }

    /// Where app subjects live.
    pub fn space(&self) -> &SubjectSpace {
        &self.space
    }

    /// JetStream replicas of the streams the host creates.
    pub fn replicas(&self) -> usize {
        self.replicas
    }

    /// The underlying client (for JetStream).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

/// Whether a subject is among the `captured` patterns.
fn captures(captured: &RwLock<Vec<String>>, subject: &str) -> bool {
    captured
        .read()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .any(|p| super::subject::matches(p, subject))
}

/// The headers as NATS headers (`None` if there are none). The caller has checked
/// them ([`Message::check_headers`]): async-nats panics on an invalid name or value.
pub fn nats_headers(headers: &[(String, String)]) -> Option<HeaderMap> {
    if headers.is_empty() {
        return None;
    }
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.append(k.as_str(), v.as_str());
    }
    Some(map)
}

/// Converts a received NATS message.
pub fn from_nats(m: async_nats::Message) -> Message {
    let headers = m
        .headers
        .as_ref()
        .map(|h| {
            h.iter()
                .flat_map(|(k, vs)| vs.iter().map(move |v| (k.to_string(), v.to_string())))
                .collect()
        })
        .unwrap_or_default();
    Message {
        subject: m.subject.to_string(),
        reply_to: m.reply.map(|r| r.to_string()),
        headers,
        body: m.payload,
    }
}

fn unavailable(e: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(e.to_string())
}

#[async_trait::async_trait]
impl Bus for NatsBus {
    fn kind(&self) -> &'static str {
        "nats"
    }

    fn describe(&self) -> String {
        self.url.clone()
    }

    fn as_nats(&self) -> Option<&NatsBus> {
        Some(self)
    }

    fn connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }

    async fn publish(&self, m: Message) -> Result<(), BusError> {
        super::subject::check(&m.subject, false)
            .map_err(|_| BusError::InvalidSubject(m.subject.clone()))?;
        m.check_headers()?;
        let subject = self.space.outer(&m.subject);
        let reply_to = m.reply_to.as_deref().map(|r| self.space.outer(r));
        let headers = nats_headers(&m.headers);
        // A durable event (a subject the events stream captures, no reply subject):
        // published through JetStream, and ok only once the stream has stored it.
        if reply_to.is_none() && self.is_captured(&subject) {
            let js = &self.js;
            let stored = async {
                let ack = match headers {
                    Some(h) => js.publish_with_headers(subject.clone(), h, m.body).await,
                    None => js.publish(subject.clone(), m.body).await,
                }
                .map_err(unavailable)?;
                ack.await.map(drop).map_err(unavailable)
            };
            return match tokio::time::timeout(PUBLISH_TIMEOUT, stored).await {
                Ok(result) => result,
                Err(_) => Err(BusError::Unavailable(format!(
                    "{subject}: not stored by JetStream within {PUBLISH_TIMEOUT:?}; it may still be"
                ))),
            };
        }
        let sent = async { self.send(subject.clone(), reply_to, headers, m.body).await };
        match tokio::time::timeout(PUBLISH_TIMEOUT, sent).await {
            Ok(result) => result,
            Err(_) => Err(BusError::Unavailable(format!(
                "{subject}: not sent to {} within {PUBLISH_TIMEOUT:?} (disconnected?); it may still be sent on reconnect",
                self.url
            ))),
        }
    }

    async fn request(&self, m: Message, timeout: Duration) -> Result<Message, BusError> {
        let subject = m.subject.clone();
        super::subject::check(&subject, false)
            .map_err(|_| BusError::InvalidSubject(subject.clone()))?;
        m.check_headers()?;
        let mut request = async_nats::Request::new()
            .payload(m.body)
            .timeout(Some(timeout));
        if let Some(h) = nats_headers(&m.headers) {
            request = request.headers(h);
        }
        match self
            .client
            .send_request(self.space.outer(&subject), request)
            .await
        {
            Ok(reply) => Ok(from_nats(reply)),
            Err(e) => Err(match e.kind() {
                RequestErrorKind::NoResponders => BusError::NoResponders(subject),
                RequestErrorKind::TimedOut => BusError::Timeout { subject, timeout },
                RequestErrorKind::InvalidSubject => BusError::InvalidSubject(subject),
                _ => unavailable(e),
            }),
        }
    }

    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        super::subject::check(subject, true)
            .map_err(|_| BusError::InvalidSubject(subject.to_string()))?;
        let outer = self.space.outer(subject);
        let sub = match queue_group {
            Some(g) => self.client.queue_subscribe(outer, g.to_string()).await,
            None => self.client.subscribe(outer).await,
        }
        .map_err(unavailable)?;
        self.settle().await;
        // A durable event published through JetStream carries its ack inbox as the
        // reply subject. A plain subscriber must not see it: answering it would race
        // the stream's acknowledgement and fail the publisher.
        let captured = self.captured.clone();
        let space = self.space.clone();
        Ok(Box::pin(sub.map(move |m| {
            let mut m = from_nats(m);
            if m.reply_to.is_some() && captures(&captured, &m.subject) {
                m.reply_to = None;
            }
            m.subject = space.inner(&m.subject);
            m.reply_to = m.reply_to.map(|r| space.inner(&r));
            m
        })))
    }
}

/// How long a publish may take (queued, written, and for a durable event stored by
/// JetStream) before it is reported as failed.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(2);

/// How long [`NatsBus::settle`] waits for its round trip.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

impl NatsBus {
    /// Waits (at most [`SETTLE_TIMEOUT`]) until the server has processed what this
    /// client sent so far, so a subscription is live on the server before a component
    /// is reported ready: the server handles one connection's commands in order, so a
    /// message published to a fresh inbox coming back means the earlier SUB is in
    /// place. (`flush` only writes the socket.) While disconnected this gives up after
    /// the timeout: the client sends its subscriptions again when it reconnects.
    async fn settle(&self) {
        let probe = async {
            let inbox = self.client.new_inbox();
            let mut echo = self.client.subscribe(inbox.clone()).await.ok()?;
            self.client.publish(inbox, bytes::Bytes::new()).await.ok()?;
            echo.next().await
        };
        if tokio::time::timeout(SETTLE_TIMEOUT, probe).await.is_err() {
            tracing::debug!("nats: no round trip within {SETTLE_TIMEOUT:?} after subscribing");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::SubjectSpace;

    #[test]
    fn a_named_lattice_moves_app_subjects_and_streams_but_not_inboxes() {
        let plain = SubjectSpace::for_lattice(None);
        assert_eq!(plain.outer("orders.created"), "orders.created");
        assert_eq!(plain.stream("WASMHIVE_EVENTS"), "WASMHIVE_EVENTS");

        let l = SubjectSpace::for_lattice(Some("staging"));
        assert_eq!(l.outer("orders.*"), "wasmhive.staging.app.orders.*");
        assert_eq!(
            l.inner("wasmhive.staging.app.orders.created"),
            "orders.created"
        );
        assert_eq!(l.outer("_INBOX.abc"), "_INBOX.abc");
        assert_eq!(l.inner("_INBOX.abc"), "_INBOX.abc");
        assert_eq!(l.stream("WASMHIVE_EVENTS"), "WASMHIVE_staging_EVENTS");
        assert_eq!(l.stream("WASMHIVE_DLQ"), "WASMHIVE_staging_DLQ");
    }
}
