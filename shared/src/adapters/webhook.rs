//! Posting notifications over HTTPS. Errors never carry the URL: it is a secret.

use std::time::Duration;

use async_trait::async_trait;
use serde_json::Value;

use crate::ports::{Webhook, WebhookError};

pub struct ReqwestWebhook {
    client: reqwest::Client,
}

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

#[async_trait]
impl Webhook for ReqwestWebhook {
    async fn post(&self, url: &str, body: &Value, timeout: Duration) -> Result<(), WebhookError> {
        let response = self
            .client
            .post(url)
            .timeout(timeout)
            .header("content-type", "application/json")
            .body(body.to_string())
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
