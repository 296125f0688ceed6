//! The in-process bus: NATS subject and queue-group semantics inside one host, for
//! running without a NATS server. Nothing is persisted and nothing leaves the process.
//!
//! Each subscription has a bounded buffer ([`BUFFER`]); like a slow NATS consumer, a
//! subscriber that falls that far behind loses messages (counted and logged) rather
//! than making publishers wait without bound.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;

use super::{Bus, BusError, Message, Subscription, subject};

/// Messages buffered per subscription.
pub const BUFFER: usize = 4096;

struct Sub {
    id: u64,
    pattern: String,
    queue_group: Option<String>,
    tx: mpsc::Sender<Message>,
}

#[derive(Default)]
struct Inner {
    subs: Mutex<Vec<Sub>>,
    next_id: AtomicU64,
    /// Round-robin position per queue group.
    turns: Mutex<HashMap<String, usize>>,
    dropped: AtomicU64,
}

/// The in-process bus.
#[derive(Clone, Default)]
pub struct LocalBus {
    inner: Arc<Inner>,
}

impl LocalBus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Messages dropped because a subscriber's buffer was full.
    pub fn dropped(&self) -> u64 {
        self.inner.dropped.load(Ordering::Relaxed)
    }

    /// Delivers `message` to every plain subscriber and one member of each queue
    /// group. Returns how many subscriptions received it.
    fn deliver(&self, message: &Message) -> usize {
        let subs = self.inner.subs.lock().unwrap_or_else(|e| e.into_inner());
        let mut targets: Vec<&Sub> = Vec::new();
        // Like NATS: one delivery per queue group, however many of its members'
        // patterns match.
        let mut groups: HashMap<&str, Vec<&Sub>> = HashMap::new();
        for s in subs
            .iter()
            .filter(|s| subject::matches(&s.pattern, &message.subject))
        {
            match &s.queue_group {
                None => targets.push(s),
                Some(g) => groups.entry(g.as_str()).or_default().push(s),
            }
        }
        if !groups.is_empty() {
            let mut turns = self.inner.turns.lock().unwrap_or_else(|e| e.into_inner());
            for (group, members) in groups {
                let turn = turns.entry(group.to_string()).or_default();
                targets.push(members[*turn % members.len()]);
                *turn = turn.wrapping_add(1);
            }
        }
        let mut delivered = 0;
        for s in targets {
            match s.tx.try_send(message.clone()) {
                Ok(()) => delivered += 1,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(subject = %message.subject, pattern = %s.pattern, "local bus: slow subscriber, message dropped");
                }
                // The subscription is being dropped; it unregisters itself.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        delivered
    }
}

/// Unregisters a subscription when its stream is dropped.
struct Unsubscribe {
    inner: Arc<Inner>,
    id: u64,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.inner
            .subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|s| s.id != self.id);
    }
}

#[async_trait::async_trait]
impl Bus for LocalBus {
    fn kind(&self) -> &'static str {
        "local"
    }

    fn describe(&self) -> String {
        "in-process (this host only, nothing persisted)".into()
    }

    async fn publish(&self, message: Message) -> Result<(), BusError> {
        subject::check(&message.subject, false)
            .map_err(|_| BusError::InvalidSubject(message.subject.clone()))?;
        message.check_headers()?;
        self.deliver(&message);
        Ok(())
    }

    async fn request(&self, mut message: Message, timeout: Duration) -> Result<Message, BusError> {
        subject::check(&message.subject, false)
            .map_err(|_| BusError::InvalidSubject(message.subject.clone()))?;
        message.check_headers()?;
        let inbox = format!(
            "_INBOX.local.{}",
            self.inner.next_id.fetch_add(1, Ordering::Relaxed)
        );
        let mut replies = self.subscribe(&inbox, None).await?;
        message.reply_to = Some(inbox);
        let subject = message.subject.clone();
        if self.deliver(&message) == 0 {
            return Err(BusError::NoResponders(subject));
        }
        match tokio::time::timeout(timeout, replies.next()).await {
            Ok(Some(reply)) => Ok(reply),
            Ok(None) => Err(BusError::Unavailable("local bus closed".into())),
            Err(_) => Err(BusError::Timeout { subject, timeout }),
        }
    }

    async fn subscribe(
        &self,
        pattern: &str,
        queue_group: Option<&str>,
    ) -> Result<Subscription, BusError> {
        subject::check(pattern, true).map_err(|_| BusError::InvalidSubject(pattern.to_string()))?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
        self.inner
            .subs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Sub {
                id,
                pattern: pattern.to_string(),
                queue_group: queue_group.map(str::to_string),
                tx,
            });
        let guard = Unsubscribe {
            inner: self.inner.clone(),
            id,
        };
        let stream = futures::stream::unfold((rx, guard), |(mut rx, guard)| async move {
            rx.recv().await.map(|m| (m, (rx, guard)))
        });
        Ok(Box::pin(stream))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn wildcards_and_queue_groups() {
        let bus = LocalBus::new();
        let mut all = bus.subscribe("orders.>", None).await.unwrap();
        let mut a = bus.subscribe("orders.*", Some("g")).await.unwrap();
        let mut b = bus.subscribe("orders.*", Some("g")).await.unwrap();
        for i in 0..10 {
            bus.publish(Message::new(format!("orders.{i}"), "x"))
                .await
                .unwrap();
        }
        let mut seen = 0;
        for _ in 0..10 {
            all.next().await.unwrap();
        }
        for _ in 0..5 {
            a.next().await.unwrap();
            b.next().await.unwrap();
            seen += 2;
        }
        assert_eq!(seen, 10, "each message went to exactly one group member");
    }

    #[tokio::test]
    async fn request_reply_timeout_and_no_responders() {
        let bus = LocalBus::new();
        assert!(matches!(
            bus.request(Message::new("nobody", "x"), Duration::from_millis(50))
                .await,
            Err(BusError::NoResponders(_))
        ));
        let mut server = bus.subscribe("svc", None).await.unwrap();
        let b = bus.clone();
        tokio::spawn(async move {
            let m = server.next().await.unwrap();
            b.publish(Message::new(m.reply_to.unwrap(), "pong"))
                .await
                .unwrap();
            // The second request gets no answer.
            let _ = server.next().await;
        });
        let r = bus
            .request(Message::new("svc", "ping"), Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(r.body, "pong");
        assert!(matches!(
            bus.request(Message::new("svc", "ping"), Duration::from_millis(50))
                .await,
            Err(BusError::Timeout { .. })
        ));
    }

    #[tokio::test]
    async fn dropping_a_subscription_unsubscribes() {
        let bus = LocalBus::new();
        let s = bus.subscribe("x", None).await.unwrap();
        drop(s);
        assert!(bus.inner.subs.lock().unwrap().is_empty());
    }
}
