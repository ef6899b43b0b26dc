//! Lifecycle events on the application's EventBridge bus.

use async_trait::async_trait;
use aws_sdk_eventbridge::Client;
use aws_sdk_eventbridge::types::PutEventsRequestEntry;

use super::aws::failed;
use crate::domain::LifecycleEvent;
use crate::domain::event::SOURCE;
use crate::ports::{EventPublisher, PublishError};

/// PutEvents accepts at most this many entries per call.
const BATCH: usize = 10;

pub struct EventBridgePublisher {
    client: Client,
    bus: String,
}

impl EventBridgePublisher {
    pub fn new(client: Client, bus: impl Into<String>) -> Self {
        Self {
            client,
            bus: bus.into(),
        }
    }

    fn entry(&self, event: &LifecycleEvent) -> Result<PutEventsRequestEntry, PublishError> {
        let detail = serde_json::to_string(&event.detail)
            .map_err(|e| PublishError::Unencodable(format!("cannot encode event detail: {e}")))?;
        let mut entry = PutEventsRequestEntry::builder()
            .event_bus_name(&self.bus)
            .source(SOURCE)
            .detail_type(event.detail_type.as_str())
            .detail(detail);
        let at = event.detail.at();
        entry = entry.time(
            aws_smithy_types::DateTime::from_nanos(at.unix_timestamp_nanos())
                .unwrap_or_else(|_| aws_smithy_types::DateTime::from_secs(at.unix_timestamp())),
        );
        Ok(entry.build())
    }
}

#[async_trait]
impl EventPublisher for EventBridgePublisher {
    async fn publish(&self, events: &[LifecycleEvent]) -> Result<(), PublishError> {
        for batch in events.chunks(BATCH) {
            let entries = batch
                .iter()
                .map(|e| self.entry(e))
                .collect::<Result<Vec<_>, _>>()?;
            let out = self
                .client
                .put_events()
                .set_entries(Some(entries))
                .send()
                .await
                .map_err(|error| failed(error, "PutEvents"))?;
            let failed = out.failed_entry_count() as usize;
            if failed > 0 {
                let reasons: Vec<String> = out
                    .entries()
                    .iter()
                    .filter_map(|e| {
                        e.error_code()
                            .map(|c| format!("{c}: {}", e.error_message().unwrap_or_default()))
                    })
                    .collect();
                return Err(PublishError::Rejected {
                    failed,
                    total: batch.len(),
                    reason: reasons.join("; "),
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_eventbridge::operation::put_events::PutEventsOutput;
    use aws_sdk_eventbridge::types::PutEventsResultEntry;
    use aws_smithy_mocks::{RuleMode, mock, mock_client};
    use time::macros::datetime;

    use crate::domain::{AppName, EnvName, EventType};

    fn event() -> LifecycleEvent {
        LifecycleEvent::environment(
            EventType::EnvironmentFrozen,
            &AppName::parse("web").unwrap(),
            &EnvName::parse("prod").unwrap(),
            Some("by hand".into()),
            datetime!(2026-01-01 0:00 UTC),
        )
    }

    #[tokio::test]
    async fn publishes_on_our_bus_with_our_source_in_batches_of_ten() {
        let rule = mock!(Client::put_events)
            .match_requests(|r| {
                r.entries().len() <= 10
                    && r.entries().iter().all(|e| {
                        e.source() == Some("pushdeploy")
                            && e.event_bus_name() == Some("pushdeploy-bus")
                            && e.detail_type() == Some("Environment Frozen")
                            && e.detail()
                                .is_some_and(|d| d.contains("\"environment\":\"prod\""))
                    })
            })
            .then_output(|| PutEventsOutput::builder().failed_entry_count(0).build());
        let publisher = EventBridgePublisher::new(
            mock_client!(aws_sdk_eventbridge, RuleMode::MatchAny, [&rule]),
            "pushdeploy-bus",
        );
        publisher.publish(&vec![event(); 12]).await.unwrap();
        assert_eq!(rule.num_calls(), 2);
    }

    #[tokio::test]
    async fn rejected_entries_are_an_error_with_their_reasons() {
        let rule = mock!(Client::put_events).then_output(|| {
            PutEventsOutput::builder()
                .failed_entry_count(1)
                .entries(
                    PutEventsResultEntry::builder()
                        .error_code("InternalFailure")
                        .error_message("try again")
                        .build(),
                )
                .build()
        });
        let publisher = EventBridgePublisher::new(mock_client!(aws_sdk_eventbridge, [&rule]), "b");
        let err = publisher.publish(&[event()]).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "1 of 1 events were not accepted: InternalFailure: try again"
        );
    }
}
