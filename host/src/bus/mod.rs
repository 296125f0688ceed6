//! The bus: where messages flow. One trait, two backends with the same semantics:
//! subjects with NATS wildcards (`*` one token, `>` the rest), queue groups (each
//! message goes to one member of a group), and request/reply with a timeout and a
//! no-responders error.
//!
//! - [`nats::NatsBus`]: a real NATS server through async-nats. Reconnects on its own;
//!   subscriptions survive a reconnect.
//! - [`local::LocalBus`]: in-process, for a single host without NATS. Nothing survives
//!   a restart and nothing leaves the process.
//!
//! Delivery is at most once on both (core NATS semantics). Durable delivery is
//! JetStream's job (see the messaging trigger).

pub mod local;
pub mod managed;
pub mod nats;
pub mod subject;

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;

/// A message on the bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The subject it was published to.
    pub subject: String,
    /// Where an answer should go, if the sender wants one.
    pub reply_to: Option<String>,
    /// Headers (e.g. `traceparent`).
    pub headers: Vec<(String, String)>,
    /// The payload.
    pub body: Bytes,
}

impl Message {
    /// A message without reply subject or headers.
    pub fn new(subject: impl Into<String>, body: impl Into<Bytes>) -> Self {
        Message {
            subject: subject.into(),
            reply_to: None,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Why a bus operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BusError {
    /// Nobody is subscribed to the request's subject.
    #[error("no responders on {0}")]
    NoResponders(String),
    /// Nobody answered in time.
    #[error("request to {subject} timed out after {timeout:?}")]
    Timeout {
        /// The request subject.
        subject: String,
        /// How long it waited.
        timeout: Duration,
    },
    /// The subject is not valid for this operation.
    #[error("invalid subject {0:?}")]
    InvalidSubject(String),
    /// The bus is not reachable (disconnected, closed).
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    /// A header name or value NATS cannot carry.
    #[error("invalid header: {0}")]
    InvalidHeader(String),
}

impl Message {
    /// Checks that every header can be carried (NATS headers: names of visible ASCII
    /// without `:`, values without CR or LF). Both buses refuse what NATS would.
    pub fn check_headers(&self) -> Result<(), BusError> {
        for (name, value) in &self.headers {
            if name.is_empty() || name.contains(|c: char| !c.is_ascii_graphic() || c == ':') {
                return Err(BusError::InvalidHeader(format!(
                    "name {name:?}: use visible ASCII characters other than ':'"
                )));
            }
            if value.contains(['\r', '\n']) {
                return Err(BusError::InvalidHeader(format!(
                    "value of {name:?}: no line breaks"
                )));
            }
        }
        Ok(())
    }
}

/// Messages arriving on a subscription. Dropping it unsubscribes.
pub type Subscription = Pin<Box<dyn Stream<Item = Message> + Send>>;

/// A message bus.
#[async_trait::async_trait]
pub trait Bus: Send + Sync + 'static {
    /// `nats` or `local`.
    fn kind(&self) -> &'static str;

    /// Where it is, for humans (`nats://127.0.0.1:4222`, `in-process`).
    fn describe(&self) -> String;

    /// Whether it is connected now (NATS: the client's connection is up; it
    /// reconnects by itself). The in-process bus always is.
    fn connected(&self) -> bool {
        true
    }

    /// Publishes `message` (its `reply_to` and headers included), within 2 s or an
    /// error. NATS: a durable event (a subject the events stream captures, as this
    /// host knows it, without `reply_to`) goes through JetStream and ok means the
    /// stream stored it; anything else is ok once written to the client's socket (a
    /// reconnect at that moment can still lose it). In-process: queued to the
    /// subscribers.
    async fn publish(&self, message: Message) -> Result<(), BusError>;

    /// Publishes `message` with a fresh reply subject and waits for the first answer.
    async fn request(&self, message: Message, timeout: Duration) -> Result<Message, BusError>;

    /// The NATS connection behind this bus, if it is one (for JetStream).
    fn as_nats(&self) -> Option<&nats::NatsBus> {
        None
    }

    /// Subscribes to `subject` (wildcards allowed), in `queue_group` if given.
    async fn subscribe(
        &self,
        subject: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError>;
}

/// The bus a host runs with, and the NATS server it manages, if any.
pub struct Connected {
    /// The bus.
    pub bus: Arc<dyn Bus>,
    /// A `nats-server` child process this host started (stopped when dropped).
    pub managed: Option<managed::ManagedNats>,
}

impl Connected {
    /// One line for the start-up banner.
    pub fn describe(&self) -> String {
        match &self.managed {
            Some(_) => format!(
                "nats {} (managed nats-server, JetStream on)",
                self.bus.describe()
            ),
            None if self.bus.kind() == "nats" => format!("nats {}", self.bus.describe()),
            None => format!(
                "local, {} (pass --nats URL to join a NATS system)",
                self.bus.describe()
            ),
        }
    }
}

/// Picks and connects the host's bus: `--nats URL` if given; else the in-process
/// bus if asked for; else a managed `nats-server` if one is on PATH; else the
/// in-process bus.
pub async fn connect(
    config: &crate::config::HostConfig,
    _shutdown: &tokio_util::sync::CancellationToken,
) -> anyhow::Result<Connected> {
    let b = &config.bus;
    let mut opts = nats::NatsOptions {
        url: String::new(),
        user: b.user.clone().zip(b.password.clone()),
        token: b.token.clone(),
        creds: b.creds.clone(),
        tls_ca: b.tls_ca.clone(),
        replicas: 1,
        space: nats::SubjectSpace::default(),
    };
    if let Some(url) = &b.nats {
        opts.url = url.clone();
        opts.replicas = config.lattice.replicas;
        // A named lattice keeps its app subjects and streams to itself.
        opts.space = nats::SubjectSpace::for_lattice(
            (config.lattice.name != crate::config::DEFAULT_LATTICE)
                .then_some(config.lattice.name.as_str()),
        );
        let bus = nats::NatsBus::connect(&opts).await?;
        return Ok(Connected {
            bus: Arc::new(bus),
            managed: None,
        });
    }
    if !b.local
        && let Some(server) = managed::find_nats_server()
    {
        let managed = managed::ManagedNats::start(&server, &config.data_dir.join("nats")).await?;
        opts.url = managed.url().to_string();
        let bus = nats::NatsBus::connect(&opts).await?;
        return Ok(Connected {
            bus: Arc::new(bus),
            managed: Some(managed),
        });
    }
    Ok(Connected {
        bus: Arc::new(local::LocalBus::new()),
        managed: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_nats_cannot_carry_are_refused() {
        let with = |k: &str, v: &str| {
            let mut m = Message::new("a", "");
            m.headers.push((k.into(), v.into()));
            m.check_headers()
        };
        assert!(with("traceparent", "00-ab-cd-01").is_ok());
        for (k, v) in [
            ("", "v"),
            ("a b", "v"),
            ("a:b", "v"),
            ("é", "v"),
            ("k", "a\nb"),
            ("k", "a\rb"),
        ] {
            assert!(
                matches!(with(k, v), Err(BusError::InvalidHeader(_))),
                "{k:?} {v:?}"
            );
        }
    }
}
