//! Smoke-check requests over HTTP(S).

use std::time::Duration;

use async_trait::async_trait;

use crate::ports::{HttpProbe, ProbeError, ProbeResponse};

/// How much of a response body a check may look into.
const MAX_BODY: usize = 64 * 1024;

pub struct ReqwestProbe {
    client: reqwest::Client,
}

impl ReqwestProbe {
    pub fn new() -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("pushdeploy-smoke/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::limited(5))
            .build()?;
        Ok(Self { client })
    }
}

#[async_trait]
impl HttpProbe for ReqwestProbe {
    async fn get(&self, url: &str, timeout: Duration) -> Result<ProbeResponse, ProbeError> {
        let classify = |e: reqwest::Error| {
            if e.is_timeout() {
                ProbeError::Timeout(timeout)
            } else if e.is_connect() {
                ProbeError::Connect(error_chain(&e))
            } else {
                ProbeError::Other(error_chain(&e))
            }
        };
        let mut response = self
            .client
            .get(url)
            .timeout(timeout)
            .send()
            .await
            .map_err(classify)?;
        let status = response.status().as_u16();
        let mut body = Vec::new();
        while body.len() < MAX_BODY {
            match response.chunk().await.map_err(classify)? {
                Some(chunk) => body.extend_from_slice(&chunk),
                None => break,
            }
        }
        body.truncate(MAX_BODY);
        Ok(ProbeResponse {
            status,
            body: String::from_utf8_lossy(&body).into_owned(),
        })
    }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn serve_once(response: &'static str) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut socket, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 1024];
            let _ = socket.read(&mut buf).await;
            socket.write_all(response.as_bytes()).await.unwrap();
        });
        format!("http://{addr}/health")
    }

    #[tokio::test]
    async fn reads_status_and_body() {
        let url = serve_once("HTTP/1.1 503 Service Unavailable\r\ncontent-length: 4\r\nconnection: close\r\n\r\ndown").await;
        let got = ReqwestProbe::new()
            .unwrap()
            .get(&url, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(
            got,
            ProbeResponse {
                status: 503,
                body: "down".into()
            }
        );
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connection_error() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = ReqwestProbe::new()
            .unwrap()
            .get(&format!("http://{addr}/"), Duration::from_secs(2))
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::Connect(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_silent_server_times_out() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (_socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(10)).await;
        });
        let err = ReqwestProbe::new()
            .unwrap()
            .get(&format!("http://{addr}/"), Duration::from_millis(300))
            .await
            .unwrap_err();
        assert_eq!(err, ProbeError::Timeout(Duration::from_millis(300)));
    }
}
