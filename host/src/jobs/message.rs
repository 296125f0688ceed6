//! Runs per message: a job's `on_message` subjects, delivered durably through
//! JetStream (one run per message; a run that does not exit 0 fails the delivery, so
//! the message is redelivered after `retries.backoff`, up to `retries.attempts`
//! deliveries, then dead-lettered).

use std::sync::Arc;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::history::{self, History, RunTrigger};
use super::{Attempt, Jobs, Output, RunRequest, describe};
use crate::apps::DeployedComponent;
use crate::bus::Bus;
use crate::envelope::Failure;
use crate::runtime::InvokeError;
use crate::scaler::Permit;
use crate::subscriber::durable::{self, Delivery, Handler};

impl Jobs {
    /// Subscribes the job's `on_message` subjects durably, until `stop`.
    pub(super) async fn subscribe(
        self: Arc<Self>,
        component: Arc<DeployedComponent>,
        history: History,
        bus: Arc<dyn Bus>,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let spec = &component.spec.triggers.job;
        let Some(nats) = bus.as_nats() else {
            anyhow::bail!(
                "job.on_message needs NATS with JetStream (runs per message are durable); this host runs the in-process bus"
            );
        };
        let delivery = Delivery {
            subjects: spec.on_message.clone(),
            group: format!("{}.{}.job", component.id.app, component.id.component),
            max_deliver: spec.retries.attempts.max(1),
            backoff: vec![spec.retries.backoff],
            ack_wait: spec
                .timeout
                .unwrap_or(component.timeout)
                .saturating_add(durable::ACK_MARGIN),
        };
        let handler: Handler = {
            let (this, component) = (self.clone(), component.clone());
            Arc::new(move |message, permit| {
                let (this, component, history) = (this.clone(), component.clone(), history.clone());
                Box::pin(async move {
                    this.message_run(&component, &history, message, permit)
                        .await
                })
            })
        };
        let tracker = self.tracker.clone();
        durable::start_with(component, delivery, handler, nats.clone(), stop, tracker).await
    }

    /// One run for one message; a run that does not exit 0 fails the delivery.
    async fn message_run(
        &self,
        component: &Arc<DeployedComponent>,
        history: &History,
        message: crate::bus::Message,
        permit: Permit,
    ) -> Result<(), Failure> {
        let request = RunRequest {
            stdin: Bytes::from(message.body.to_vec()),
            subject: Some(message.subject.clone()),
            ..RunRequest::of(RunTrigger::Message)
        };
        let id = history
            .new_id(history::now_ms(), component.spec.triggers.job.keep_runs)
            .await
            .map_err(|e| Failure::Invoke(InvokeError::Host(format!("job history: {e}"))))?;
        let attempt = Attempt {
            id,
            number: 1,
            output: Arc::new(Output::default()),
            cancel: CancellationToken::new(),
            stop: None,
            permit: Some(permit),
            lease: None,
        };
        let record = self.execute(component, history, &request, attempt).await;
        if record.succeeded() {
            Ok(())
        } else {
            Err(Failure::Invoke(InvokeError::Handler(format!(
                "run {} ended: {}",
                record.id,
                describe(&record)
            ))))
        }
    }
}
