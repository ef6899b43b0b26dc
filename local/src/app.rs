//! The sample app the demo and the end-to-end tests deploy: `web`, from repository
//! `acme/web`, to environment `staging` on the local host, on a host port of the run's own.
//! Its versions differ in what they serve, so what the host serves shows which one runs.

use crate::images::{APP_PORT, AppVersion};
use crate::moto::free_port;

/// The text the smoke check expects on `/`.
pub const SMOKE_TEXT: &str = "all systems go";

#[derive(Debug, Clone)]
pub struct SampleApp {
    pub app: String,
    pub environment: String,
    pub repository: String,
    pub container: String,
    /// The host port the container is published on (the health probe and smoke check use it).
    pub port: u16,
    /// The instance tag the environment targets.
    pub role: (String, String),
    /// How long the verifier retries the smoke check before failing it.
    pub smoke_within_seconds: u64,
}

/// How a version behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Healthy, and `/` says all is well: passes the host probe and the smoke check.
    Good,
    /// Healthy on `/health`, but `/` reports a broken dependency: the rollout succeeds and
    /// the smoke check fails.
    FailsSmokeTest,
    /// `/health` is missing: the host's probe fails and the old container is restored.
    Unhealthy,
}

impl SampleApp {
    pub fn new() -> anyhow::Result<Self> {
        Ok(Self {
            app: "web".into(),
            environment: "staging".into(),
            repository: "acme/web".into(),
            container: "web".into(),
            port: free_port()?,
            role: ("Role".into(), "web-staging".into()),
            smoke_within_seconds: 8,
        })
    }

    /// The pushdeploy configuration: pushes of `v*` tags deploy to staging, through the
    /// local registry.
    pub fn config(&self, registry_host: &str) -> String {
        format!(
            r#"apps:
  {app}:
    repository: {repository}
    registry: {registry_host}
    environments:
      {env}:
        deploy_on_push: {{ tags: ["v*"] }}
        target:
          ssm:
            instances: {{ tag: {{ {role_key}: {role_value} }} }}
            container: {container}
            ports: ["{port}:{APP_PORT}"]
            health: {{ path: /health, timeout_seconds: 15 }}
            execution_timeout_seconds: 120
        smoke:
          checks:
            - {{ url: "{url}", expect_status: 200, body_contains: "{SMOKE_TEXT}", timeout_seconds: 2 }}
          within_seconds: {within}
        rollout_timeout_seconds: 300
"#,
            app = self.app,
            repository = self.repository,
            env = self.environment,
            role_key = self.role.0,
            role_value = self.role.1,
            container = self.container,
            port = self.port,
            url = self.url("/"),
            within = self.smoke_within_seconds,
        )
    }

    /// A version of the app: `/` names it, `/health` answers unless it is unhealthy.
    pub fn version(&self, label: &str, behaviour: Behaviour) -> AppVersion {
        let index = match behaviour {
            Behaviour::Good | Behaviour::Unhealthy => {
                format!("{} {label}: {SMOKE_TEXT}\n", self.app)
            }
            Behaviour::FailsSmokeTest => {
                format!(
                    "{} {label}: degraded, the payments backend is unreachable\n",
                    self.app
                )
            }
        };
        let mut files = vec![
            ("index.html".to_owned(), index),
            ("version".to_owned(), format!("{label}\n")),
        ];
        if behaviour != Behaviour::Unhealthy {
            files.push(("health".to_owned(), "ok\n".to_owned()));
        }
        AppVersion {
            label: label.to_owned(),
            files,
        }
    }

    /// A URL on the host, as the smoke check and a user reach it.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// What the host serves at `path` now: (status, body), or the connection error.
    pub async fn get(&self, path: &str) -> Result<(u16, String), String> {
        let client = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(3))
            .build()
            .map_err(|e| e.to_string())?;
        let response = client
            .get(self.url(path))
            .send()
            .await
            .map_err(|e| format!("{e}"))?;
        let status = response.status().as_u16();
        Ok((status, response.text().await.map_err(|e| e.to_string())?))
    }

    /// The version label the host serves now (`/version`), if it answers.
    pub async fn serving(&self) -> Option<String> {
        match self.get("/version").await {
            Ok((200, body)) => Some(body.trim().to_owned()),
            _ => None,
        }
    }
}
