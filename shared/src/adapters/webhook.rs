//! Posting notifications over HTTPS, in the shape each kind of channel takes: Slack's
//! `text`, Discord's `content`, or the whole event for a generic webhook. Errors never
//! carry the URL: it is a secret.

#[cfg(feature = "webhook")]
use std::time::Duration;

#[cfg(feature = "webhook")]
use async_trait::async_trait;
use serde_json::{Value, json};

use crate::domain::config::ChannelKind;
use crate::domain::notice::Message;
#[cfg(feature = "webhook")]
use crate::ports::{Webhook, WebhookError};

/// The request body for a channel.
pub fn body(kind: ChannelKind, message: &Message) -> Value {
    match kind {
        ChannelKind::Slack => json!({ "text": message.text }),
        // Discord refuses content over 2000 characters.
        ChannelKind::Discord => {
            json!({ "content": message.text.chars().take(2000).collect::<String>() })
        }
        ChannelKind::Webhook => json!({
            "notice": message.notice.as_str(),
            "event": message.event.as_str(),
            "text": message.text,
            "detail": message.detail,
        }),
    }
}

#[cfg(feature = "webhook")]
pub struct ReqwestWebhook {
    client: reqwest::Client,
}

#[cfg(feature = "webhook")]
impl ReqwestWebhook {
    pub fn new() -> Result<Self, reqwest::Error> {
        Ok(Self {
            client: reqwest::Client::builder()
                .user_agent(concat!("pushdeploy/", env!("CARGO_PKG_VERSION")))
                .redirect(reqwest::redirect::Policy::none())
                .build()?,
        })
    }
}

#[cfg(feature = "webhook")]
#[async_trait]
impl Webhook for ReqwestWebhook {
    async fn post(
        &self,
        url: &str,
        kind: ChannelKind,
        message: &Message,
        timeout: Duration,
    ) -> Result<(), WebhookError> {
        let response = self
            .client
            .post(url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .body(body(kind, message).to_string())
            .send()
            .await
            .map_err(|e| {
                if e.is_timeout() {
                    WebhookError::Timeout(timeout)
                } else {
                    WebhookError::Unreachable(e.without_url().to_string())
                }
            })?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            Ok(())
        } else {
            Err(WebhookError::Status { status })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::config::Notice;
    use crate::domain::{EventDetail, EventType};

    fn failed() -> EventDetail {
        serde_json::from_value(json!({
            "app": "web", "environment": "staging",
            "deployment_id": "01JD8Z6V6WQ5N8B9C3H4K2M7PX",
            "digest": "sha256:3f2c7b1d9e8a4c6b5d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e",
            "tag": "v1.4.0", "kind": "push", "phase": "Failed",
            "reason": "smoke test failed: http://web/health: status 500 (expected 200)",
            "at": "2026-11-20T10:02:00Z"
        }))
        .unwrap()
    }

    #[test]
    fn messages_say_where_what_and_why_in_each_channels_shape() {
        let message = Message::new(Notice::Failed, EventType::VerificationFailed, &failed());
        let slack = body(ChannelKind::Slack, &message);
        assert_eq!(
            slack,
            json!({ "text": "❌ web/staging: v1.4.0 (3f2c7b1d9e8a) failed: smoke test failed: http://web/health: status 500 (expected 200) — deployment 01JD8Z6V6WQ5N8B9C3H4K2M7PX" })
        );
        let discord = body(ChannelKind::Discord, &message);
        assert_eq!(discord["content"], slack["text"]);
        let hook = body(ChannelKind::Webhook, &message);
        assert_eq!(hook["notice"], "failed");
        assert_eq!(hook["event"], "Verification Failed");
        assert_eq!(
            hook["detail"]["deployment_id"],
            "01JD8Z6V6WQ5N8B9C3H4K2M7PX"
        );
    }
}
