//! The NATS backend (async-nats): core publish/subscribe, queue groups and
//! request/reply. The client reconnects by itself and re-establishes subscriptions;
//! while it is disconnected, publishes are buffered by the client up to its limit and
//! then fail with [`BusError::Unavailable`].

use std::path::PathBuf;
use std::time::Duration;

use async_nats::{HeaderMap, RequestErrorKind};
use futures::StreamExt;

use super::{Bus, BusError, Message, Subscription};

/// How long start-up waits for an unreachable NATS server.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(15);

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
}

/// A connection to NATS.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    url: String,
}

impl NatsBus {
    /// Connects, retrying for up to [`CONNECT_PATIENCE`] while the server is not
    /// reachable; bad credentials or TLS fail at once. Once connected, the client
    /// reconnects by itself for as long as the host runs.
    pub async fn connect(opts: &NatsOptions) -> anyhow::Result<NatsBus> {
        let deadline = tokio::time::Instant::now() + CONNECT_PATIENCE;
        loop {
            match Self::try_connect(opts).await {
                Ok(bus) => return Ok(bus),
                Err(e) => {
                    use async_nats::ConnectErrorKind as K;
                    let retry = matches!(e.kind(), K::Io | K::TimedOut | K::Dns);
                    if !retry || tokio::time::Instant::now() >= deadline {
                        anyhow::bail!("cannot connect to NATS at {}: {e}", opts.url);
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    async fn try_connect(opts: &NatsOptions) -> Result<NatsBus, async_nats::ConnectError> {
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
        let client = o.connect(opts.url.as_str()).await?;
        Ok(NatsBus {
            client,
            url: opts.url.clone(),
        })
    }

    /// The underlying client (for JetStream).
    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }
}

fn to_headers(headers: &[(String, String)]) -> Option<HeaderMap> {
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

    async fn publish(&self, m: Message) -> Result<(), BusError> {
        super::subject::check(&m.subject, false)
            .map_err(|_| BusError::InvalidSubject(m.subject.clone()))?;
        let subject = m.subject;
        let result = match (m.reply_to, to_headers(&m.headers)) {
            (None, None) => self.client.publish(subject, m.body).await,
            (None, Some(h)) => self.client.publish_with_headers(subject, h, m.body).await,
            (Some(r), None) => self.client.publish_with_reply(subject, r, m.body).await,
            (Some(r), Some(h)) => {
                self.client
                    .publish_with_reply_and_headers(subject, r, h, m.body)
                    .await
            }
        };
        result.map_err(unavailable)?;
        // `publish` only queues the message in this process. Wait until it is written
        // to the server's socket, so a publish that returned ok survives the host
        // dying right after (a service that answers "placed" once its event is
        // published relies on that). Bounded: while disconnected the client keeps
        // the message and sends it on reconnect, but the caller learns it is not out.
        match tokio::time::timeout(PUBLISH_FLUSH_TIMEOUT, self.client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(BusError::Unavailable(format!(
                "not sent to {} within {PUBLISH_FLUSH_TIMEOUT:?} (disconnected?); it may still be sent on reconnect",
                self.url
            ))),
        }
    }

    async fn request(&self, m: Message, timeout: Duration) -> Result<Message, BusError> {
        let subject = m.subject.clone();
        super::subject::check(&subject, false)
            .map_err(|_| BusError::InvalidSubject(subject.clone()))?;
        let mut request = async_nats::Request::new()
            .payload(m.body)
            .timeout(Some(timeout));
        if let Some(h) = to_headers(&m.headers) {
            request = request.headers(h);
        }
        match self.client.send_request(subject.clone(), request).await {
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
        let sub = match queue_group {
            Some(g) => {
                self.client
                    .queue_subscribe(subject.to_string(), g.to_string())
                    .await
            }
            None => self.client.subscribe(subject.to_string()).await,
        }
        .map_err(unavailable)?;
        self.settle().await;
        Ok(Box::pin(sub.map(from_nats)))
    }
}

/// How long a publish waits for its message to leave the process.
const PUBLISH_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

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
