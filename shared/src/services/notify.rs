//! Telling people: one message per meaningful state change, to each channel of the app
//! that wants it. A change is claimed per channel in the state table before its message is
//! sent, so repeated events never repeat a message; a message that could not be sent
//! releases its claim and fails the invocation, so it is retried and, in the end, lands in
//! the dead-letter queue. Nothing here ever touches a deployment.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::{Core, ServiceError};
use crate::domain::config::{Channel, ChannelKind, Notice};
use crate::domain::notice::{Message, dedupe_key, notice_of};
use crate::domain::{EventDetail, EventType};
use crate::ports::{ClaimLease, Commit, SecretSource, StoreError, Webhook};

/// How long a channel's claim on a message is held before a retry may send it: longer than
/// the function runs.
const CLAIM_LEASE: time::Duration = time::Duration::seconds(120);

/// How hard one invocation tries to deliver a message before giving it back to Lambda's
/// retries (and, after those, the dead-letter queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub attempts: u32,
    /// The pause after the first failed attempt; doubled after each.
    pub first_backoff: Duration,
    /// How long one request may take.
    pub timeout: Duration,
}

impl Default for Delivery {
    fn default() -> Self {
        Self {
            attempts: 3,
            first_backoff: Duration::from_millis(500),
            timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Clone)]
pub struct Notifier {
    pub core: Core,
    pub secrets: Arc<dyn SecretSource>,
    pub webhook: Arc<dyn Webhook>,
    pub delivery: Delivery,
}

/// What became of one channel's message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sent {
    pub channel: usize,
    pub kind: ChannelKind,
    #[serde(flatten)]
    pub outcome: SendOutcome,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum SendOutcome {
    Sent {
        attempts: u32,
    },
    /// This change was announced on this channel before.
    AlreadySent,
    Failed {
        error: String,
    },
}

impl Notifier {
    /// Announces a lifecycle event to the app's channels. Returns what was sent; fails when
    /// a message could not be sent, after releasing its claim.
    pub async fn on_event(
        &self,
        detail_type: EventType,
        detail: &EventDetail,
    ) -> Result<Vec<Sent>, ServiceError> {
        let Some(notice) = notice_of(detail_type, detail) else {
            return Ok(Vec::new());
        };
        let config = self.core.config.load().await?;
        let Some(app) = config.app(&detail.app) else {
            return Ok(Vec::new());
        };
        // Every channel at once: each is bounded by `Delivery`, so a dead webhook cannot hold
        // the others past the function's timeout.
        let sends = app
            .notify
            .iter()
            .enumerate()
            .filter(|(_, channel)| channel.on.contains(&notice))
            .map(|(i, channel)| async move {
                let claim = format!("notify#{}#{i}#{}", detail.app, dedupe_key(notice, detail));
                let outcome = self
                    .send_once(channel, notice, detail_type, detail, &claim)
                    .await?;
                Ok::<Sent, ServiceError>(Sent {
                    channel: i,
                    kind: channel.kind,
                    outcome,
                })
            });
        let sent: Vec<Sent> = futures::future::join_all(sends)
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let failures: Vec<String> = sent
            .iter()
            .filter_map(|s| match &s.outcome {
                SendOutcome::Failed { error } => {
                    Some(format!("notify[{}] ({:?}): {error}", s.channel, s.kind))
                }
                _ => None,
            })
            .collect();
        if !failures.is_empty() {
            // Every failure released its claim, so a retry sends just those.
            return Err(ServiceError::Incomplete {
                summary: format!(
                    "{} for {}/{}: {}",
                    notice.as_str(),
                    detail.app,
                    detail.environment,
                    failures.join("; ")
                ),
                retryable: true,
            });
        }
        Ok(sent)
    }

    async fn send_once(
        &self,
        channel: &Channel,
        notice: Notice,
        detail_type: EventType,
        detail: &EventDetail,
        claim: &str,
    ) -> Result<SendOutcome, ServiceError> {
        let store = &self.core.store;
        let now = self.core.clock.now();
        // Held for longer than one invocation may run: if this one stops before the message
        // is sent, a retry after that may send it.
        let lease = ClaimLease {
            now,
            until: now + CLAIM_LEASE,
        };
        match store
            .commit(Commit {
                claim_event: Some(claim.to_owned()),
                claim_lease: Some(lease),
                ..Commit::default()
            })
            .await
        {
            Ok(()) => {}
            Err(StoreError::Duplicate(_)) => return Ok(SendOutcome::AlreadySent),
            Err(e) => return Err(e.into()),
        }
        let result = self.deliver(channel, notice, detail_type, detail).await;
        match result {
            Ok(attempts) => {
                info!(app = %detail.app, env = %detail.environment, notice = notice.as_str(), kind = ?channel.kind, attempts, "notified");
                let settled = store
                    .commit(Commit {
                        settle_event: Some(claim.to_owned()),
                        ..Commit::default()
                    })
                    .await;
                if let Err(e) = settled {
                    // Sent all the same; only a retry after the lease could send it again.
                    warn!(error = %e, "could not record the message as sent");
                }
                Ok(SendOutcome::Sent { attempts })
            }
            Err(error) => {
                warn!(app = %detail.app, env = %detail.environment, notice = notice.as_str(), kind = ?channel.kind, %error, "notification not sent");
                // Let a retry of this event send it.
                store
                    .commit(Commit {
                        forget_event: Some(claim.to_owned()),
                        ..Commit::default()
                    })
                    .await?;
                Ok(SendOutcome::Failed { error })
            }
        }
    }

    /// Sends with a few quick retries; returns the attempts it took.
    async fn deliver(
        &self,
        channel: &Channel,
        notice: Notice,
        detail_type: EventType,
        detail: &EventDetail,
    ) -> Result<u32, String> {
        let url = self
            .secrets
            .read(&channel.url)
            .await
            .map_err(|e| format!("reading the webhook URL: {e}"))?;
        let message = Message::new(notice, detail_type, detail);
        let Delivery {
            attempts,
            first_backoff,
            timeout,
        } = self.delivery;
        let mut backoff = first_backoff;
        let mut attempt = 1;
        loop {
            match self
                .webhook
                .post(url.trim(), channel.kind, &message, timeout)
                .await
            {
                Ok(()) => return Ok(attempt),
                Err(e) if e.is_retryable() && attempt < attempts => {
                    tokio::time::sleep(super::jittered(backoff)).await;
                    backoff *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(format!("{e} (attempt {attempt} of {attempts})")),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::domain::config::SecretRef;
    use crate::domain::notice::Message;
    use crate::fakes::World;
    use crate::ports::{Clock, StateStore, WebhookError};

    /// A webhook that answers each post with the next status of its script.
    #[derive(Default)]
    struct Scripted {
        answers: Mutex<Vec<u16>>,
        posted: Mutex<Vec<String>>,
    }

    #[async_trait::async_trait]
    impl Webhook for Scripted {
        async fn post(
            &self,
            url: &str,
            _kind: ChannelKind,
            message: &Message,
            _timeout: Duration,
        ) -> Result<(), WebhookError> {
            self.posted
                .lock()
                .unwrap()
                .push(format!("{url} {}", message.text));
            let status = self.answers.lock().unwrap().pop().unwrap_or(200);
            if status == 200 {
                Ok(())
            } else {
                Err(WebhookError::Status { status })
            }
        }
    }

    const CONFIG: &str = r#"
apps:
  web:
    repository: acme/web
    notify:
      - { type: slack, url_from: { ssm_parameter: /hooks/slack }, on: [failed] }
    environments:
      staging: { target: { ssm: { instances: { ids: [i-0123456789abcdef0] }, container: web, ports: ["80:80"] } } }
"#;

    fn failed() -> EventDetail {
        serde_json::from_value(serde_json::json!({
            "app": "web", "environment": "staging",
            "deployment_id": "01JD8Z6V6WQ5N8B9C3H4K2M7PX", "kind": "push",
            "reason": "smoke test failed", "at": "2026-11-20T10:02:00Z"
        }))
        .unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_that_could_not_be_sent_is_sent_by_the_retry_and_only_once() {
        let w = World::new(CONFIG);
        w.secrets.set(
            SecretRef::SsmParameter("/hooks/slack".into()),
            "https://hooks/slack",
        );
        let webhook = Arc::new(Scripted::default());
        *webhook.answers.lock().unwrap() = vec![500, 500, 500];
        let notifier = w.notifier(webhook.clone(), Delivery::default());
        let err = notifier
            .on_event(EventType::VerificationFailed, &failed())
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "{err}");
        let sent = notifier
            .on_event(EventType::VerificationFailed, &failed())
            .await
            .unwrap();
        assert!(matches!(sent[0].outcome, SendOutcome::Sent { attempts: 1 }));
        let again = notifier
            .on_event(EventType::VerificationFailed, &failed())
            .await
            .unwrap();
        assert_eq!(again[0].outcome, SendOutcome::AlreadySent);
        assert_eq!(webhook.posted.lock().unwrap().len(), 4, "3 failed, 1 sent");
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_whose_invocation_stopped_mid_send_is_sent_once_its_claim_lapses() {
        let w = World::new(CONFIG);
        w.secrets.set(
            SecretRef::SsmParameter("/hooks/slack".into()),
            "https://hooks/slack",
        );
        let webhook = Arc::new(Scripted::default());
        let notifier = w.notifier(webhook.clone(), Delivery::default());
        // An invocation claimed the message and stopped before sending it.
        let claim = format!(
            "notify#web#0#{}",
            crate::domain::notice::dedupe_key(Notice::Failed, &failed())
        );
        let now = w.clock.now();
        w.store
            .commit(Commit {
                claim_event: Some(claim),
                claim_lease: Some(ClaimLease {
                    now,
                    until: now + CLAIM_LEASE,
                }),
                ..Commit::default()
            })
            .await
            .unwrap();
        let err = notifier
            .on_event(EventType::VerificationFailed, &failed())
            .await
            .unwrap_err();
        assert!(err.is_retryable(), "held by the other invocation: {err}");
        w.clock.advance(Duration::from_secs(121));
        let sent = notifier
            .on_event(EventType::VerificationFailed, &failed())
            .await
            .unwrap();
        assert!(
            matches!(sent[0].outcome, SendOutcome::Sent { .. }),
            "{sent:?}"
        );
        assert_eq!(webhook.posted.lock().unwrap().len(), 1);
        let again = notifier
            .on_event(EventType::VerificationFailed, &failed())
            .await
            .unwrap();
        assert_eq!(again[0].outcome, SendOutcome::AlreadySent);
    }
}
