//! The notifier's entrypoint: a lifecycle event with a message for people.

use lambda_runtime::LambdaEvent;
use serde_json::{Value, json};

use super::Function;
use crate::domain::{EventDetail, EventType};
use crate::inbound::{Envelope, is_event};
use crate::lambda::respond;
use crate::services::{InputError, Notifier, ServiceError};

/// What the notifier is asked to announce.
#[derive(Debug, Clone, PartialEq)]
pub struct Input {
    pub kind: EventType,
    pub detail: EventDetail,
}

pub fn parse(payload: Value) -> Result<Input, InputError> {
    if !is_event(&payload) {
        return Err(InputError::Rule(
            "the notifier takes pushdeploy's lifecycle events, not requests by hand".into(),
        ));
    }
    let envelope = Envelope::read(payload)?;
    // Its rule forwards the events with a message (`ROUTES`); any other lifecycle event,
    // delivered by hand, is read and announces nothing.
    if envelope.source != crate::domain::event::SOURCE {
        return Err(InputError::NotHandled {
            function: Function::Notifier.phrase(),
            event_source: envelope.source,
            detail_type: envelope.detail_type,
        });
    }
    let (kind, detail) = envelope.lifecycle()?;
    Ok(Input { kind, detail })
}

pub async fn run(notifier: &Notifier, input: Input) -> Result<Value, ServiceError> {
    let sent = notifier.on_event(input.kind, &input.detail).await?;
    respond(&json!({ "event": input.kind.as_str(), "sent": sent }))
}

/// What Lambda calls.
pub async fn handle(notifier: &Notifier, event: LambdaEvent<Value>) -> Result<Value, ServiceError> {
    run(notifier, parse(event.payload)?).await
}

// These tests post to a real local HTTP server through the webhook adapter.
#[cfg(test)]
#[cfg(feature = "webhook")]
mod tests {
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use crate::adapters::webhook::ReqwestWebhook;
    use crate::domain::config::SecretRef;
    use crate::fakes::{FixedSecrets, MemoryStore};
    use crate::ports::StateStore;
    use crate::services::notify::Delivery;
    use time::macros::datetime;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    const FAILED: &str = include_str!("../../../events/notifier/verification-failed.json");

    /// A local HTTP server: records each request's path and body, and answers with the
    /// status set for it (or not at all, when `hang` is set).
    #[derive(Clone, Default)]
    struct Hook {
        received: Arc<Mutex<Vec<(String, Value)>>>,
        status: Arc<Mutex<u16>>,
        hang: Arc<Mutex<bool>>,
    }

    impl Hook {
        async fn start() -> (Self, String) {
            let hook = Hook::default();
            *hook.status.lock().unwrap() = 200;
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            let h = hook.clone();
            tokio::spawn(async move {
                loop {
                    let (mut socket, _) = listener.accept().await.unwrap();
                    let h = h.clone();
                    tokio::spawn(async move {
                        let mut buf = Vec::new();
                        let mut chunk = [0u8; 4096];
                        // Read headers and a body of content-length bytes.
                        loop {
                            let n = socket.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                return;
                            }
                            buf.extend_from_slice(&chunk[..n]);
                            let text = String::from_utf8_lossy(&buf).to_string();
                            if let Some(end) = text.find("\r\n\r\n") {
                                let length = text[..end]
                                    .lines()
                                    .find_map(|l| {
                                        l.to_ascii_lowercase()
                                            .strip_prefix("content-length:")
                                            .map(|v| v.trim().parse::<usize>().unwrap())
                                    })
                                    .unwrap_or(0);
                                if buf.len() >= end + 4 + length {
                                    let path = text.split_whitespace().nth(1).unwrap().to_owned();
                                    let body: Value =
                                        serde_json::from_slice(&buf[end + 4..end + 4 + length])
                                            .unwrap();
                                    h.received.lock().unwrap().push((path, body));
                                    break;
                                }
                            }
                        }
                        if *h.hang.lock().unwrap() {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            return;
                        }
                        let status = *h.status.lock().unwrap();
                        let reply = format!(
                            "HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        );
                        let _ = socket.write_all(reply.as_bytes()).await;
                    });
                }
            });
            (hook, base)
        }

        fn paths(&self) -> Vec<String> {
            self.received
                .lock()
                .unwrap()
                .iter()
                .map(|(p, _)| p.clone())
                .collect()
        }
    }

    const CONFIG: &str = r#"
apps:
  web:
    repository: acme/web
    notify:
      - type: slack
        url_from: { ssm_parameter: /pushdeploy/notify/slack }
      - type: discord
        url_from: { secret: pushdeploy/notify/discord }
      - type: webhook
        url_from: { ssm_parameter: /pushdeploy/notify/hook }
        on: [failed, rolled_back]
    environments:
      staging:
        target: { ssm: { instances: { tag: { Role: web-staging } }, container: web, ports: ["80:8000"] } }
"#;

    struct World {
        notifier: Notifier,
        store: MemoryStore,
        hook: Hook,
    }

    async fn world() -> World {
        let (hook, base) = Hook::start().await;
        let secrets = FixedSecrets::default();
        secrets.set(
            SecretRef::SsmParameter("/pushdeploy/notify/slack".into()),
            &format!("{base}/slack\n"),
        );
        secrets.set(
            SecretRef::Secret("pushdeploy/notify/discord".into()),
            &format!("{base}/discord"),
        );
        secrets.set(
            SecretRef::SsmParameter("/pushdeploy/notify/hook".into()),
            &format!("{base}/hook"),
        );
        let mut w = crate::fakes::World::new(CONFIG);
        w.secrets = secrets;
        let store = w.store.clone();
        let notifier = w.notifier(
            Arc::new(ReqwestWebhook::new().unwrap()),
            Delivery {
                attempts: 2,
                first_backoff: Duration::from_millis(10),
                timeout: Duration::from_millis(300),
            },
        );
        World {
            notifier,
            store,
            hook,
        }
    }

    fn event(json: &str) -> LambdaEvent<Value> {
        crate::fakes::invocation(json)
    }

    #[tokio::test]
    async fn a_failure_reaches_every_channel_that_wants_it_in_its_own_shape() {
        let w = world().await;
        let out = handle(&w.notifier, event(FAILED)).await.unwrap();
        assert_eq!(out["sent"].as_array().unwrap().len(), 3, "{out}");
        let received = w.hook.received.lock().unwrap().clone();
        let by_path = |p: &str| {
            received
                .iter()
                .find(|(path, _)| path == p)
                .unwrap()
                .1
                .clone()
        };
        let text = by_path("/slack")["text"].as_str().unwrap().to_owned();
        assert!(
            text.starts_with("❌ web/staging: v1.4.0 (3f2c7b1d9e8a) failed: smoke test failed"),
            "{text}"
        );
        assert_eq!(by_path("/discord")["content"], text);
        assert_eq!(by_path("/hook")["notice"], "failed");
        assert_eq!(
            by_path("/hook")["detail"]["deployment_id"],
            "01JD8Z6V6WQ5N8B9C3H4K2M7PX"
        );
    }

    #[tokio::test]
    async fn repeated_events_never_repeat_a_message() {
        let w = world().await;
        handle(&w.notifier, event(FAILED)).await.unwrap();
        let again = handle(&w.notifier, event(FAILED)).await.unwrap();
        assert!(
            again["sent"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["outcome"] == "already_sent"),
            "{again}"
        );
        // The same change published again under another event id is the same change.
        let republished = FAILED.replace("\"id\": \"", "\"id\": \"again-");
        handle(&w.notifier, event(&republished)).await.unwrap();
        assert_eq!(w.hook.paths().len(), 3);
    }

    #[tokio::test]
    async fn only_the_changes_a_channel_asked_for_reach_it_and_others_reach_none() {
        let w = world().await;
        let started = include_str!("../../../events/notifier/rollout-started.json");
        handle(&w.notifier, event(started)).await.unwrap();
        let mut paths = w.hook.paths();
        paths.sort();
        assert_eq!(paths, ["/discord", "/slack"]);
        let quiet = FAILED.replace("Verification Failed", "Verification Started");
        let out = handle(&w.notifier, event(&quiet)).await.unwrap();
        assert_eq!(out["sent"], json!([]));
    }

    /// Seeds a deployment, to show a failing webhook leaves it exactly as it was.
    async fn seeded(w: &World) -> crate::domain::Deployment {
        use crate::domain::{AppName, Deployment, EnvName, Kind, PinnedImage, Request};
        let mut dep = Deployment::new(
            AppName::parse("web").unwrap(),
            EnvName::parse("staging").unwrap(),
            Request {
                image: PinnedImage::parse("localhost:5000/acme/web@sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e").unwrap(),
                tag: None,
                kind: Kind::Push,
                pushed_at: datetime!(2026-11-20 09:58 UTC),
                requested_by: None,
                reason: None,
            },
            datetime!(2026-11-20 09:58 UTC),
        );
        w.store
            .commit(crate::ports::Commit::deployment(&mut dep))
            .await
            .unwrap();
        dep
    }

    #[tokio::test]
    async fn a_webhook_answering_500_fails_the_invocation_for_a_retry_and_touches_no_deployment() {
        let w = world().await;
        let dep = seeded(&w).await;
        *w.hook.status.lock().unwrap() = 500;
        let err = handle(&w.notifier, event(FAILED)).await.unwrap_err();
        assert!(err.is_retryable(), "{err}");
        assert!(
            err.to_string()
                .contains("the webhook answered 500 (attempt 2 of 2)"),
            "{err}"
        );
        assert!(
            !err.to_string().contains("127.0.0.1"),
            "the URL is a secret: {err}"
        );
        assert_eq!(w.hook.paths().len(), 6, "two attempts per channel");
        let after = w
            .store
            .deployment(&dep.app, &dep.environment, &dep.id)
            .await
            .unwrap();
        assert_eq!(after, dep);
        // The endpoint recovers: the retried event sends what was not sent, once.
        *w.hook.status.lock().unwrap() = 200;
        handle(&w.notifier, event(FAILED)).await.unwrap();
        assert_eq!(w.hook.paths().len(), 9);
        handle(&w.notifier, event(FAILED)).await.unwrap();
        assert_eq!(w.hook.paths().len(), 9);
    }

    #[tokio::test]
    async fn a_webhook_that_never_answers_times_out_and_fails_for_a_retry() {
        let w = world().await;
        let dep = seeded(&w).await;
        *w.hook.hang.lock().unwrap() = true;
        let started = std::time::Instant::now();
        let err = handle(&w.notifier, event(FAILED)).await.unwrap_err();
        assert!(
            err.to_string().contains("did not answer within 300ms"),
            "{err}"
        );
        assert!(err.is_retryable());
        assert!(started.elapsed() < Duration::from_secs(10));
        let after = w
            .store
            .deployment(&dep.app, &dep.environment, &dep.id)
            .await
            .unwrap();
        assert_eq!(after, dep);
    }

    #[tokio::test]
    async fn requests_by_hand_and_other_sources_are_refused() {
        let w = world().await;
        let err = handle(&w.notifier, event(r#"{"app": "web"}"#))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("lifecycle events"), "{err}");
        let err = handle(
            &w.notifier,
            event(&FAILED.replace("\"source\": \"pushdeploy\"", "\"source\": \"aws.ecr\"")),
        )
        .await
        .unwrap_err();
        assert!(
            err.to_string()
                .contains("does not handle \"Verification Failed\" events from \"aws.ecr\""),
            "{err}"
        );
        assert!(w.hook.paths().is_empty());
    }
}
